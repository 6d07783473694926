"""Feature extractors; importing this package makes their short class names usable in configs."""

from symtrain._lazy import import_submodules
from symtrain.backbones.antialiased import AntialiasedCNN
from symtrain.backbones.base import Backbone, BackboneFactory
from symtrain.backbones.cnn import StandardCNN
from symtrain.backbones.equivariant import EquivariantCNN, EquivariantWideResNet
from symtrain.backbones.resnet import ResNet
from symtrain.backbones.timm_models import TimmBackbone

__all__ = [
    "AntialiasedCNN",
    "Backbone",
    "BackboneFactory",
    "EquivariantCNN",
    "EquivariantWideResNet",
    "ResNet",
    "StandardCNN",
    "TimmBackbone",
]

# A plugin in a new module of this package needs no import line here to be found by its name.
import_submodules(__name__)
