"""SSF: a learnable per-channel scale and shift after chosen linear layers and LayerNorms."""

from __future__ import annotations

import torch
from torch import nn

from ...config import ssf_parts
from .base import PEFT_METHODS, PeftMethod, device_of, select_blocks
from .targets import LayerWrapper, check_parts, get_part, innermost, set_part

# peft.ssf_parts -> block parts (targets.PART_PATHS)
PARTS = {"qkv": ("qkv",), "out": ("out",), "mlp": ("fc1", "fc2"), "norm": ("norm1", "norm2")}


class ScaleShift(LayerWrapper):
    """layer(x) * scale + shift over the last (channel) dimension; scale 1 and shift 0 at init."""

    def __init__(self, base: nn.Module, channels: int):
        super().__init__(base)
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.base(*args, **kwargs) * self.scale + self.shift


def channels(layer: nn.Module) -> int:
    inner = innermost(layer)
    return inner.out_features if isinstance(inner, nn.Linear) else inner.normalized_shape[-1]


def block_parts(cfg) -> list[str]:
    return [p for group in ssf_parts(cfg.ssf_parts) for p in PARTS[group]]


@PEFT_METHODS.register("ssf")
class SSF(PeftMethod):
    """Scale and shift after the attention qkv and out projections, the MLP linears and the LayerNorms."""

    kinds = ("vit",)
    stage = 3  # after LoRA: the scale and shift act on the updated layer's output

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        for _, block in select_blocks(backbone, cfg):
            check_parts(block, block_parts(cfg), name)

    def apply(self, backbone, cfg, num_classes):
        for _, block in select_blocks(backbone, cfg):
            device = device_of(block)
            for part in block_parts(cfg):
                path, layer = get_part(block, part, self.name)
                set_part(block, path, ScaleShift(layer, channels(layer)).to(device))
