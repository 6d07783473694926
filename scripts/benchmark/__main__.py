"""``python -m scripts.benchmark``: the benchmark's command line (:mod:`scripts.benchmark.cli`)."""

from scripts.benchmark.cli import main

main()
