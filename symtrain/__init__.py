"""symtrain: train and compare how neural networks get their symmetry.

Compose a model from a backbone (plain, anti-aliased, group-equivariant) and a symmetry
strategy (architectural, augmentation), train it with ``python -m symtrain fit``, and read its
invariance and accuracy side by side with other approaches.
"""

from symtrain.errors import SymtrainError
from symtrain.runs import load_model

__version__ = "0.1.0"
__all__ = ["SymtrainError", "load_model", "__version__"]
