"""The PEFT registry and what every method shares: target lookup and the bottleneck rule."""

from __future__ import annotations

import math

from torch import nn

from ...config import PeftConfig
from ...errors import ConfigError
from ...registry import Registry

PEFT_METHODS: Registry = Registry("PEFT method")


class PeftMethod:
    """One way of making a frozen backbone trainable.

    ``apply`` injects modules and/or sets ``requires_grad`` on existing parameters; it
    never unfreezes anything else. ``kinds`` says which backbones it makes sense on.
    """

    kinds: tuple[str, ...] = ("vit", "cnn")
    identity_at_init = True  # a fresh model gives the classifier-only model's logits
    trains_bn_stats = False  # under peft.bn_mode=auto, BatchNorm statistics update only if True

    def check(self, backbone, name: str) -> None:
        if backbone.kind not in self.kinds:
            raise ConfigError(f"peft.method={name!r} applies to {' / '.join(self.kinds)} backbones, but "
                              f"{backbone.info['name']!r} is a {backbone.kind}. "
                              f"Methods for a {backbone.kind}: {', '.join(methods_for(backbone.kind))}.")

    def apply(self, backbone, cfg: PeftConfig, num_classes: int) -> None:
        raise NotImplementedError


def get_method(name: str) -> PeftMethod:
    return PEFT_METHODS.get(name)()


def methods_for(kind: str) -> list[str]:
    return [n for n in PEFT_METHODS.names() if kind in PEFT_METHODS.get(n).kinds]


def method_names(cfg: PeftConfig) -> list[str]:
    """The methods of ``peft.method``; several compose with '+', e.g. 'adaptformer+ssf'."""
    return [m.strip() for m in cfg.method.split("+") if m.strip()] or ["none"]


def check_peft(backbone, cfg: PeftConfig) -> None:
    """Start-up check: every named method exists and fits the backbone."""
    for name in method_names(cfg):
        get_method(name).check(backbone, name)


def apply_peft(backbone, cfg: PeftConfig, num_classes: int) -> None:
    """Make the backbone trainable as ``cfg`` says (everything else stays frozen)."""
    check_peft(backbone, cfg)
    for name in method_names(cfg):
        get_method(name).apply(backbone, cfg, num_classes)


def trains_bn_stats(cfg: PeftConfig) -> bool:
    if cfg.bn_mode != "auto":
        return cfg.bn_mode == "train"
    return any(PEFT_METHODS.get(n).trains_bn_stats for n in method_names(cfg))


def bottleneck(num_classes: int, num_blocks: int) -> int:
    """r = 2^max(0, floor(log2(C / 2L))): 4 for CIFAR-100 on ViT-B/16, 32 for ImageNet-LT."""
    return 2 ** max(0, math.floor(math.log2(num_classes / (2 * num_blocks))))


def resolve_r(backbone, cfg: PeftConfig, num_classes: int) -> int:
    return cfg.r or bottleneck(num_classes, len(backbone.blocks()))


NORM_NAMES = ("ln_2", "norm2")  # open_clip, timm: the LayerNorm before the MLP


def mlp_parts(block: nn.Module) -> tuple[str, nn.Module, nn.Module]:
    """(norm attribute name, norm, mlp) of a pre-norm transformer block."""
    for norm_name in NORM_NAMES:
        if hasattr(block, norm_name) and hasattr(block, "mlp"):
            return norm_name, getattr(block, norm_name), block.mlp
    raise ConfigError(f"block {type(block).__name__} has no ({'|'.join(NORM_NAMES)}, mlp) pair; "
                      "this PEFT method supports open_clip and timm pre-norm ViT blocks.")


def feature_width(block: nn.Module) -> int:
    _, norm, _ = mlp_parts(block)
    return norm.normalized_shape[0]


def unfreeze(params) -> None:
    for p in params:
        p.requires_grad_(True)
