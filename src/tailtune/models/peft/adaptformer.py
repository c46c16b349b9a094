"""AdaptFormer: a scaled bottleneck in parallel with every block's MLP."""

from __future__ import annotations

import math

import torch
from torch import nn

from tailtune.models.peft.base import (
    PEFT_METHODS,
    PeftMethod,
    PeftModule,
    device_of,
    feature_width,
    mlp_parts,
    resolve_r,
    select_blocks,
)


class Bottleneck(nn.Module):
    """LayerNorm -> down -> ReLU -> up (-> * learnable scale). Up-projection is zero at init."""

    def __init__(self, dim: int, r: int, scaled: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, r)
        self.up = nn.Linear(r, dim)
        self.scale = nn.Parameter(torch.ones(1)) if scaled else None
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(torch.relu(self.down(self.norm(x))))
        return out * self.scale if self.scale is not None else out


class ParallelMLP(PeftModule):
    """Replaces a block's (norm, mlp) pair: mlp(norm(x)) + adapter(x).

    The block's own norm is set to Identity, so its forward is untouched and the adapter
    sees the residual stream entering the MLP sub-layer.
    """

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: nn.Module):
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.norm(x))
        return out + self.adapter(x) if self.active else out


@PEFT_METHODS.register("adaptformer")
class AdaptFormer(PeftMethod):
    """Parallel bottleneck beside each MLP with a learnable scale (the method's default)."""

    kinds = ("vit",)
    stage = 4

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        for _, block in select_blocks(backbone, cfg):
            mlp_parts(block)

    def apply(self, backbone, cfg, num_classes):
        r = resolve_r(backbone, cfg, num_classes)
        for _, block in select_blocks(backbone, cfg):
            norm_name, norm, mlp = mlp_parts(block)
            adapter = Bottleneck(feature_width(block), r).to(device_of(block))
            setattr(block, norm_name, nn.Identity())
            block.mlp = ParallelMLP(norm, mlp, adapter)
