"""Symmetry strategies; importing this package makes their short class names usable in configs."""

from symtrain.symmetry.architectural import Architectural
from symtrain.symmetry.augmentation import Augmentation
from symtrain.symmetry.base import NoSymmetry, SymmetryStrategy

__all__ = ["Architectural", "Augmentation", "NoSymmetry", "SymmetryStrategy"]
