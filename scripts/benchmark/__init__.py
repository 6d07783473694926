"""What symtrain costs, measured against the limits, side by side in one process.

    python -m scripts.benchmark --quick                # small sizes, under two minutes on a CPU
    python -m scripts.benchmark --json bench.json      # full sizes (meant for a GPU)
    python -m scripts.benchmark --sections escnn cost  # some sections only
    make bench                                         # the quick version

Run from the repository root. Each section reports ratios of things measured in the same run,
interleaved over rounds, median of the rounds, because a shared machine's absolute speed
wanders. A section is one module of ``scripts/benchmark/sections/`` (its docstring says what it
measures and against which target), found by being there:

- ``overhead``: symtrain's fit over a hand-written loop, and the equivariance metrics' cost;
- ``augmentation``: each family's on-device augmentation as a share of a training step;
- ``strategies``: the symmetry strategies that wrap the network, over the plain network;
- ``escnn``: escnn models against plain CNNs with the same expanded convolutions;
- ``startup``: the command line's start-up and a one-step fit;
- ``scaling``: an epoch's time against dataset size and image size, and peak memory;
- ``cost``: a default fit on real digits split into its parts, and ``compare``'s start-up per cell;
- ``backbones``: the literature's ResNet-18 and the escnn Wide ResNet;
- ``data``: data on disk and in memory: streaming memory, loader throughput, the base pipeline.

The shared parts: ``sizes`` (how much work ``--quick`` and ``--tiny`` do), ``timing``
(synchronised timers), ``memory`` (peak memory), ``fits`` (symtrain's fit and the hand-written
loop, in interleaved rounds), ``section`` (what a section declares), ``table`` and ``report``
(the printed report and the JSON file), ``cli`` (the options).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: configs/, data/, the symtrain command
