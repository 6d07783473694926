"""Invariance and equivariance measurements: one measure per module, and the callback that
schedules them and logs their values."""

from symtrain.metrics.base import Measure, measures_for
from symtrain.metrics.callback import EquivarianceMetrics
from symtrain.metrics.functional import SpreadRelativeError, agreement, centred, disk_mask
from symtrain.metrics.iou import JaccardIndex

__all__ = [
    "EquivarianceMetrics",
    "JaccardIndex",
    "Measure",
    "SpreadRelativeError",
    "agreement",
    "centred",
    "disk_mask",
    "measures_for",
]
