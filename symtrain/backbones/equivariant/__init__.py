"""Group-equivariant CNNs built with escnn: symmetry by construction.

Every layer commutes with the action of a group G of rotations (and reflections) of the plane:
C_N and D_N act on regular fields with pointwise ReLUs; SO(2) and O(2) act on band-limited
Fourier fields with Fourier-sampled ReLUs. An invariant map (group pooling or norm pooling)
at the end hands the head features that do not change under G.

On a pixel grid only rot90 and flips are exact, and only if every subsampling step keeps the
sampling grid symmetric under them. :func:`symmetric_blur_pool` subsamples with a grid that is
symmetric for *every* square size (odd sizes keep pixels 0, 2, ..., S-1; even sizes average
2x2 blocks), so C4/D4 models are exactly invariant at 28, 29, 32, 33 or any other size.
"""

from symtrain.backbones.equivariant.decoder import EquivariantDecoder, ExportedDecoder, ExportedEncoder
from symtrain.backbones.equivariant.filters import use_exact_svd_in_escnn
from symtrain.backbones.equivariant.network import EquivariantCNN, Group
from symtrain.backbones.equivariant.ops import (
    BlurPool,
    DiskMask,
    FourierActivation,
    GroupMaxPool,
    NormPool,
    symmetric_blur_pool,
    symmetric_upsample,
)
from symtrain.backbones.equivariant.wide_resnet import EquivariantWideResNet

__all__ = [
    "BlurPool",
    "DiskMask",
    "EquivariantCNN",
    "EquivariantDecoder",
    "EquivariantWideResNet",
    "ExportedDecoder",
    "ExportedEncoder",
    "FourierActivation",
    "Group",
    "GroupMaxPool",
    "NormPool",
    "symmetric_blur_pool",
    "symmetric_upsample",
    "use_exact_svd_in_escnn",
]
