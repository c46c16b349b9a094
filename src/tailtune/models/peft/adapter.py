"""Adapter: the bottleneck in sequence after each block's MLP, with a residual connection."""

from __future__ import annotations

import torch
from torch import nn

from tailtune.models.peft.adaptformer import Bottleneck
from tailtune.models.peft.base import (
    PEFT_METHODS,
    PeftMethod,
    PeftModule,
    device_of,
    feature_width,
    resolve_r,
    select_blocks,
)
from tailtune.models.peft.targets import check_parts


class SequentialAdapter(PeftModule):
    """Replaces a block's ``mlp``: h = mlp(x); h + adapter(h). The zero up-projection makes it h at init."""

    def __init__(self, mlp: nn.Module, adapter: nn.Module):
        super().__init__()
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x)
        return h + self.adapter(h) if self.active else h


@PEFT_METHODS.register("adapter")
class Adapter(PeftMethod):
    """Bottleneck (no scale) after each MLP's output, residual (Houlsby-style, one per block)."""

    kinds = ("vit",)
    stage = 4

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        for _, block in select_blocks(backbone, cfg):
            check_parts(block, ["fc1", "fc2"], name)

    def apply(self, backbone, cfg, num_classes):
        r = resolve_r(backbone, cfg, num_classes)
        for _, block in select_blocks(backbone, cfg):
            adapter = Bottleneck(feature_width(block), r, scaled=False).to(device_of(block))
            block.mlp = SequentialAdapter(block.mlp, adapter)
