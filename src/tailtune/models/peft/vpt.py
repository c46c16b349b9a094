"""Visual prompt tuning: learnable tokens added to the token sequence of a ViT.

Shallow VPT inserts one set of prompts at the input of the first selected block; deep VPT
gives every selected block its own set, replacing the previous block's prompt outputs. The
prompts go after the patch tokens (``peft.vpt.position=end``) or right after the class
(prefix) tokens (``after_cls``). After the encoder's last block they are removed again, so
the final norm and the pooling (class token or average) see the sequence they were built
for. Prompts are inserted by forward hooks on the blocks ``Backbone.blocks()`` finds, which
works on open_clip and timm ViTs alike; the prompt tensors live on the block (``block.vpt``)
so they are part of the model's state.

On a plain ViT the blocks do not see token order (positions are added before the first
block), so both placements compute the same features; the placement matters for blocks
with position-aware attention (e.g. rotary embeddings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from tailtune.config import _check_choice, _check_positive, options_of, setting
from tailtune.models.peft.base import (
    PEFT_METHODS,
    PeftMethod,
    PeftModule,
    device_of,
    feature_width,
    select_blocks,
)

VPT_POSITIONS = ("end", "after_cls")


@dataclass
class VptOptions:
    """vpt_shallow / vpt_deep: the prompt tokens."""

    KEY: ClassVar[str] = "vpt"  # both VPTs read the same options
    MOVED: ClassVar[dict[str, str]] = {"vpt_length": "length", "vpt_position": "position"}

    length: int = setting(10, "vpt_shallow / vpt_deep: prompt tokens")
    position: str = setting("end", "end (after the patch tokens) | after_cls (after the class/prefix tokens)",
                            choices=VPT_POSITIONS)

    def __post_init__(self) -> None:
        _check_positive("peft.vpt", "length", self.length)
        _check_choice("peft.vpt", "position", self.position, VPT_POSITIONS)


class Prompts(PeftModule):
    """``length`` prompt tokens, uniform in +-sqrt(6 / (3 * patch_area + dim)) as in the VPT paper."""

    def __init__(self, length: int, dim: int, patch_area: int):
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch_area + dim))
        self.tokens = nn.Parameter(torch.empty(length, dim).uniform_(-bound, bound))


class PromptExit(PeftModule):
    """Marks the block after which the prompts leave (``block.vpt_exit``); holds no tensors.

    Its ``active`` flag tells :class:`RemovePrompts` whether prompts were inserted.
    """


def _splice(x: torch.Tensor, seq_dim: int, start: int, drop: int, insert: torch.Tensor | None) -> torch.Tensor:
    """x with ``drop`` tokens from ``start`` removed and ``insert`` (B, P, D) put in their place."""
    x = x.movedim(seq_dim, 1)
    pieces = [x[:, :start]]
    if insert is not None:
        pieces.append(insert.to(x.dtype))
    pieces.append(x[:, start + drop:])
    return torch.cat(pieces, dim=1).movedim(1, seq_dim)


@dataclass
class _Layout:
    """Where the prompts sit: after ``prefix`` tokens, or at the end when ``prefix`` is None."""

    length: int
    prefix: int | None
    seq_dim: int

    def start(self, x: torch.Tensor, present: bool) -> int:
        if self.prefix is not None:
            return self.prefix
        return x.shape[self.seq_dim] - (self.length if present else 0)


@dataclass
class InsertPrompts:
    """Forward pre-hook: add the block's prompts (``replace``: in place of those already there).

    A plain object rather than a closure, reading the prompts from the hooked block, so a
    deep-copied model uses its own prompts.
    """

    layout: _Layout
    replace: bool

    def __call__(self, block: nn.Module, args: tuple):
        if not block.vpt.active:
            return None
        x, *rest = args
        batch = x.shape[0 if self.layout.seq_dim == 1 else 1]
        prompts = block.vpt.tokens.unsqueeze(0).expand(batch, -1, -1)
        start = self.layout.start(x, present=self.replace)
        return (_splice(x, self.layout.seq_dim, start, self.layout.length if self.replace else 0, prompts), *rest)


@dataclass
class RemovePrompts:
    """Forward hook on the encoder's last block: take the prompt tokens out again."""

    layout: _Layout

    def __call__(self, block: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if not block.vpt_exit.active:
            return out
        return _splice(out, self.layout.seq_dim, self.layout.start(out, present=True), self.layout.length, None)


def _patch_area(encoder: nn.Module) -> int:
    """Pixels per patch, from the patch-embedding convolution (the encoder's first Conv2d)."""
    conv = next((m for m in encoder.modules() if isinstance(m, nn.Conv2d)), None)
    return math.prod(conv.kernel_size) if conv is not None else 1


def _layout(backbone, opts: VptOptions) -> _Layout:
    encoder = backbone.encoder
    prefix = None
    if opts.position == "after_cls":
        # timm counts class and register tokens; open_clip ViTs always have one class token.
        prefix = getattr(encoder, "num_prefix_tokens", None)
        if prefix is None:
            prefix = int(getattr(encoder, "class_embedding", None) is not None)
    # open_clip's transformer may run sequence-first; timm's blocks are always batch-first.
    batch_first = getattr(getattr(encoder, "transformer", None), "batch_first", True)
    return _Layout(opts.length, prefix, 1 if batch_first else 0)


class _VPT(PeftMethod):
    kinds = ("vit",)
    identity_at_init = False  # the prompts take part in attention from the start
    stage = 5
    family = "prompt tokens"
    deep = False

    def apply(self, backbone, cfg, num_classes):
        opts = options_of(cfg, "vpt", VptOptions)
        layout = _layout(backbone, opts)
        area = _patch_area(backbone.encoder)
        selected = select_blocks(backbone, cfg)
        for i, (_, block) in enumerate(selected if self.deep else selected[:1]):
            block.vpt = Prompts(opts.length, feature_width(block), area).to(device_of(block))
            block.register_forward_pre_hook(InsertPrompts(layout, replace=i > 0))
        last = backbone.blocks()[-1][1]
        last.vpt_exit = PromptExit()
        last.register_forward_hook(RemovePrompts(layout))


@PEFT_METHODS.register("vpt_shallow", options=VptOptions)
class VPTShallow(_VPT):
    """Prompt tokens (peft.vpt.length) added to the sequence at the first selected block."""


@PEFT_METHODS.register("vpt_deep", options=VptOptions)
class VPTDeep(_VPT):
    """Prompt tokens (peft.vpt.length) of their own at every selected block."""

    deep = True
