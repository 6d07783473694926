"""Feature extractors; importing this package makes their short class names usable in configs."""

from symtrain.backbones.base import Backbone, BackboneFactory
from symtrain.backbones.cnn import StandardCNN

__all__ = ["Backbone", "BackboneFactory", "StandardCNN"]
