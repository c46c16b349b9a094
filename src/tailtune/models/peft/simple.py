"""Methods that only choose which existing backbone parameters train."""

from __future__ import annotations

from torch import nn

from tailtune.errors import ConfigError
from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, select_blocks, unfreeze

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _scope(backbone, cfg) -> list[nn.Module]:
    """The tuned part: the selected transformer blocks of a ViT, the whole encoder of a CNN."""
    blocks = [b for _, b in select_blocks(backbone, cfg)] if backbone.kind == "vit" and backbone.blocks() else []
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
        for m in _scope(backbone, cfg):
            unfreeze(m.parameters())


@PEFT_METHODS.register("bitfit")
class BitFit(PeftMethod):
    """Bias terms only (on EfficientNet these are BatchNorm biases: its convolutions have none)."""

    def apply(self, backbone, cfg, num_classes):
        for m in _scope(backbone, cfg):
            unfreeze(p for n, p in m.named_parameters() if n.endswith("bias"))


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
    return [m for scope in _scope(backbone, cfg) for m in scope.modules()
            if isinstance(m, nn.LayerNorm) and m.elementwise_affine]


@PEFT_METHODS.register("bn_tuning")
class BNTuning(PeftMethod):
    """BatchNorm affine parameters (CNN backbones); running statistics stay frozen."""

    kinds = ("cnn",)

    def apply(self, backbone, cfg, num_classes):
        for m in backbone.encoder.modules():
            if isinstance(m, _BN):
                unfreeze(m.parameters())
