"""models/attention.py: FastAttention computes what nn.MultiheadAttention does, without the
strided-view matmul, and attend's two kernels agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tailtune.config import ModelConfig
from tailtune.models import attention as A
from tailtune.models.attention import (
    FastAttention,
    attend,
    chosen_layers,
    fast_attention,
    unfused_backward,
)
from tailtune.models.backbones.base import build_backbone


def _pair(batch_first: bool, seed: int = 0):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    return mha, FastAttention.from_mha(mha)


def _masks(n: int, batch: int, heads: int):
    causal = torch.full((n, n), float("-inf")).triu(1)
    boolean = torch.rand(n, n) > 0.7
    boolean.fill_diagonal_(False)  # every row keeps one key
    per_head = torch.randn(batch * heads, n, n)
    return [None, causal, boolean, per_head]


@pytest.mark.parametrize("batch_first", [True, False])
def test_fast_attention_matches_multihead_attention(batch_first):
    mha, fast = _pair(batch_first)
    x = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
    for mask in _masks(7, 3, 4):
        want = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
        got, weights = fast(x, x, x, need_weights=False, attn_mask=mask)
        assert weights is None
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fast_attention_shares_parameters_and_state_dict_keys():
    mha, fast = _pair(True)
    assert fast.in_proj_weight is mha.in_proj_weight and fast.out_proj is mha.out_proj
    assert list(fast.state_dict()) == list(mha.state_dict())
    assert isinstance(fast, nn.MultiheadAttention)


def test_fast_attention_hands_other_calls_to_multihead_attention():
    """Cross-attention and attention weights are nn.MultiheadAttention's own forward."""
    mha, fast = _pair(True)
    x, y = torch.randn(2, 5, 32), torch.randn(2, 6, 32)
    out, weights = fast(x, x, x)  # need_weights defaults to True, as in nn.MultiheadAttention
    want, want_w = mha(x, x, x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(weights, want_w)
    torch.testing.assert_close(fast(x, y, y, need_weights=False)[0], mha(x, y, y, need_weights=False)[0])


def test_fast_attention_swaps_only_supported_layers():
    model = nn.ModuleDict({"a": nn.MultiheadAttention(16, 2, batch_first=True),
                           "kv": nn.MultiheadAttention(16, 2, add_bias_kv=True),
                           "cross": nn.MultiheadAttention(16, 2, kdim=8, vdim=8)})
    assert fast_attention(model) == 1
    assert type(model["a"]) is FastAttention and type(model["kv"]) is nn.MultiheadAttention
    assert fast_attention(model) == 0  # idempotent


@pytest.mark.parametrize("masked", [False, True])
def test_the_two_kernels_of_attend_agree_with_gradients(masked, monkeypatch):
    """The bf16 CPU backward path (matmuls and softmax) against SDPA's fused kernel, in fp32
    so the comparison is tight; the path choice is forced through the module flag."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 3 * 16, requires_grad=True)
    mask = torch.full((9, 9), float("-inf")).triu(1) if masked else None
    fused = attend(qkv, 4, mask)
    (g_fused,) = torch.autograd.grad(fused.square().sum(), qkv)
    math = A._math_attention(*qkv.view(2, 9, 3, 4, 4).permute(2, 0, 3, 1, 4).unbind(0),
                             A.sdpa_mask(mask, 2, 4, qkv), 0.0).transpose(1, 2).reshape(2, 9, 16)
    (g_math,) = torch.autograd.grad(math.square().sum(), qkv)
    torch.testing.assert_close(math, fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_math, g_fused, atol=1e-4, rtol=1e-4)


def test_unfused_path_only_for_a_bf16_cpu_backward(monkeypatch):
    x = torch.randn(2, 3, dtype=torch.bfloat16, requires_grad=True)
    assert unfused_backward(x)
    assert not unfused_backward(x.detach())  # no backward
    assert not unfused_backward(x.float())  # fp32: the fused kernel
    with torch.no_grad():
        assert not unfused_backward(x)
    monkeypatch.setattr(A, "_UNFUSED_BF16_BACKWARD", False)
    assert not unfused_backward(x)


def test_bf16_attention_block_runs_no_strided_matmul():
    """The slow path this module removes shows in the profiler as a bmm of the input
    projection (nn.MultiheadAttention's strided view under bf16 autocast); FastAttention's
    bf16 inference forward runs the projection as one matmul and SDPA, no bmm at all."""
    mha, fast = _pair(True)
    x = torch.randn(4, 11, 32)
    with torch.profiler.profile() as prof, torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        fast(x, x, x, need_weights=False)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::bmm" not in ops
    assert any("scaled_dot_product" in k for k in ops)


def test_open_clip_backbone_gets_fast_attention_in_both_towers():
    backbone = build_backbone(ModelConfig(provider="open_clip", name="TT-Tiny-ViT", pretrained="none"))
    attns = [m for m in backbone.modules() if isinstance(m, nn.MultiheadAttention)]
    assert attns and all(type(m) is FastAttention for m in attns)
    assert chosen_layers(backbone) == len(attns) == 4  # two blocks in each tower of TT-Tiny-ViT
    assert any(n.startswith("clip.visual.") and n.endswith(".attn.in_proj_weight") for n, _ in backbone.named_parameters())


def test_timm_attention_kernel_is_chosen_per_call():
    """timm's Attention keeps its layout; the pre-hook picks its matmul path for a bf16 CPU
    backward and the fused kernel otherwise (and never fuses a layer timm was told not to)."""
    from timm.layers import Attention

    torch.manual_seed(0)
    attn, unfused = Attention(32, num_heads=4), Attention(32, num_heads=4)
    unfused.fused_attn = False
    model = nn.ModuleList([attn, unfused])
    assert fast_attention(model) == 2 and fast_attention(model) == 0
    assert chosen_layers(model) == 2
    x = torch.randn(2, 5, 32, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        attn(x)
        assert attn.fused_attn is False
        with torch.no_grad():
            attn(x)
            assert attn.fused_attn is True
    attn(x)
    assert attn.fused_attn is True  # fp32
    with torch.autocast("cpu", torch.bfloat16):
        unfused(x.detach())
    assert unfused.fused_attn is False
