"""Where PEFT methods attach inside a transformer block, for open_clip and timm ViTs alike.

A method names the *parts* it acts on (``qkv``, ``out``, ``fc1``, ``fc2``, ``norm1``,
``norm2``); each part is found by module path inside a block, the first of its paths
that exists (the ``target_modules`` idea of peft), so no method hard-wires a model class.

open_clip blocks hold an ``nn.MultiheadAttention``, which reads its q/k/v and output
projections as raw tensors inside its own forward: nothing can be wrapped there. For the
parts ``qkv`` and ``out`` such an attention is swapped (once, on demand) for
:class:`SelfAttention`, the same computation with ``qkv`` and ``proj`` linear layers that
hold the very same parameter objects, so both families then look like timm's ``Attention``.
"""

from __future__ import annotations

from torch import nn

from tailtune.errors import ConfigError
from tailtune.models.attention import attend
from tailtune.models.casts import CastOnceLinear
from tailtune.models.peft.base import PeftModule

PART_PATHS: dict[str, tuple[str, ...]] = {
    "qkv": ("attn.qkv",),  # timm, and open_clip after explicit_attention
    "out": ("attn.proj",),
    "fc1": ("mlp.c_fc", "mlp.fc1"),  # open_clip, timm
    "fc2": ("mlp.c_proj", "mlp.fc2"),
    "norm1": ("ln_1", "norm1"),
    "norm2": ("ln_2", "norm2"),
}
_ATTENTION_PARTS = ("qkv", "out")


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention`` restricted to self-attention, with linear ``qkv`` and ``proj``.

    Takes and returns what the MHA does (``(output, None)``), so the block that calls it is
    untouched. Built from an MHA by sharing its parameters, not copying them.
    """

    calls_attend = True  # models/attention.py:chosen_layers

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if mha.in_proj_weight is None or mha.bias_k is not None or mha.add_zero_attn:
            raise ConfigError("this attention layer has separate q/k/v sizes, key/value biases or zero "
                              "attention; PEFT methods on qkv/out support standard self-attention only.")
        dim = mha.embed_dim
        self.num_heads = mha.num_heads
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        # CastOnceLinear, as every frozen linear of a backbone (models/casts.py): made after the build.
        self.qkv = CastOnceLinear(dim, 3 * dim, bias=mha.in_proj_bias is not None, device="meta")
        self.qkv.weight = mha.in_proj_weight
        if mha.in_proj_bias is not None:
            self.qkv.bias = mha.in_proj_bias
        self.proj = mha.out_proj

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=False,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if any(t is not None and t is not query for t in (key, value)):
            raise ValueError("SelfAttention computes self-attention only: key and value must be the query.")
        if need_weights or key_padding_mask is not None or is_causal:
            raise ValueError("SelfAttention supports neither attention weights, padding masks nor is_causal.")
        x = (query if self.batch_first else query.transpose(0, 1)).contiguous()
        out = self.proj(attend(self.qkv(x), self.num_heads, attn_mask, self.dropout if self.training else 0.0))
        return (out if self.batch_first else out.transpose(0, 1)), None


class LayerWrapper(PeftModule):
    """Base of modules that wrap a backbone layer (``self.base``) and change its output.

    While not ``active`` (:func:`~.base.peft_off`) a wrapper's forward is the wrapped layer's.

    ``weight`` and ``bias`` read through to the wrapped layer, so code that queries a
    layer's dtype or shape that way (e.g. open_clip's ``get_weight_dtype``) still works.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base

    @property
    def weight(self):
        return self.base.weight

    @property
    def bias(self):
        return self.base.bias


def innermost(layer: nn.Module) -> nn.Module:
    """The original layer inside any number of :class:`LayerWrapper`."""
    while isinstance(layer, LayerWrapper):
        layer = layer.base
    return layer


def _lookup(block: nn.Module, part: str) -> tuple[str, nn.Module] | None:
    for path in PART_PATHS[part]:
        try:
            return path, block.get_submodule(path)
        except AttributeError:
            continue
    return None


def _expected(part: str) -> type:
    return nn.LayerNorm if part.startswith("norm") else nn.Linear


def check_parts(block: nn.Module, parts, method: str) -> None:
    """Start-up check that ``block`` has every part, without changing it."""
    for part in parts:
        if part in _ATTENTION_PARTS and isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            SelfAttention(block.attn)  # raises if the attention cannot be made explicit
            continue
        found = _lookup(block, part)
        if found is None or not isinstance(innermost(found[1]), _expected(part)):
            raise ConfigError(f"peft.method={method!r} needs the {part} layer ({' or '.join(PART_PATHS[part])}, "
                              f"an {_expected(part).__name__}) in every block, but {type(block).__name__} has none; "
                              "it supports open_clip and timm ViT blocks.")


def explicit_attention(block: nn.Module) -> None:
    """Swap an open_clip block's ``nn.MultiheadAttention`` for :class:`SelfAttention` (idempotent)."""
    if isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        block.attn = SelfAttention(block.attn)


def get_part(block: nn.Module, part: str, method: str) -> tuple[str, nn.Module]:
    """(path, layer) of a part of ``block``; the layer may already be wrapped by another method."""
    check_parts(block, [part], method)
    if part in _ATTENTION_PARTS:
        explicit_attention(block)
    return _lookup(block, part)


def set_part(block: nn.Module, path: str, layer: nn.Module) -> None:
    """Put ``layer`` at ``path`` inside ``block`` (replacing what was there)."""
    parent, _, leaf = path.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, leaf, layer)
