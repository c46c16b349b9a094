"""Self-attention without PyTorch's strided slow path, for open_clip's ``nn.MultiheadAttention``.

``nn.MultiheadAttention(batch_first=True)`` transposes its input to (L, N, E) as a view and
hands that strided 3-D tensor to ``F.linear``. Under bf16 autocast on a CPU that path falls
to a ``bmm`` against the weight expanded per position and copied (benchmarks/RESULTS.md: 15x
slower than the same projection of a contiguous tensor, and one frozen-weight copy per call),
and outside autocast a bf16 or no-grad input refuses PyTorch's fused inference path as well.

:class:`FastAttention` is the same module (a subclass, with the very same parameters and
state-dict keys, so checkpoints, exports and PEFT methods see no difference) whose
self-attention forward projects the contiguous batch-first input, runs PyTorch's fused
``scaled_dot_product_attention`` and projects the output; anything else (cross-attention,
attention weights, padding masks) goes to ``nn.MultiheadAttention``'s own forward.
:func:`fast_attention` swaps it into a model, and :func:`attend` is the computation both it and
``peft/targets.py:SelfAttention`` (the form with ``qkv``/``proj`` linear layers) share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tailtune.models.casts import cast_once


def sdpa_mask(attn_mask: torch.Tensor | None, batch: int, heads: int, like: torch.Tensor) -> torch.Tensor | None:
    """``nn.MultiheadAttention``'s ``attn_mask`` as ``scaled_dot_product_attention`` reads it.

    MHA masks out True and adds a float mask; SDPA keeps True and adds a float mask, which
    must have the query's dtype (under autocast the query is bf16, the mask as built fp32). A
    3-D mask is MHA's (batch * heads, L, S).
    """
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        attn_mask = ~attn_mask
    elif attn_mask.dtype != like.dtype:
        attn_mask = attn_mask.to(like.dtype)
    if attn_mask.dim() == 3:
        attn_mask = attn_mask.view(batch, heads, *attn_mask.shape[-2:])
    return attn_mask


def attend(qkv: torch.Tensor, heads: int, attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Multi-head attention of a packed (N, L, 3E) projection; returns (N, L, E), contiguous.

    q, k and v are strided views of ``qkv`` (SDPA's CPU and CUDA kernels read strides); the
    only copy is the one that puts the heads back side by side for the output projection.

    Where a backward pass will follow in bf16 on a CPU, the attention is two batched matmuls
    and a softmax instead of SDPA's fused kernel, whose CPU backward is slow in bf16 (AMX
    Xeon, ViT-B/16 AdaptFormer step at batch 32: 7.3 against 5.5 img per CPU-s; at batch 8
    7.1 against 5.5); without a backward, or in fp32, or on CUDA, the fused kernel wins and
    runs (benchmarks/attention.py measures both).
    """
    b, n, three_e = qkv.shape
    e = three_e // 3
    q, k, v = qkv.view(b, n, 3, heads, e // heads).permute(2, 0, 3, 1, 4).unbind(0)
    mask = sdpa_mask(attn_mask, b, heads, q)
    if unfused_backward(qkv):
        out = _math_attention(q, k, v, mask, dropout_p)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(b, n, e)


def unfused_backward(x: torch.Tensor) -> bool:
    """Whether attention of ``x`` takes the matmul-and-softmax path (see :func:`attend`): a
    backward will follow and the attention computes in bf16 on a CPU (``x`` is bf16, or bf16
    autocast is on: a timm block's attention input is the fp32 output of its norm)."""
    if not (_UNFUSED_BF16_BACKWARD and x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled()):
        return False
    if x.dtype == torch.bfloat16:
        return True
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


_UNFUSED_BF16_BACKWARD = True  # benchmarks/attention.py switches it off to time the fused kernel


def _math_attention(q, k, v, mask, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, with SDPA's semantics (a bool mask keeps True)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = scores.softmax(-1)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


class FastAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose self-attention never hands a strided 3-D view to a matmul."""

    calls_attend = True  # its kernel is attend's choice (chosen_layers)

    @classmethod
    def supports(cls, mha: nn.Module) -> bool:
        """Packed q/k/v of one width, no key/value biases or zero attention (open_clip's ViTs and text towers)."""
        return (type(mha) is nn.MultiheadAttention and mha._qkv_same_embed_dim and mha.in_proj_weight is not None
                and mha.bias_k is None and not mha.add_zero_attn)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> FastAttention:
        """The same attention, sharing ``mha``'s parameter objects (nothing is copied)."""
        fast = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
                   batch_first=mha.batch_first, device="meta")
        fast.in_proj_weight = mha.in_proj_weight
        fast.in_proj_bias = mha.in_proj_bias
        fast.out_proj = mha.out_proj
        fast.train(mha.training)
        return fast

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if (key is not query or value is not query or need_weights or key_padding_mask is not None or is_causal
                or query.dim() != 3):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        x = (query if self.batch_first else query.transpose(0, 1)).contiguous()
        qkv = F.linear(x, cast_once(self.in_proj_weight), cast_once(self.in_proj_bias))
        out = attend(qkv, self.num_heads, attn_mask, self.dropout if self.training else 0.0)
        out = self.out_proj(out)
        return (out if self.batch_first else out.transpose(0, 1)), None


def fast_attention(model: nn.Module) -> int:
    """Give every attention layer of ``model`` the faster kernel per call (in place, idempotent);
    returns how many layers changed.

    open_clip's supported ``nn.MultiheadAttention`` becomes :class:`FastAttention`. A timm
    ``Attention`` (contiguous already; it reads its ``fused_attn`` flag on every call) gets a
    pre-hook that sets the flag as :func:`attend` chooses: its own matmul path where a bf16
    backward on a CPU follows (AMX Xeon, timm ViT-B/16 AdaptFormer step at batch 32: 7.6
    against 5.7 img per CPU-s), the fused kernel otherwise.
    """
    changed = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if FastAttention.supports(child):
                setattr(module, child_name, FastAttention.from_mha(child))
                changed += 1
        if isinstance(getattr(module, "fused_attn", None), bool) and not hasattr(module, _FUSED):
            setattr(module, _FUSED, module.fused_attn)  # False where timm was told not to fuse: kept
            module.register_forward_pre_hook(_choose_timm_kernel)
            changed += 1
    return changed


_FUSED = "_tailtune_fused_attn"  # the layer's own fused_attn setting


def chosen_layers(model: nn.Module) -> int:
    """How many attention layers of ``model`` run the kernel :func:`unfused_backward` picks
    (layers that call :func:`attend`, marked ``calls_attend``: FastAttention and the explicit
    form of peft/targets.py; timm attention with the pre-hook)."""
    return sum(getattr(m, "calls_attend", False) or hasattr(m, _FUSED) for m in model.modules())


def _choose_timm_kernel(module: nn.Module, args: tuple) -> None:
    if args and isinstance(args[0], torch.Tensor):
        module.fused_attn = getattr(module, _FUSED) and not unfused_backward(args[0])
