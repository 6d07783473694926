"""Symmetry strategies; importing this package makes their short class names usable in configs."""

from symtrain._lazy import import_submodules
from symtrain.symmetry.architectural import Architectural
from symtrain.symmetry.augmentation import Augmentation
from symtrain.symmetry.averaging import GroupAveraging
from symtrain.symmetry.base import NoSymmetry, StrategyNet, SymmetryStrategy
from symtrain.symmetry.canonicalization import Canonicalization

__all__ = [
    "Architectural",
    "Augmentation",
    "Canonicalization",
    "GroupAveraging",
    "NoSymmetry",
    "StrategyNet",
    "SymmetryStrategy",
]

# A plugin in a new module of this package needs no import line here to be found by its name.
import_submodules(__name__)
