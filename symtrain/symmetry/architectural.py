"""Symmetry built into the architecture: no augmentation, and a check that it is really there."""

from __future__ import annotations

from symtrain.backbones.base import Backbone
from symtrain.errors import SymtrainError
from symtrain.symmetry.base import SymmetryStrategy
from symtrain.transforms import Flip, Rot90, TransformFamily, declared_exactness


class Architectural(SymmetryStrategy):
    """Rely on the backbone's built-in invariance to ``families``; never augment.

    Fails when the model is built if the backbone does not declare every requested family,
    exactly (default) or at least approximately (``require_exact=False``).

    Args:
        families: the transformation families the backbone must be invariant to.
        require_exact: accept only invariance that holds by construction.

    Examples:
        >>> from symtrain.backbones import StandardCNN
        >>> from symtrain.transforms import Rot90
        >>> Architectural([Rot90()]).check(StandardCNN(in_channels=1))
        Traceback (most recent call last):
        ...
        symtrain.errors.SymtrainError: StandardCNN does not declare exact rot90 invariance ...
    """

    examples = ({"families": [Rot90()]}, {"families": [Flip()], "require_exact": False})

    def __init__(self, families: list[TransformFamily], require_exact: bool = True) -> None:
        super().__init__(families)
        if not self.families:
            raise SymtrainError(
                "Architectural needs at least one family: set model.symmetry.families, e.g. [Rot90]"
            )
        self.require_exact = require_exact

    def check(self, backbone: Backbone, image_size: int | None = None, dense: bool = False) -> None:
        declared = backbone.dense_symmetries() if dense else backbone.declared_symmetries()
        accepted = {"exact"} if self.require_exact else {"exact", "approximate"}
        for family in self.families:
            if declared_exactness(declared, family) not in accepted:
                claims = sorted(f"{claim.label} ({how})" for claim, how in declared.items())
                kind = "exact" if self.require_exact else "any"
                what = "equivariance of its dense form" if dense else "invariance"
                raise SymtrainError(
                    f"{type(backbone).__name__} does not declare {kind} {family.label} {what} "
                    f"(it declares: {', '.join(claims) or 'nothing'}): choose a backbone built for "
                    f"{family.label} or use the Augmentation strategy (configs/symmetry/augment_*.yaml)"
                )
        if image_size is not None and (problem := backbone.input_size_problem(image_size)):
            raise SymtrainError(problem)
