"""LN tuning: only the LayerNorm affine parameters inside the tuned blocks train."""

from __future__ import annotations

from torch import nn

from tailtune.errors import ConfigError
from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, tuned_scope, unfreeze


@PEFT_METHODS.register("ln_tuning")
class LNTuning(PeftMethod):
    """LayerNorm affine parameters (weight and bias) inside the transformer blocks."""

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        if not _layer_norms(backbone, cfg):
            raise ConfigError(f"peft.method={name!r}: {backbone.info['name']!r} has no LayerNorm with affine "
                              "parameters; for a BatchNorm CNN use bn_tuning.")

    def apply(self, backbone, cfg, num_classes):
        for m in _layer_norms(backbone, cfg):
            unfreeze(m.parameters())


def _layer_norms(backbone, cfg) -> list[nn.Module]:
    return [m for scope in tuned_scope(backbone, cfg) for m in scope.modules()
            if isinstance(m, nn.LayerNorm) and m.elementwise_affine]
