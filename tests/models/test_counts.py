"""Parameter counts (models/counts.py) on a meta-device CLIP ViT-B/16, against LIFT+'s own formulas.

LIFT+'s counts below are computed from its code (shijxcs/LIFT-plus at ea555ea), not from a table of
its paper: the module shapes of models/modules.py (Adapter: LayerNorm(d), Linear(d, r), Linear(r, d);
AdaptFormer: an Adapter and a scalar scale; LoRA: (d, r) and (r, d) matrices; SSF: a scale and a
shift per channel), where models/models.py puts them (LoRA on q and v; SSF after the attention
in/out and the MLP in/out projections; bitfit: every bias of a block; fft: every parameter of a block;
the prompt: one (length, d) tensor per block) and the default sizes of trainer.py (build_model):
prompt length 2^max(0, int(log2(C / L))), LoRA rank 2^max(0, int(log2(C / 4L))), adapter and
AdaptFormer bottleneck 2^max(0, int(log2(C / 2L))), aft's int(n * C / (L (12d + 9))) per tensor,
and its CosineClassifier(d, C, bias=False) head (models/classifiers.py) on the d = 768 features
before the projection. LIFT+ prints "Tuned params" as all of these together (trainer.py).
"""

from __future__ import annotations

import math

import pytest
from test_peft_zoo import B16_COUNTS, fresh, n_trainable, tiny_bases  # noqa: F401
from test_peft_zoo import C as TINY_C

import tailtune  # noqa: F401  (registers the methods)
from tailtune.config import ModelConfig, section
from tailtune.models.counts import (
    BENCHMARK_CLASSES,
    count,
    counts_table,
    meta_backbone,
    peft_counts,
)
from tailtune.models.peft.base import PEFT_METHODS, apply_peft, methods_for
from tailtune.models.peft.ssf import SsfOptions
from tailtune.models.peft.vpt import VptOptions

D, L, MLP = 768, 12, 3072  # CLIP ViT-B/16
IMAGE_ENCODER = 85_799_424  # CLIP ViT-B/16's image tower without its projection


def pow2(x: float) -> int:
    return 2 ** max(0, int(math.log2(x)))


def lift_plus(c: int) -> dict[str, int]:
    """LIFT+'s trainable parameters of each method for c classes (image side; see the module docstring)."""
    prompt, lora_r, r = pow2(c / L), pow2(c / (L * 4)), pow2(c / (L * 2))
    ratio = c / (L * (D * 12 + 9))
    tensors = [3 * D * D, 3 * D, D * D, D, MLP * D, MLP, D * MLP, D]  # weight, bias of attn in/out, mlp in/out
    adapter = 2 * D + (D * r + r) + (r * D + D)
    return {
        "adapter": L * adapter,
        "adaptformer": L * (adapter + 1),
        "lora": L * 2 * (D * lora_r + lora_r * D),
        "pt": L * prompt * D,
        "ssf": L * 2 * (3 * D + D + MLP + D),
        "bitfit": L * (2 * D + 3 * D + D + MLP + D),
        "fft": L * (4 * D + sum(tensors)),
        "aft": L * sum(int(n * ratio) for n in tensors),
        "head": c * D,
    }


# tailtune's method -> (LIFT+'s method, the options that give LIFT+'s definition where it differs).
SAME = {"adapter": "adapter", "adaptformer": "adaptformer", "bitfit": "bitfit", "full": "fft", "aft": "aft"}


@pytest.fixture(scope="module")
def b16():
    return meta_backbone()


@pytest.mark.parametrize("classes", list(BENCHMARK_CLASSES))
def test_counts_equal_lift_plus_where_the_method_is_the_same(b16, classes):
    want = lift_plus(classes)
    for ours, theirs in SAME.items():
        got = count(b16, section("peft", method=ours), classes)
        assert got.backbone == want[theirs], ours
        assert got.head == want["head"] and got.backbone_total == IMAGE_ENCODER
        assert got.share == pytest.approx(want[theirs] / IMAGE_ENCODER)


@pytest.mark.parametrize("classes", list(BENCHMARK_CLASSES))
def test_where_lift_plus_defines_a_method_otherwise_its_options_give_its_counts(b16, classes):
    """Three definitions differ (docs/REFERENCE.md, LIFT+): LoRA's default rank (LIFT+: C / 4L, tailtune the
    bottleneck rule C / 2L, as LIFT), the prompt length (LIFT+: 2^int(log2(C / L)) deep prompts, tailtune
    10, as LIFT) and SSF (LIFT+ has none after the two LayerNorms). With the options set, the same counts."""
    want = lift_plus(classes)
    lora_r, prompt = pow2(classes / (L * 4)), pow2(classes / L)
    default = {m: count(b16, section("peft", method=m), classes).backbone for m in ("lora", "vpt_deep", "ssf")}
    assert default["lora"] == 2 * want["lora"]  # tailtune's rank is twice LIFT+'s at these C
    assert default["vpt_deep"] == L * 10 * D != want["pt"]
    assert default["ssf"] == want["ssf"] + L * 2 * 2 * D
    assert count(b16, section("peft", method="lora", r=lora_r), classes).backbone == want["lora"]
    assert count(b16, section("peft", method="vpt_deep", vpt=VptOptions(length=prompt)), classes).backbone == want["pt"]
    assert count(b16, section("peft", method="ssf", ssf=SsfOptions(parts="qkv+out+mlp")), classes).backbone \
        == want["ssf"]


def test_meta_counts_equal_the_real_builds(b16, tiny_bases):  # noqa: F811
    """The published-table counts of test_peft_zoo (a real ViT-B/16 build there) and, for every method, a
    real tiny CLIP's: the meta device changes no count (masked and aft skip only their draws there)."""
    for method, (c100, c1000) in B16_COUNTS.items():
        assert [count(b16, section("peft", method=method), c).backbone for c in (100, 1000)] == [c100, c1000]
    tiny = meta_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))
    for method in methods_for("vit"):
        real = fresh(tiny_bases, "open_clip")
        apply_peft(real, section("peft", method=method), TINY_C)
        assert count(tiny, section("peft", method=method), TINY_C).backbone == n_trainable(real), method


def test_every_image_side_method_is_counted(b16):
    rows = peft_counts(b16, classes=(100,))
    assert [r.method for r in rows] == methods_for("vit") == [m for m in PEFT_METHODS.names()
                                                             if "vit" in PEFT_METHODS.get(m).kinds]
    joint = {"proj_tuning": 512}  # the classifier reads CLIP's joint-space embeddings
    assert all(r.head == 100 * joint.get(r.method, D) for r in rows)
    assert next(r for r in rows if r.method == "none").backbone == 0
    assert "Heads of another width: proj_tuning (head 512 wide)." in counts_table(classes=(100,))


def test_the_table_shows_each_count(b16):
    table = counts_table(classes=(100, 8142))
    lines = table.splitlines()
    assert "12 blocks, width 768" in lines[0] and f"{IMAGE_ENCODER:,}" in lines[0]
    assert "C=100 (CIFAR-100-LT)" in table and "C=8142 (iNaturalist 2018)" in table
    rows = {ln.split("  ")[0].strip(): ln for ln in lines}
    assert rows["aft"].split() == ["aft", f"{lift_plus(100)['aft']:,}", "(0.09%)", f"{lift_plus(8142)['aft']:,}", "(7.29%)"]
    assert "76,800" in rows["head (cosine, C x width)"] and rows["r (bottleneck rule)"].split()[-2:] == ["4", "256"]
