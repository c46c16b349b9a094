"""Arbitrary fine-tuning (models/peft/aft.py): LIFT+'s entries for the same seed, not only its counts.

LIFT+ facts checked here (shijxcs/LIFT-plus at ea555ea): each target tensor (the weight and the bias of
the attention in/out and MLP in/out linears, models/models.py PEFT_Attention.add_aft / PEFT_MLP.add_aft)
gets its own mask from generate_mask: a fresh ``torch.Generator().manual_seed(seed)``, then the first
``int(numel * ratio)`` entries of ``torch.randperm(numel, generator=..., dtype=torch.int64)``; the trained
values are ``torch.masked_select(tensor, mask)``. Default ratios (trainer.py, build_model): C / (L (12d + 9))
for loc=all, C / (L (4d + 4)) attn, C / (L (8d + 5)) mlp, L the number of tuned layers; defaults
loc=all, seed=0 (utils/config.py: v.aft_loc, v.aft_seed).
"""

from __future__ import annotations

import pytest
import torch
from test_peft_zoo import FAMILIES, IMAGES, NAMES, C, D, L, fresh, n_trainable, tiny_bases  # noqa: F401
from torch import nn

import tailtune
from tailtune.config import load_config, section
from tailtune.errors import ConfigError
from tailtune.inference.export import EXPORT_CONFIG, EXPORT_WEIGHTS, export_run
from tailtune.models.model import TailModel
from tailtune.models.peft.aft import AftLinear, AftOptions, merge_aft
from tailtune.models.peft.base import apply_peft, check_peft
from tailtune.models.peft.lora import LoRALinear
from tailtune.runtime.checkpoint import load_checkpoint, save_checkpoint

SHAPES = {"qkv": (3 * D, D), "out": (D, D), "fc1": (4 * D, D), "fc2": (D, 4 * D)}  # (out, in)
PARTS = {"all": ("qkv", "out", "fc1", "fc2"), "attn": ("qkv", "out"), "mlp": ("fc1", "fc2")}


def lift_plus_mask(numel: int, ratio: float, seed: int) -> torch.Tensor:
    """LIFT+'s mask of one tensor (LIFT-plus models/models.py: generate_mask), flattened."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(numel, generator=generator, dtype=torch.int64)[:int(numel * ratio)]
    return torch.zeros(numel, dtype=torch.bool).scatter_(0, chosen, True)


def lift_plus_ratio(location: str, blocks: int = L) -> float:
    """LIFT+'s default ratio (LIFT-plus trainer.py), in floating point as it computes it."""
    per = {"attn": D * 4 + 4, "mlp": D * 8 + 5, "all": D * 12 + 9}[location]
    return C / (blocks * per)


def aft(bases, family, **options):
    backbone = fresh(bases, family)
    blocks = options.pop("blocks", "all")
    apply_peft(backbone, section("peft", method="aft", blocks=blocks, aft=AftOptions(**options)), C)
    return backbone


