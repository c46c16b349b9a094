"""Arbitrary fine-tuning (LIFT+'s ``aft``): a fixed random subset of each block linear's entries trains.

The targets are the attention qkv and output projections (``peft.aft.location=attn``), the two
MLP linears (``mlp``) or all four (``all``, the default) of the selected blocks. Unlike masked
tuning (masked.py, LIFT's rule over a layer's [weight | bias] matrix), every weight and every
bias is a tensor of its own here: ``int(n * ratio)`` of its ``n`` entries train, the first that
many of ``torch.randperm(n, dtype=torch.int64)`` drawn from a fresh CPU ``torch.Generator`` seeded
with ``peft.aft.seed`` for each tensor (so the draw of a tensor depends on its size and the seed
alone, not on the order of the tensors). For the same seed and ratio these are LIFT+'s very
entries, not only the same counts (LIFT-plus models/models.py: ``generate_mask``, used by
``PEFT_Attention.add_aft`` and ``PEFT_MLP.add_aft``; tests/models/test_peft_aft.py checks it).

The default ratio is LIFT+'s (LIFT-plus trainer.py, ``build_model``'s aft branch), with C classes,
d the width and L the number of blocks aft tunes (``peft.blocks``; LIFT+'s ``aft_layers``):
C / (L (12d + 9)) for ``all``, C / (L (4d + 4)) for ``attn`` and C / (L (8d + 5)) for ``mlp``, which
make about C * d entries train in all (a block's attention has 4d^2 + 4d entries, its MLP with
ratio 4 8d^2 + 5d). It is computed, and applied per tensor, in floating point as LIFT+ does, so
the counts are LIFT+'s: 76,752 for C = 100 and 767,940 for C = 1000 on CLIP ViT-B/16.

The chosen entries are saved with the values (the indices as saved buffers, as masked's), so a
checkpoint names what it trained; on export the values are written into the weights (``merge``:
the layer becomes a plain linear again), since the trained model is the base weights with those
entries replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from tailtune.config import _check_choice, options_of, setting
from tailtune.errors import ConfigError
from tailtune.models.peft.base import (
    PEFT_METHODS,
    PeftMethod,
    feature_width,
    method_names,
    select_blocks,
)
from tailtune.models.peft.masked import SparseLinear
from tailtune.models.peft.targets import check_parts, get_part, set_part

AFT_LOCATIONS = ("all", "attn", "mlp")
LOCATION_PARTS = {"attn": ("qkv", "out"), "mlp": ("fc1", "fc2"), "all": ("qkv", "out", "fc1", "fc2")}
# Per block, entries of the targets over d: 4d^2 + 4d (attention), 8d^2 + 5d (MLP of ratio 4).
_PER_WIDTH = {"attn": (4, 4), "mlp": (8, 5), "all": (12, 9)}


@dataclass
class AftOptions:
    """aft: how many entries of the block linears train, in which linears, and which entries."""

    ratio: Optional[float] = setting(  # noqa: UP045  (OmegaConf reads the annotation)
        None, "aft: trainable share of each weight and bias; default C / (L (12d + 9)) for location=all, "
              "C / (L (4d + 4)) attn, C / (L (8d + 5)) mlp (L: the blocks it tunes), as LIFT+")
    location: str = setting("all", "aft: attn (qkv and out projections) | mlp (the two MLP linears) | all",
                            choices=AFT_LOCATIONS)
    seed: int = setting(0, "aft: seed of the random choice of trainable entries (a fresh generator per tensor)")

    def __post_init__(self) -> None:
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"peft.aft.ratio={self.ratio!r} must be in (0, 1]; leave it unset for LIFT+'s "
                              "default C / (L (12d + 9)).")
        _check_choice("peft.aft", "location", self.location, AFT_LOCATIONS)


def default_ratio(num_classes: int, num_blocks: int, width: int, location: str = "all") -> float:
    """LIFT+'s ratio: C / (L (12d + 9)) for all, C / (L (4d + 4)) attn, C / (L (8d + 5)) mlp (a float, as LIFT+'s)."""
    a, b = _PER_WIDTH[location]
    return num_classes / (num_blocks * (width * a + b))


def aft_count(numel: int, ratio: float) -> int:
    """Trainable entries of one tensor of ``numel`` entries: int(numel * ratio), as LIFT+."""
    return int(numel * ratio)


def aft_entries(numel: int, ratio: float, seed: int) -> torch.Tensor:
    """The chosen entries of one tensor (sorted): LIFT+'s draw, a fresh generator for each tensor."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=generator, dtype=torch.int64)[:aft_count(numel, ratio)].sort().values


class AftLinear(SparseLinear):
    """A frozen linear layer of which ``int(n * ratio)`` random entries of the weight, and of the bias, train."""

    def __init__(self, base: nn.Linear, ratio: float, seed: int):
        sizes = (base.weight.numel(), 0 if base.bias is None else base.bias.numel())
        if base.weight.is_meta:  # shapes only (parameter counts, models/counts.py): the counts, no draw
            super().__init__(base, *(torch.zeros(aft_count(n, ratio), dtype=torch.long, device="meta")
                                     for n in sizes))
        else:
            super().__init__(base, *(aft_entries(n, ratio, seed) for n in sizes))


@torch.no_grad()
def merge_aft(model: nn.Module) -> int:
    """Write every AftLinear's trained entries into its linear layer's weight and bias, and unwrap it."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, AftLinear)]
    for name, layer in found:
        base = layer.base
        if not isinstance(base, nn.Linear):
            raise ConfigError(f"cannot merge aft at {name}: it wraps {type(base).__name__}, not a linear layer, so "
                              "its entries do not fold into a weight. Export with --no-merge.")
        base.weight.view(-1)[layer.weight_index] = layer.weight_values.to(base.weight.dtype)
        if base.bias is not None:
            base.bias[layer.bias_index] = layer.bias_values.to(base.bias.dtype)
        set_part(model, name, base)
    return len(found)


@PEFT_METHODS.register("aft", options=AftOptions)
class Aft(PeftMethod):
    """LIFT+'s arbitrary fine-tuning: a seeded random share of each block linear's weight and bias (C / L(12d + 9))."""

    kinds = ("vit",)
    stage = 1  # edits the frozen layers themselves, so it must sit under any wrapper
    merge = staticmethod(merge_aft)

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        if "masked" in method_names(cfg):
            raise ConfigError(f"peft.method={cfg.method!r} combines masked and aft, which both choose random entries "
                              "of the same weights to train; choose one.")
        parts = LOCATION_PARTS[options_of(cfg, "aft", AftOptions).location]
        for _, block in select_blocks(backbone, cfg):
            check_parts(block, parts, name)

    def apply(self, backbone, cfg, num_classes):
        opts = options_of(cfg, "aft", AftOptions)
        blocks = select_blocks(backbone, cfg)
        ratio = (float(opts.ratio) if opts.ratio is not None
                 else default_ratio(num_classes, len(blocks), feature_width(blocks[0][1]), opts.location))
        for _, block in blocks:
            for part in LOCATION_PARTS[opts.location]:
                path, layer = get_part(block, part, self.name)
                set_part(block, path, AftLinear(layer, ratio, opts.seed))
