"""symtrain: train and compare how neural networks get their symmetry.

Compose a model from a backbone (plain, anti-aliased, group-equivariant) and a symmetry
strategy (no symmetry, architectural, augmentation, group averaging or canonicalization), train
it with ``python -m symtrain fit``, and read its invariance and accuracy side by side with other
approaches.
"""

from typing import Any

from symtrain.errors import SymtrainError

__version__ = "0.1.0"
__all__ = ["SymtrainError", "load_model", "measure", "__version__"]


def __getattr__(name: str) -> Any:
    # ``load_model`` and ``measure`` need torch: imported on first use, so that ``python -m
    # symtrain --help`` and ``report`` start without it (PEP 562).
    if name == "load_model":
        from symtrain.runs import load_model

        return load_model
    if name == "measure":
        from symtrain.metrics.measuring import measure

        return measure
    raise AttributeError(f"module 'symtrain' has no attribute {name!r}")
