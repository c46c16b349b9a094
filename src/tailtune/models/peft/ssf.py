"""SSF: a learnable per-channel scale and shift after chosen linear layers and LayerNorms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from tailtune.config import _check_choice, options_of, setting
from tailtune.errors import ConfigError
from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, device_of, select_blocks
from tailtune.models.peft.targets import LayerWrapper, check_parts, get_part, innermost, set_part

# peft.ssf.parts -> block parts (targets.PART_PATHS)
PARTS = {"qkv": ("qkv",), "out": ("out",), "mlp": ("fc1", "fc2"), "norm": ("norm1", "norm2")}
SSF_PARTS = tuple(PARTS)


def ssf_parts(spec: str) -> list[str]:
    """The parts of ``peft.ssf.parts`` ('all' or e.g. 'qkv+mlp')."""
    parts = list(dict.fromkeys(p.strip() for p in str(spec).split("+") if p.strip()))
    return list(SSF_PARTS) if parts == ["all"] else parts


@dataclass
class SsfOptions:
    """ssf: where the scales and shifts go."""

    MOVED: ClassVar[dict[str, str]] = {"ssf_parts": "parts"}

    parts: str = setting("all", "ssf: all, or '+'-joined parts of qkv, out, mlp, norm (e.g. qkv+mlp)",
                         choices=SSF_PARTS)

    def __post_init__(self) -> None:
        if not ssf_parts(self.parts):
            raise ConfigError(f"peft.ssf.parts={self.parts!r} names no part; use all or e.g. qkv+mlp.")
        for part in ssf_parts(self.parts):
            _check_choice("peft.ssf", "parts", part, SSF_PARTS)
# The reference's groups, in the order it creates them: all blocks' attention pair, then all
# blocks' MLP pair, then all blocks' LayerNorm pair (reference: models/peft_vit.py:185-219).
DRAW_ORDER = (("qkv", "out"), ("fc1", "fc2"), ("norm1", "norm2"))
INIT_STD = 0.02  # scale ~ N(1, 0.02), shift ~ N(0, 0.02) (reference: models/peft_modules.py:SSF, lines 102-108)


class ScaleShift(LayerWrapper):
    """layer(x) * scale + shift over the last (channel) dimension.

    As in the reference, scale starts at N(1, 0.02) and shift at N(0, 0.02) per channel
    (scale drawn first), so a fresh SSF model is close to, not equal to, the frozen backbone.
    """

    def __init__(self, base: nn.Module, channels: int):
        super().__init__(base)
        self.scale = nn.Parameter(torch.empty(channels).normal_(1.0, INIT_STD))
        self.shift = nn.Parameter(torch.empty(channels).normal_(0.0, INIT_STD))

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.base(*args, **kwargs)
        return out * self.scale + self.shift if self.active else out


def channels(layer: nn.Module) -> int:
    inner = innermost(layer)
    return inner.out_features if isinstance(inner, nn.Linear) else inner.normalized_shape[-1]


def block_parts(cfg) -> list[str]:
    return [p for group in ssf_parts(options_of(cfg, "ssf", SsfOptions).parts) for p in PARTS[group]]


@PEFT_METHODS.register("ssf", options=SsfOptions)
class SSF(PeftMethod):
    """Scale and shift after the attention qkv and out projections, the MLP linears and the LayerNorms."""

    kinds = ("vit",)
    identity_at_init = False  # scale and shift are drawn around (1, 0), as the reference does
    stage = 3  # after LoRA: the scale and shift act on the updated layer's output

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        for _, block in select_blocks(backbone, cfg):
            check_parts(block, block_parts(cfg), name)

    def apply(self, backbone, cfg, num_classes):
        wanted = set(block_parts(cfg))
        blocks = select_blocks(backbone, cfg)
        # Created in the reference's order, so that from one RNG state the draws are the reference's.
        for group in DRAW_ORDER:
            for _, block in blocks:
                for part in (p for p in group if p in wanted):
                    path, layer = get_part(block, part, self.name)
                    set_part(block, path, ScaleShift(layer, channels(layer)).to(device_of(block)))
