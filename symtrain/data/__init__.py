"""Datasets as in-memory data modules; importing this package makes their short class names
usable in configs (``--data SyntheticShapes``).

torchvision is imported eagerly: Lightning already imports it, so deferring it saves nothing.
"""

from symtrain._lazy import import_submodules
from symtrain.data.base import ImageDataModule, Split
from symtrain.data.digits import MNIST5k
from symtrain.data.folder import ImageFolder
from symtrain.data.mnist_rot import MNISTRot
from symtrain.data.synthetic import SyntheticShapes
from symtrain.data.torchvision_sets import CIFAR10, MNIST, RotatedMNIST

__all__ = [
    "CIFAR10",
    "MNIST",
    "MNIST5k",
    "MNISTRot",
    "ImageDataModule",
    "ImageFolder",
    "RotatedMNIST",
    "Split",
    "SyntheticShapes",
]

# A plugin in a new module of this package needs no import line here to be found by its name.
import_submodules(__name__)