def layers(backbone):
    return [m for _, m in backbone.named_modules() if isinstance(m, AftLinear)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ratio, seed", [(0.25, 3), (None, 0)])
def test_aft_trains_lift_plus_entries_for_the_seed(tiny_bases, family, ratio, seed):  # noqa: F811
    state = torch.get_rng_state()
    backbone = aft(tiny_bases, family, ratio=ratio, seed=seed)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    found = layers(backbone)
    assert [tuple(m.base.weight.shape) for m in found] == [SHAPES[p] for p in PARTS["all"]] * L
    r = ratio if ratio is not None else lift_plus_ratio("all")
    for m in found:
        mask_w = lift_plus_mask(m.base.weight.numel(), r, seed).view_as(m.base.weight)
        mask_b = lift_plus_mask(m.base.bias.numel(), r, seed)
        got_w = torch.zeros(m.base.weight.numel(), dtype=torch.bool).scatter(0, m.weight_index, True)
        got_b = torch.zeros(m.base.bias.numel(), dtype=torch.bool).scatter(0, m.bias_index, True)
        assert torch.equal(got_w.view_as(mask_w), mask_w) and torch.equal(got_b, mask_b)
        # the values in LIFT+'s order (masked_select: row-major)
        assert torch.equal(m.weight_values, torch.masked_select(m.base.weight, mask_w))
        assert torch.equal(m.bias_values, torch.masked_select(m.base.bias, mask_b))
    other = aft(tiny_bases, family, ratio=ratio, seed=seed + 1)
    assert any(not torch.equal(a.weight_index, b.weight_index) for a, b in zip(found, layers(other)))


@pytest.mark.parametrize("location", ["all", "attn", "mlp"])
def test_default_ratio_and_location_give_lift_plus_counts(tiny_bases, location):  # noqa: F811
    backbone = aft(tiny_bases, "timm", location=location)
    r = lift_plus_ratio(location)
    want = L * sum(int(o * i * r) + int(o * r) for o, i in (SHAPES[p] for p in PARTS[location]))
    assert n_trainable(backbone) == want
    wrapped = {n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if isinstance(m, AftLinear)}
    assert wrapped == {"all": {"qkv", "proj", "fc1", "fc2"}, "attn": {"qkv", "proj"}, "mlp": {"fc1", "fc2"}}[location]


def test_the_default_ratio_counts_the_tuned_blocks_as_lift_plus(tiny_bases):  # noqa: F811
    """LIFT+ divides by len(aft_layers): tuning one block of two doubles the ratio in that block."""
    one = aft(tiny_bases, "timm", blocks="last 1")
    r = lift_plus_ratio("all", blocks=1)
    assert n_trainable(one) == sum(int(o * i * r) + int(o * r) for o, i in SHAPES.values())
    assert {n.split(".")[2] for n, p in one.named_parameters() if p.requires_grad} == {"1"}


def test_aft_on_meta_tensors_counts_without_drawing(tiny_bases):  # noqa: F811
    real = aft(tiny_bases, "open_clip")
    base = nn.Linear(D, 3 * D, device="meta")
    meta = AftLinear(base, lift_plus_ratio("all"), 0)
    first = layers(real)[0]
    assert meta.weight_values.shape == first.weight_values.shape and meta.bias_values.shape == first.bias_values.shape


@pytest.mark.parametrize("override, match", [
    ("peft.aft.ratio=0", "peft.aft.ratio=0"),
    ("peft.aft.ratio=1.5", "peft.aft.ratio=1.5"),
    ("peft.aft.location=ffn", "peft.aft.location"),
    ("peft.aft.loc=mlp", "Did you mean peft.aft.location"),
])
def test_bad_aft_options_fail_at_config_time(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=["peft.method=aft", override])


def test_aft_and_masked_do_not_compose(tiny_bases):  # noqa: F811
    with pytest.raises(ConfigError, match="combines masked and aft"):
        check_peft(tiny_bases["timm"], section("peft", method="masked+aft"))


def test_aft_checkpoints_carry_the_entries_they_trained(tiny_bases, tmp_path):  # noqa: F811
    def model(seed):
        return TailModel(aft(tiny_bases, "open_clip", ratio=0.2, seed=seed), nn.Linear(D, C)).eval()

    a, b = model(3), model(4)  # b drew other entries
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    saved = a.trainable_state_dict()
    assert sum(k.endswith((".weight_index", ".bias_index")) for k in saved) == 2 * 4 * L
    save_checkpoint(tmp_path / "c.safetensors", saved, "peft: {}", {"name": "x"}, NAMES)
    load_checkpoint(tmp_path / "c.safetensors", b, {"name": "x"}, NAMES)
    with torch.no_grad():
        assert torch.equal(a(IMAGES), b(IMAGES))


@pytest.mark.parametrize("method", ["aft", "lora+aft+ssf"])
def test_merge_writes_the_entries_into_the_weights(tiny_bases, method):  # noqa: F811
    backbone = fresh(tiny_bases, "open_clip")
    apply_peft(backbone, section("peft", method=method, aft=AftOptions(ratio=0.3)), C)
    with torch.no_grad():
        for p in backbone.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
        before = backbone(IMAGES)
        assert merge_aft(backbone) == 4 * L
        assert not layers(backbone)
        assert torch.allclose(backbone(IMAGES), before, atol=1e-5)
    if "lora" in method:  # LoRA's wrapper now holds the plain linear, as a merge of LoRA needs
        assert all(isinstance(m.base, nn.Linear) for m in backbone.modules() if isinstance(m, LoRALinear))


@pytest.fixture(scope="module")
def aft_run(tmp_path_factory):
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config("lift", overrides=[*TINY_CLIP, "peft.method=lora+aft", "peft.lr=0.5", "eval.tte=none",
                                         "train.precision=fp32", f"output_dir={out}", "name=aft"])
    tailtune.fit(cfg)
    return out / "aft"


def test_an_aft_run_reloads_strictly_and_exports_merged(aft_run, tmp_path):
    """Named after LoRA in peft.method, aft still merges first (its layers sit under LoRA's)."""
    import json

    from safetensors.torch import load_file

    summary = export_run(aft_run, tmp_path / "model", onnx=False)  # checks the export's logits itself
    assert summary["merged"] == ["lora", "aft"]
    meta = json.loads((tmp_path / "model" / EXPORT_CONFIG).read_text())
    assert meta["config"]["peft"]["method"] == "none"
    assert not any(k.endswith(("_values", "_index")) for k in load_file(str(tmp_path / "model" / EXPORT_WEIGHTS)))
    kept = export_run(aft_run, tmp_path / "kept", merge=False, onnx=False)
    assert kept["merged"] == []
    assert json.loads((tmp_path / "kept" / EXPORT_CONFIG).read_text())["config"]["peft"]["method"] == "lora+aft"
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = tailtune.load(aft_run, device="cpu").model.float().eval()
    b = tailtune.load(tmp_path / "model", device="cpu").model.float().eval()
    with torch.no_grad():
        assert torch.allclose(a(images), b(images), atol=1e-4, rtol=1e-4)
