"""Masked ("arbitrary" sparse) fine-tuning: a fixed random subset of entries of the block linears trains.

The targets are the attention qkv and output projections and the two MLP linears of the
selected blocks. Each layer's weight and bias are seen together as an out x (in + 1)
matrix (the bias as the last column) and ``floor(ratio * out * (in + 1))`` of its entries
become trainable: the first that many of ``torch.randperm(out * (in + 1))``, drawn from one
CPU ``torch.Generator`` seeded with ``peft.masked.seed`` and shared by the layers in the
reference's order (blocks in depth order; in each, qkv, out, fc1, fc2). For the same seed
these are the reference's entries (reference: models/peft_vit.py:221-236 and
models/peft_modules.py:MaskedLinear, lines 120-138). The global RNG is not touched.

The default ratio is C / (12 L d) (C classes, L blocks, d width: the rule that makes the
count about C * d, like the bottleneck rule), floored to a multiple of 0.001 and at least
0.001. Flooring per layer over weight and bias together is what gives the published
counts on CLIP ViT-B/16: 84,996 trainable entries for C = 100 and 765,132 for C = 1000
(flooring per tensor would give 84,972, flooring the total 85,017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tailtune.config import options_of, setting
from tailtune.errors import ConfigError
from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, feature_width, select_blocks
from tailtune.models.peft.targets import LayerWrapper, check_parts, get_part, set_part

PARTS = ("qkv", "out", "fc1", "fc2")


@dataclass
class MaskedOptions:
    """masked: how many entries train, and which."""

    MOVED: ClassVar[dict[str, str]] = {"mask_ratio": "ratio", "mask_seed": "seed"}

    ratio: Optional[float] = setting(  # noqa: UP045  (OmegaConf reads the annotation)
        None, "masked: trainable share of the targets; default C / (12 L d), see masked.py")
    seed: int = setting(0, "masked: seed of the random choice of trainable entries")

    def __post_init__(self) -> None:
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"peft.masked.ratio={self.ratio!r} must be in (0, 1].")


def default_ratio(num_classes: int, num_blocks: int, width: int) -> Fraction:
    """C / (12 L d), floored to a multiple of 1/1000, at least 1/1000 (exact arithmetic)."""
    thousandths = (1000 * num_classes) // (12 * num_blocks * width)
    return Fraction(max(thousandths, 1), 1000)


def masked_count(ratio: Fraction, out_features: int, in_features: int, bias: bool) -> int:
    """Trainable entries of one layer: floor(ratio * out * (in + bias))."""
    return math.floor(ratio * out_features * (in_features + int(bias)))


class SparseLinear(LayerWrapper):
    """A frozen linear layer of which the entries ``weight_index`` (into the flattened weight) and
    ``bias_index`` train; masked and arbitrary fine-tuning (aft.py) differ only in how they pick them.

    The chosen entries start at their frozen values (so the layer is unchanged at init) and
    are scattered into copies of the frozen tensors at every forward. Indices are sorted, so
    the values are in ``masked_select``'s (row-major) order, the references' order.
    """

    saved_buffers = ("weight_index", "bias_index")

    def __init__(self, base: nn.Linear, weight_index: torch.Tensor, bias_index: torch.Tensor):
        super().__init__(base)
        device = base.weight.device
        # The indices follow from the seed, and are saved with the values too (saved_buffers): a
        # checkpoint names the entries it trained, whatever the generator draws elsewhere.
        self.register_buffer("weight_index", weight_index.to(device))
        self.register_buffer("bias_index", bias_index.to(device))
        self.weight_values = nn.Parameter(base.weight.detach().flatten()[self.weight_index].clone())
        self.bias_values = (nn.Parameter(base.bias.detach()[self.bias_index].clone())
                            if base.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return self.base(x)
        w = self.base.weight
        weight = w.flatten().scatter(0, self.weight_index, self.weight_values.to(w.dtype)).view_as(w)
        bias = self.base.bias
        if bias is not None:
            bias = bias.scatter(0, self.bias_index, self.bias_values.to(bias.dtype))
        return F.linear(x, weight, bias)


class MaskedLinear(SparseLinear):
    """A frozen linear layer of which ``count`` randomly chosen entries of weight and bias train."""

    def __init__(self, base: nn.Linear, count: int, generator: torch.Generator):
        out_f, in_f = base.weight.shape
        cols = in_f + (base.bias is not None)
        if base.weight.is_meta:
            # Shapes only (parameter counts, models/counts.py): the count is exact, but which of
            # the entries are biases is not drawn, so all of them sit in the weight here.
            super().__init__(base, torch.zeros(count, dtype=torch.long, device="meta"),
                             torch.zeros(0, dtype=torch.long, device="meta"))
            return
        # The reference's rule: a full permutation, its first ``count`` entries (6 s in all
        # for ViT-B/16's 48 layers on 2 CPU cores).
        picked = torch.randperm(out_f * cols, generator=generator)[:count].sort().values
        row, col = picked // cols, picked % cols
        in_weight = col < in_f
        super().__init__(base, (row * in_f + col)[in_weight], row[~in_weight])


@PEFT_METHODS.register("masked", options=MaskedOptions)
class Masked(PeftMethod):
    """A random, seeded subset of the qkv, out-projection and MLP weights and biases (ratio C / 12Ld)."""

    kinds = ("vit",)
    stage = 1  # edits the frozen layers themselves, so it must sit under any wrapper

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        for _, block in select_blocks(backbone, cfg):
            check_parts(block, PARTS, name)

    def apply(self, backbone, cfg, num_classes):
        blocks = backbone.blocks()
        opts = options_of(cfg, "masked", MaskedOptions)
        ratio = (Fraction(str(opts.ratio)) if opts.ratio is not None
                 else default_ratio(num_classes, len(blocks), feature_width(blocks[0][1])))
        # A local CPU generator, as the reference's: the same choice on any device.
        generator = torch.Generator().manual_seed(opts.seed)
        for _, block in select_blocks(backbone, cfg):
            for part in PARTS:
                path, layer = get_part(block, part, self.name)
                count = masked_count(ratio, layer.out_features, layer.in_features, layer.bias is not None)
                set_part(block, path, MaskedLinear(layer, count, generator))
