"""Transformation families: the one place that says what "a symmetry" is.

A family (rot90, flip, circular shift, shift with zero fill, continuous rotation, affine,
elastic, smooth diffeomorphisms) knows how to

* act on an image batch with given per-sample elements (:meth:`TransformFamily.apply`),
  used by measurements that must be reproducible;
* sample random elements (:meth:`TransformFamily.sample`);
* augment training batches with random elements (:meth:`TransformFamily.augmentation`, a
  :class:`FamilyAugmentation`: ``sample`` and ``apply`` in kornia's augmentation machinery,
  so the augmentation is the measured action by construction), on the batch's device;
* say whether its action on the pixel grid is exact (a permutation of pixels: rot90, flips,
  integer rolls) or interpolated/lossy (everything else);
* say how a measurement sees it (:meth:`TransformFamily.measured`, on the frame of
  :attr:`TransformFamily.frame`) and which fixed elements it measures
  (:meth:`TransformFamily.test_elements`).

Backbones declare their symmetries by family ``name``; strategies and metrics take family
objects. So augmentation, architecture and measurement cannot disagree about a symmetry.

One family per module (:mod:`symtrain.transforms.rot90`, ``flip``, ``circular_shift``, ``shift``,
``rotation``, ``affine``, ``elastic``, ``diffeo``), on the base in :mod:`symtrain.transforms.base`,
with the tensor operations they share in :mod:`symtrain.transforms.functional` and the kornia
augmentation in :mod:`symtrain.transforms.augmentation`. Every name is importable from
``symtrain.transforms`` itself, the class paths that configs and saved runs use
(``symtrain.transforms.Rotation``).
"""

from symtrain.transforms.augmentation import FamilyAugmentation
from symtrain.transforms.base import (
    Device,
    Exactness,
    Frame,
    Symmetries,
    TransformFamily,
    declared_exactness,
    families_by_name,
)
from symtrain.transforms.functional import disk_mask, fourier_shift

# isort: off
# In this order: the order in which families are defined is the order families_by_name lists
# them (exact families first, as they always were).
from symtrain.transforms.rot90 import Rot90
from symtrain.transforms.flip import Flip
from symtrain.transforms.circular_shift import CircularShift
from symtrain.transforms.shift import Shift
from symtrain.transforms.rotation import Rotation
from symtrain.transforms.affine import Affine
from symtrain.transforms.elastic import Elastic
from symtrain.transforms.diffeo import Diffeo, sine_modes

# isort: on

__all__ = [
    "Affine",
    "CircularShift",
    "Device",
    "Diffeo",
    "Elastic",
    "Exactness",
    "FamilyAugmentation",
    "Flip",
    "Frame",
    "Rot90",
    "Rotation",
    "Shift",
    "Symmetries",
    "TransformFamily",
    "declared_exactness",
    "disk_mask",
    "families_by_name",
    "fourier_shift",
    "sine_modes",
]
