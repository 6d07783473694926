"""The normalisation statistics of a folder of images: estimated once from a seeded sample of
its training images, and cached beside the data (``.symtrain-stats.json``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from symtrain.data.files import FileSplit
from symtrain.runs import write_atomically

STATS_FILE = ".symtrain-stats.json"
# Training images read to estimate the normalisation statistics: enough for 3 decimals.
STATS_SAMPLE = 1000


def cached_statistics(
    root: str, train: FileSplit, settings: str, workers: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (over all pixels) of up to
    :data:`STATS_SAMPLE` seeded training images as the model sees them (evaluation view),
    cached beside the data under a key of the settings and the sampled files' names, sizes
    and times (a changed file is a new key).

    Args:
        root: the folder; the cache is its :data:`STATS_FILE`.
        train: the training split's files.
        settings: what decides the evaluation view's pixels, the key's start
            (``ImageFolder._statistics_settings``).
        workers: loader workers that decode the sample when the cache has no entry.
    """
    generator = torch.Generator().manual_seed(0)
    chosen = torch.randperm(len(train), generator=generator)[:STATS_SAMPLE].sort().values
    sample = train.subset(chosen)
    fingerprint = hashlib.sha1(settings.encode())
    for index in range(len(sample)):
        state = os.stat(sample.source(index)[0])
        fingerprint.update(sample.paths[index] + f":{state.st_size}:{state.st_mtime_ns}".encode())
    key = fingerprint.hexdigest()
    cache = Path(root) / STATS_FILE
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), dict):
        return tuple(cached[key]["mean"]), tuple(cached[key]["std"])
    pixels = sample.decode(workers, with_masks=False).images
    values = pixels.transpose(0, 1).flatten(1).double() / 255  # (C, N*S*S)
    mean = tuple(round(v, 4) for v in values.mean(dim=1).tolist())
    std = tuple(round(max(v, 1e-3), 4) for v in values.std(dim=1).tolist())
    entries = cached if isinstance(cached, dict) else {}
    entries[key] = {"mean": list(mean), "std": list(std), "images": len(pixels)}
    try:  # read-only data: estimated again next time (bounded), nothing else changes
        write_atomically(cache, json.dumps(entries, indent=1))
    except OSError:
        pass
    return mean, std
