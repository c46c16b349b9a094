"""BN tuning: only the BatchNorm affine parameters of a CNN train (running statistics stay frozen)."""

from __future__ import annotations

from torch import nn

from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, unfreeze

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@PEFT_METHODS.register("bn_tuning")
class BNTuning(PeftMethod):
    """BatchNorm affine parameters (CNN backbones); running statistics stay frozen."""

    kinds = ("cnn",)

    def apply(self, backbone, cfg, num_classes):
        for m in backbone.encoder.modules():
            if isinstance(m, _BN):
                unfreeze(m.parameters())
