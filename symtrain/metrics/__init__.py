"""Invariance and equivariance measurements: pure-torch functions and the callback that logs them."""

from symtrain.metrics.callback import EquivarianceMetrics
from symtrain.metrics.functional import agreement, disk_mask, radial_profile, relative_error

__all__ = ["EquivarianceMetrics", "agreement", "disk_mask", "radial_profile", "relative_error"]
