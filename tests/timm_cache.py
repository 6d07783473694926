"""A Hugging Face cache holding timm weights, laid out as timm's download leaves it, for the tests
of loading pretrained weights offline."""

from __future__ import annotations

from pathlib import Path

import timm
from safetensors.torch import save_file
from torch import nn


def cache_timm_weights(cache: Path, name: str, model: nn.Module) -> Path:
    """Write ``model``'s weights as timm model ``name``'s in the cache ``cache`` (what
    ``HF_HUB_CACHE`` names): ``refs/main`` names the snapshot holding ``model.safetensors``."""
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    cached = cache / f"models--{repo.replace('/', '--')}"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text("abc")
    (cached / "snapshots" / "abc").mkdir(parents=True)
    path = cached / "snapshots" / "abc" / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path
