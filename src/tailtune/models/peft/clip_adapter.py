"""CLIP-Adapter: a residual bottleneck MLP on the backbone's output features.

The form is the CLIP-Adapter paper's (Gao et al. 2021, arXiv 2110.04544; its code,
gaopengcuhk/CLIP-Adapter clip_adapter.py): ``A = ReLU(W2 ReLU(W1 x))`` with
``W1: d -> d / reduction`` and ``W2: d / reduction -> d``, both without bias and in
``nn.Linear``'s default initialisation, mixed with the features as
``ratio * A(x) + (1 - ratio) * x`` (reduction 4 and ratio 0.2, the paper's ImageNet setting,
are the defaults). A fresh model is therefore not the frozen one (``identity_at_init`` False).

It acts on the features the classifier reads (models/peft/base.py:add_feature_module): on an
open_clip model those are taken before the image projection (width 768 on ViT-B/16); combined
with ``proj_tuning`` they are CLIP's joint-space embeddings (width 512), where the paper puts it.

LIFT+ has a method of this name in another form (LIFT-plus models/models.py:add_clip_adapter and
models/modules.py:Adapter, utils/config.py ``clip_adapter_dim = 4``): a LayerNorm -> Linear(d, 4)
-> ReLU -> Linear(4, d) bottleneck with biases and a zero up-projection, added as ``x + A(x)``
to the projected image *and* text features, and only where the text encoder is the classifier
(with a learned classifier LIFT+ never calls it). tailtune follows the paper here, so counts differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tailtune.config import _check_positive, options_of, setting
from tailtune.errors import ConfigError
from tailtune.models.peft.base import (
    PEFT_METHODS,
    PeftMethod,
    PeftModule,
    add_feature_module,
    device_of,
)

MODULE_NAME = "clip_adapter"  # encoder.clip_adapter


@dataclass
class ClipAdapterOptions:
    """clip_adapter: the bottleneck's width and its share of the features."""

    reduction: int = setting(4, "clip_adapter: hidden width = feature width // reduction (the paper's 4)")
    ratio: float = setting(0.2, "clip_adapter: residual ratio alpha in alpha * adapter(x) + (1 - alpha) * x "
                                "(the paper's 0.2 for ImageNet)")

    def __post_init__(self) -> None:
        _check_positive("peft.clip_adapter", "reduction", self.reduction)
        if not 0 < self.ratio <= 1:
            raise ConfigError(f"peft.clip_adapter.ratio={self.ratio!r} must be in (0, 1] (the adapter's share "
                              "of the features; the paper uses 0.2).")


class ClipAdapterModule(PeftModule):
    """``ratio * fc(x) + (1 - ratio) * x`` with ``fc`` = Linear -> ReLU -> Linear -> ReLU (no biases)."""

    def __init__(self, dim: int, hidden: int, ratio: float):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, dim, bias=False), nn.ReLU())
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return self.ratio * self.fc(x) + (1 - self.ratio) * x


@PEFT_METHODS.register("clip_adapter", options=ClipAdapterOptions)
class ClipAdapter(PeftMethod):
    """CLIP-Adapter: a residual bottleneck MLP (peft.clip_adapter.reduction, .ratio) on the output features."""

    kinds = ("vit", "cnn")
    identity_at_init = False  # the paper's random initialisation; ratio * A(x) is mixed in from the start
    stage = 6  # on the final features: after proj_tuning has set their width

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        opts = options_of(cfg, "clip_adapter", ClipAdapterOptions)
        if opts.reduction > backbone.feature_dim:
            raise ConfigError(f"peft.clip_adapter.reduction={opts.reduction} leaves no hidden unit: "
                              f"{backbone.info['name']!r} has {backbone.feature_dim} features; use at most "
                              f"{backbone.feature_dim} (the paper's 4).")

    def apply(self, backbone, cfg, num_classes):
        opts = options_of(cfg, "clip_adapter", ClipAdapterOptions)
        dim = backbone.feature_dim  # after proj_tuning (stage 0), the projected width
        if dim // opts.reduction < 1:
            raise ConfigError(f"peft.clip_adapter.reduction={opts.reduction} leaves no hidden unit on "
                              f"{dim} features; use at most {dim}.")
        module = ClipAdapterModule(dim, dim // opts.reduction, opts.ratio).to(device_of(backbone.encoder))
        add_feature_module(backbone, MODULE_NAME, module)
