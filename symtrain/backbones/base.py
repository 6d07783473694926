"""The backbone contract every feature extractor honours.

A backbone maps a normalised image batch (B, C_in, H, W) to a feature map
(B, out_channels, h, w). The task head pools or upsamples it. Each backbone declares which
transformation families (by :attr:`symtrain.transforms.TransformFamily.name`) its *pooled*
features are invariant to, exactly (by construction) or approximately, so strategies and
metrics can check claims against measurements.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from symtrain.transforms import Exactness, TransformFamily


class Backbone(nn.Module):
    """Base class of feature extractors.

    Subclasses take ``in_channels`` as their first constructor argument (the CLI links it
    from the data), set :attr:`out_channels`, implement :meth:`forward` and override
    :meth:`declared_symmetries`.

    Attributes:
        out_channels: channels of the feature map returned by :meth:`forward`.
    """

    out_channels: int

    def forward(self, images: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, out_channels, h, w)
        raise NotImplementedError

    @property
    def name(self) -> str:
        """Short name of this configuration, e.g. ``EquivariantCNN-D4``: what dashboards group by."""
        return type(self).__name__

    def declared_symmetries(self) -> dict[str, Exactness]:
        """Families the globally pooled features are invariant to, and how exactly."""
        return {}

    def input_size_problem(self, image_size: int) -> str | None:
        """Why images of side ``image_size`` break an exact symmetry this backbone declares (a
        one-line message naming the fix), or None when they do not."""
        return None

    def layer_strides(self) -> dict[str, int]:
        """Named intermediate feature maps and their cumulative strides, for layer-wise
        equivariance measurements (none by default)."""
        return {}

    def layer_outputs(self, images: Tensor) -> dict[str, Tensor]:
        """The feature maps named by :meth:`layer_strides` for normalised ``images``."""
        return {}

    def act_on_layer(
        self, name: str, family: TransformFamily, element: Tensor, features: Tensor
    ) -> Tensor | None:
        """How ``element`` of ``family`` acts on layer ``name``'s features, or None if it cannot
        act exactly. By default only spatially: plain channels carry no group action."""
        return family.act_on_features(features, element, self.layer_strides()[name])


BackboneFactory = Callable[[int], Backbone]
"""A backbone class with its settings, still waiting for ``in_channels`` from the data."""
