"""How much work each section does: the full sizes (meant for a GPU), ``--quick`` and ``--tiny``."""

from __future__ import annotations

from dataclasses import dataclass

ESCNN_CONFIGS = ("escnn_c4", "escnn_c8", "escnn_d4", "escnn_so2")


@dataclass
class Sizes:
    """How much work each section does; ``--quick`` and ``--tiny`` shrink it."""

    num_train: int  # training images of the overhead and metrics runs (6000: the quickstart)
    rounds: int  # interleaved repetitions; the median is reported
    steps: int  # timed steps of the step-level measurements
    warmup: int  # untimed steps first (cuDNN autotuning, escnn filter bases, allocator)
    scaling_train: tuple[int, ...]  # dataset sizes of the scaling section
    scaling_image: tuple[int, ...]  # image sizes of the scaling section
    escnn_configs: tuple[str, ...]
    startup_rounds: int
    metrics_samples: int | None  # the metrics' num_samples (None: the default)
    cost_flags: tuple[str, ...]  # the real-digit fit of the cost section, on top of the defaults
    resnet_train: int  # training images of the ResNet-18 fits (a CPU trains about 30 img/s)
    resnet_batch: int  # their batch size (the quickstart's 128 at full size)
    wrn: tuple[int, int, int]  # depth, widen factor and batch size of the WRN rows
    stream_train: tuple[int, int]  # training files of the streaming-memory fits: small, large
    photo_train: int  # photo-sized files of the loader-throughput rows


_DIGITS_FIT = ("--trainer.max_epochs", "8")  # the real-digit study's schedule
_TINY_FIT = (
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1", "--metrics.test_num_samples", "16",
)  # fmt: skip
FULL = Sizes(
    6000, 5, 30, 5, (10000, 20000, 40000), (32, 64, 128), ESCNN_CONFIGS, 3, None, _DIGITS_FIT,
    6000, 128, (16, 8, 128), (2000, 20000), 2000,
)  # fmt: skip
QUICK = Sizes(
    6000, 3, 8, 2, (1000, 2000), (32, 64), ("escnn_c4",), 1, None, _DIGITS_FIT,
    640, 64, (10, 2, 32), (2000, 20000), 600,
)  # fmt: skip
TINY = Sizes(
    300, 1, 2, 1, (150, 300), (16, 32), ("escnn_c4", "escnn_so2"), 1, 16, _TINY_FIT,
    48, 16, (10, 1, 8), (100, 400), 64,
)  # fmt: skip
