"""Initial values of the PEFT modules (the reference's) and the frozen-backbone features of peft_off.

Reference facts checked here (shijxcs/LIFT at 661ead9): LoRA's A is a (d_in, r) tensor filled by
kaiming_uniform_(a=sqrt(5)) and B is zero (models/peft_modules.py:LoRA); SSF's scale is N(1, 0.02)
and its shift N(0, 0.02), created for all blocks' attention pair, then the MLP pair, then the
LayerNorm pair (peft_modules.py:SSF, peft_vit.py:185-219); masked tuning keeps the first
int(ratio * n) entries of torch.randperm(n) over each layer's out x (in + 1) [weight | bias]
matrix, one CPU generator seeded by the mask seed shared by blocks in depth order and, in each,
the attention in/out and MLP in/out layers (peft_modules.py:MaskedLinear, peft_vit.py:221-236).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_peft_zoo import FAMILIES, IMAGES, INTENDED, VIT_METHODS, C, D, L, fresh, tiny_bases  # noqa: F401

import tailtune
from tailtune.config import PeftConfig, load_config, section
from tailtune.evaluation.evaluate import train_features
from tailtune.models.peft.base import apply_peft, peft_off
from tailtune.models.peft.lora import LowRank
from tailtune.models.peft.masked import MaskedLinear, MaskedOptions
from tailtune.models.peft.ssf import ScaleShift
from tailtune.models.peft.targets import get_part
from tailtune.runs.run import init_head

# ------------------------------------------------------------------ LoRA


def test_lora_down_is_the_references_kaiming_uniform_on_an_in_by_r_tensor():
    d_in, d_out, r = 768, 768, 4
    with torch.random.fork_rng():
        torch.manual_seed(5)
        lowrank = LowRank(d_in, d_out, r)
        after = torch.get_rng_state()
        torch.manual_seed(5)
        # the reference's A: (d_in, r), fan-in r, so uniform in +-gain * sqrt(3 / r) with gain sqrt(2 / 6)
        bound = math.sqrt(2.0 / (1 + 5)) * math.sqrt(3.0 / r)
        a = torch.empty(d_in, r).uniform_(-bound, bound)
        assert torch.equal(torch.get_rng_state(), after)  # A is the only draw
    assert torch.equal(lowrank.down.weight, a.t())  # (r, d_in) in nn.Linear's layout
    assert bound == pytest.approx(1 / math.sqrt(r))
    assert lowrank.down.weight.std().item() == pytest.approx(1 / math.sqrt(3 * r), rel=0.05)  # 0.289 at r = 4
    assert lowrank.down.weight.abs().max() <= bound
    assert not lowrank.up.weight.any() and lowrank.scaling == 1 / r  # B = 0: the update is zero at init
    assert not lowrank(torch.randn(3, d_in)).any()


# ------------------------------------------------------------------ SSF


@pytest.mark.parametrize("family", FAMILIES)
def test_ssf_draws_scale_n_1_002_and_shift_n_0_002_in_the_references_order(tiny_bases, family):  # noqa: F811
    backbone = fresh(tiny_bases, family)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        apply_peft(backbone, PeftConfig(method="ssf"), C)
        torch.manual_seed(7)
        # all blocks' (qkv, out), then all blocks' (fc1, fc2), then all blocks' (norm1, norm2); scale first
        widths = [(3 * D, D), (4 * D, D), (D, D)]
        want = {}
        for group, (w1, w2) in zip(["attn", "mlp", "norm"], widths):
            for block in range(L):
                for slot, width in enumerate((w1, w2)):
                    want[group, block, slot] = (torch.empty(width).normal_(1.0, 0.02),
                                                torch.empty(width).normal_(0.0, 0.02))
    modules = [m for m in backbone.modules() if isinstance(m, ScaleShift)]
    assert len(modules) == 6 * L
    for (group, block, slot), (scale, shift) in want.items():
        part = {"attn": ("qkv", "out"), "mlp": ("fc1", "fc2"), "norm": ("norm1", "norm2")}[group][slot]
        _, m = get_part(backbone.blocks()[block][1], part, "ssf")
        assert isinstance(m, ScaleShift)
        assert torch.equal(m.scale, scale) and torch.equal(m.shift, shift), (group, block, slot)
    scales = torch.cat([m.scale.detach() for m in modules])
    shifts = torch.cat([m.shift.detach() for m in modules])
    assert scales.numel() == L * (3 * D + D + 4 * D + D + 2 * D)  # 1408 entries of each
    assert scales.mean().item() == pytest.approx(1.0, abs=0.003) and shifts.mean().item() == pytest.approx(0, abs=0.003)
    assert scales.std().item() == pytest.approx(0.02, rel=0.1) and shifts.std().item() == pytest.approx(0.02, rel=0.1)


# ------------------------------------------------------------------ masked tuning


def reference_masks(layers, ratio, seed):
    """The reference's selection, written out: per layer, the first int(ratio * n) of one generator's randperm(n)
    over the out x (in + 1) matrix [weight | bias]; returns (weight mask, bias mask) per layer."""
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for out_f, in_f in layers:
        n = out_f * (in_f + 1)
        chosen = torch.randperm(n, generator=generator)[:int(n * ratio)]
        mask = torch.zeros(n, dtype=torch.bool).scatter(0, chosen, True).view(out_f, in_f + 1)
        masks.append((mask[:, :-1], mask[:, -1]))
    return masks


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_tuning_trains_the_references_entries_for_the_seed(tiny_bases, family):  # noqa: F811
    backbone = fresh(tiny_bases, family)
    state = torch.get_rng_state()
    apply_peft(backbone, section("peft", method="masked", masked=MaskedOptions(ratio=0.25, seed=3)), C)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    layers = [m for _, m in backbone.named_modules() if isinstance(m, MaskedLinear)]  # depth order, qkv/out/fc1/fc2
    shapes = [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D)] * L
    assert [tuple(m.base.weight.shape) for m in layers] == shapes
    for m, (mask_w, mask_b) in zip(layers, reference_masks(shapes, 0.25, 3)):
        got_w = torch.zeros(m.base.weight.numel(), dtype=torch.bool).scatter(0, m.weight_index, True)
        got_b = torch.zeros(m.base.bias.numel(), dtype=torch.bool).scatter(0, m.bias_index, True)
        assert torch.equal(got_w.view_as(mask_w), mask_w) and torch.equal(got_b, mask_b)
        # the values in the reference's order (masked_select: row-major)
        assert torch.equal(m.weight_values, torch.masked_select(m.base.weight, mask_w))
        assert torch.equal(m.bias_values, torch.masked_select(m.base.bias, mask_b))
    other = reference_masks(shapes, 0.25, 4)[0][0]
    assert not torch.equal(other, reference_masks(shapes, 0.25, 3)[0][0])  # the seed matters


# ------------------------------------------------------------------ reproducible, and off for the init features


@pytest.mark.parametrize("method", ["lora", "ssf", "masked", "adaptformer", "vpt_deep"])
def test_the_same_seed_gives_the_same_initial_values(tiny_bases, method):  # noqa: F811
    def state(seed):
        backbone = fresh(tiny_bases, "open_clip")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            apply_peft(backbone, PeftConfig(method=method), C)
        return {n: t.clone() for n, t in backbone.state_dict().items()
                if INTENDED[method](n) or n.endswith("_index")}

    a, b, c = state(1), state(1), state(2)
    assert a.keys() == b.keys() == c.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    differs = any(not torch.equal(a[k], c[k]) for k in a)
    assert differs == (method != "masked")  # masked tuning's entries follow peft.mask_seed alone


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", VIT_METHODS + ["adaptformer+ssf+lora+masked", "vpt_shallow+lora"])
def test_peft_off_computes_the_frozen_backbone_alone(tiny_bases, family, method):  # noqa: F811
    plain = tiny_bases[family]  # left as it is
    tuned = fresh(tiny_bases, family)
    apply_peft(tuned, PeftConfig(method=method), C)
    own_tensors = method in ("none", "full", "bitfit", "ln_tuning")  # nothing injected: trains the backbone's own
    with torch.no_grad():
        want = plain(IMAGES)
        if not own_tensors:  # move the injected modules far from their initial values
            for p in tuned.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
        with peft_off(tuned):
            assert torch.allclose(tuned(IMAGES), want, atol=1e-5)
        if not own_tensors:
            assert not torch.allclose(tuned(IMAGES), want, atol=1e-3)  # and back on afterwards


def test_vpt_prompts_do_not_change_the_init_features(tiny_overrides):
    """train_features: the init view, PEFT modules off; equal to the classifier-only model's."""
    from tailtune.data.base import Transformed
    from tailtune.models.heads import init_transform

    def exp(method):  # fp32: the comparison is of the features, not of a precision
        return tailtune.build(load_config("lift", overrides=[*tiny_overrides, f"peft.method={method}",
                                                        "head.init=class_mean", "train.precision=fp32"]))

    with torch.random.fork_rng():
        plain, vpt = exp("none"), exp("vpt_deep")
    feats, labels = train_features(plain)
    view = Transformed(plain.data.train, init_transform(plain.backbone.preprocess))
    images = torch.stack([view[i][0] for i in range(len(view))])
    with torch.no_grad():
        assert torch.allclose(feats, plain.backbone(images), atol=1e-5)
        got, got_labels = train_features(vpt)
        assert torch.allclose(got, feats, atol=1e-5) and torch.equal(got_labels, labels)
        assert not torch.allclose(vpt.backbone(images), feats, atol=1e-3)  # the prompts do change the features
    init_head(vpt)
    init_head(plain)
    assert torch.allclose(vpt.model.head.weight, plain.model.head.weight, atol=1e-5)
