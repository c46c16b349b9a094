"""models/casts.py: a frozen weight is cast to the autocast dtype once per change, with the
result autocast itself gives."""

from __future__ import annotations

import torch
from torch import nn

from tailtune.config import ModelConfig
from tailtune.models.backbones.base import build_backbone
from tailtune.models.casts import CastOnceLinear, cast_frozen_once, cast_once


def _frozen_linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(16, 8).requires_grad_(False)
    plain = nn.Linear(16, 8).requires_grad_(False)
    plain.load_state_dict(layer.state_dict())
    cast_frozen_once(layer)
    return layer, plain


def test_same_result_as_autocast_bit_for_bit():
    layer, plain = _frozen_linear()
    x = torch.randn(5, 16)
    with torch.autocast("cpu", torch.bfloat16):
        got, want = layer(x), plain(x)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)
    torch.testing.assert_close(layer(x), plain(x), atol=0, rtol=0)  # fp32 outside autocast: no cast at all


def test_cast_is_kept_and_renewed_after_an_in_place_change():
    layer, _ = _frozen_linear()
    with torch.autocast("cpu", torch.bfloat16):
        first = cast_once(layer.weight)
        assert cast_once(layer.weight) is first
        with torch.no_grad():
            layer.weight.add_(1.0)  # a checkpoint load or LoRA merge changes the weight in place
        second = cast_once(layer.weight)
    assert second is not first
    assert torch.equal(second, layer.weight.to(torch.bfloat16))


def test_trainable_and_fp32_tensors_pass_through():
    w = torch.randn(4, 4, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        assert cast_once(w) is w  # autocast caches trainable leaves itself within a step
        assert cast_once(None) is None
    frozen = torch.randn(4, 4)
    assert cast_once(frozen) is frozen  # no autocast: nothing to cast


def test_cast_made_in_inference_mode_serves_a_later_backward():
    """Evaluation (inference mode) may make the copy first; training must still save it for backward."""
    layer, _ = _frozen_linear()
    x = torch.randn(3, 16)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        layer(x)
    x.requires_grad_(True)
    with torch.autocast("cpu", torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_backbone_linears_cast_once_and_no_weight_cast_on_the_second_batch():
    backbone = build_backbone(ModelConfig(provider="open_clip", name="TT-Tiny-ViT", pretrained="none"))
    linears = [m for m in backbone.clip.visual.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is CastOnceLinear for m in linears)
    shapes = {tuple(m.weight.shape) for m in linears}
    shapes |= {tuple(m.in_proj_weight.shape) for m in backbone.clip.visual.modules() if hasattr(m, "in_proj_weight")}
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        backbone(x)  # makes the copies
        with torch.profiler.profile(record_shapes=True) as prof:
            backbone(x)
    casts = [e for e in prof.key_averages(group_by_input_shape=True)
             if e.key == "aten::_to_copy" and e.input_shapes and tuple(e.input_shapes[0]) in shapes]
    assert not casts, [(e.input_shapes, e.count) for e in casts]


def test_lora_keeps_the_frozen_qkv_cast_once():
    """The explicit attention PEFT methods on qkv/out introduce (peft/targets.py) is made after
    the backbone's build: its qkv layer must read through the cast as well."""
    from tailtune.config import PeftConfig
    from tailtune.models.peft.base import apply_peft
    from tailtune.models.peft.targets import innermost

    backbone = build_backbone(ModelConfig(provider="open_clip", name="TT-Tiny-ViT", pretrained="none"))
    apply_peft(backbone, PeftConfig(method="lora"), 10)
    blocks = backbone.clip.visual.transformer.resblocks
    assert all(type(innermost(b.attn.qkv)) is CastOnceLinear for b in blocks)
    assert all(type(innermost(b.attn.proj)) is CastOnceLinear for b in blocks)


def test_a_trained_weight_is_cast_once_per_evaluation_and_again_after_a_step():
    """Gradients off (evaluation): a trainable weight is kept cast like a frozen one, and an
    optimizer step (in place) makes the next evaluation cast it anew."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    cast_frozen_once(layer)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(4, 16)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        first = cast_once(layer.weight)
        assert first is not layer.weight and cast_once(layer.weight) is first
        before = layer(x)
    with torch.autocast("cpu", torch.bfloat16):
        assert cast_once(layer.weight) is layer.weight  # a training step: autocast's own cast
        layer(x).float().sum().backward()
    opt.step()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        after = layer(x)
        assert torch.equal(cast_once(layer.weight), layer.weight.detach().to(torch.bfloat16))
        assert torch.equal(after, torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert not torch.equal(before, after)


def test_layers_a_peft_method_adds_read_through_the_cast():
    from tailtune.config import PeftConfig
    from tailtune.models.peft.base import apply_peft

    backbone = build_backbone(ModelConfig(provider="open_clip", name="TT-Tiny-ViT", pretrained="none"))
    apply_peft(backbone, PeftConfig(method="adaptformer"), 10)
    added = [m for n, m in backbone.named_modules() if ".adapter." in n and isinstance(m, nn.Linear)]
    assert added and all(type(m) is CastOnceLinear for m in added)
