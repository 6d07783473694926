"""Invariance and equivariance measurements: pure-torch functions and the callback that logs them."""

from symtrain.metrics.callback import EquivarianceMetrics
from symtrain.metrics.functional import agreement, disk_mask, radial_profile, relative_error
from symtrain.metrics.iou import JaccardIndex

__all__ = [
    "EquivarianceMetrics",
    "JaccardIndex",
    "agreement",
    "disk_mask",
    "radial_profile",
    "relative_error",
]
