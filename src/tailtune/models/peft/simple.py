"""Methods that only choose which existing backbone parameters train."""

from __future__ import annotations

from torch import nn

from .base import PEFT_METHODS, PeftMethod, unfreeze

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _scope(backbone) -> list[nn.Module]:
    """The tuned part: transformer blocks of a ViT, the whole encoder of a CNN."""
    blocks = [b for _, b in backbone.blocks()] if backbone.kind == "vit" else []
    return blocks or [backbone.encoder]


@PEFT_METHODS.register("none")
class ClassifierOnly(PeftMethod):
    """Classifier only: the backbone stays frozen."""

    def apply(self, backbone, cfg, num_classes):
        pass


@PEFT_METHODS.register("full")
class Full(PeftMethod):
    """Full fine-tuning: every transformer block (ViT) or every encoder parameter (CNN)."""

    trains_bn_stats = True

    def apply(self, backbone, cfg, num_classes):
        for m in _scope(backbone):
            unfreeze(m.parameters())


@PEFT_METHODS.register("bitfit")
class BitFit(PeftMethod):
    """Bias terms only (on EfficientNet these are BatchNorm biases: its convolutions have none)."""

    def apply(self, backbone, cfg, num_classes):
        for m in _scope(backbone):
            unfreeze(p for n, p in m.named_parameters() if n.endswith("bias"))


@PEFT_METHODS.register("bn_tuning")
class BNTuning(PeftMethod):
    """BatchNorm affine parameters (CNN backbones); running statistics stay frozen."""

    kinds = ("cnn",)

    def apply(self, backbone, cfg, num_classes):
        for m in backbone.encoder.modules():
            if isinstance(m, _BN):
                unfreeze(m.parameters())
