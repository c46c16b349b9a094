"""Classifiers and their initialisers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HeadConfig
from ..errors import ConfigError
from ..registry import Registry
from .prompts import make_prompts

HEADS: Registry = Registry("classifier")
HEAD_INITS: Registry = Registry("head initialisation")


class CosineClassifier(nn.Module):
    """scale * cos(feature, class weight)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 25.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim).normal_(0, 0.02))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


class LinearClassifier(nn.Module):
    """A plain linear layer with bias."""

    def __init__(self, dim: int, num_classes: int, scale: float = 25.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim).normal_(0, 0.02))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


HEADS.register("cosine", help="cosine classifier, logits = scale * cos (default, scale 25)")(CosineClassifier)
HEADS.register("linear", help="linear classifier with bias")(LinearClassifier)


def build_head(cfg: HeadConfig, dim: int, num_classes: int) -> nn.Module:
    return HEADS.get(cfg.type)(dim, num_classes, scale=cfg.scale)


@dataclass
class InitContext:
    """What an initialiser may use; features are computed lazily (only if asked for)."""

    backbone: object
    classnames: list[str]
    cfg: HeadConfig
    train_features: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # (features, labels)


@HEAD_INITS.register("text")
def text_init(ctx: InitContext) -> torch.Tensor:
    """Text features of the prompt for each class name, in the image feature space."""
    if not getattr(ctx.backbone, "has_text", False):
        raise ConfigError(f"head.init=text needs a backbone with a text tower; {ctx.backbone.info['name']!r} "
                          "has none. Use head.init=class_mean.")
    return ctx.backbone.text_features(make_prompts(ctx.classnames, ctx.cfg.prompt))


@HEAD_INITS.register("class_mean")
def class_mean_init(ctx: InitContext) -> torch.Tensor:
    """Mean of L2-normalised frozen features of each class over the training set."""
    feats, labels = ctx.train_features()
    feats = F.normalize(feats.float(), dim=-1)
    num_classes = len(ctx.classnames)
    sums = torch.zeros(num_classes, feats.shape[1]).index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    return F.normalize(sums / counts, dim=-1)


@HEAD_INITS.register("random")
def random_init(ctx: InitContext) -> None:
    """Keep the classifier's random initialisation."""
    return None


def resolve_init(cfg: HeadConfig, backbone) -> str:
    if cfg.init != "auto":
        HEAD_INITS.get(cfg.init)
        return cfg.init
    return "text" if getattr(backbone, "has_text", False) else "class_mean"


def check_head(cfg: HeadConfig, backbone) -> None:
    """Start-up check of head type and initialiser against the backbone."""
    HEADS.get(cfg.type)
    if resolve_init(cfg, backbone) == "text" and not getattr(backbone, "has_text", False):
        raise ConfigError(f"head.init=text needs a backbone with a text tower; {backbone.info['name']!r} has "
                          "none. Use head.init=class_mean (or auto).")


@torch.no_grad()
def initialise_head(head: nn.Module, ctx: InitContext) -> str:
    """Set the head's weights with the configured initialiser; returns its name."""
    name = resolve_init(ctx.cfg, ctx.backbone)
    weight = HEAD_INITS.get(name)(ctx)
    if weight is not None:
        if weight.shape != head.weight.shape:
            raise ConfigError(f"head.init={name} gave weights {tuple(weight.shape)}, "
                              f"the head needs {tuple(head.weight.shape)}.")
        head.weight.copy_(weight.to(head.weight))
    return name
