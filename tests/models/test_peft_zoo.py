"""Every PEFT method of the registry on open_clip and timm ViTs.

Counts are checked against the published table for CLIP ViT-B/16 and against formulas
written out here for the tiny ViTs (width 64, 2 blocks, MLP 256, 10 classes, so r = 2).
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import tailtune
from tailtune.config import DataConfig, ModelConfig, PeftConfig, load_config, section
from tailtune.errors import CheckpointError, ConfigError
from tailtune.models.backbones.base import build_backbone
from tailtune.models.backbones.timm import TimmBackbone
from tailtune.models.model import TailModel
from tailtune.models.peft.base import PEFT_METHODS, apply_peft, check_peft
from tailtune.models.peft.masked import MaskedOptions
from tailtune.models.peft.ssf import SsfOptions
from tailtune.models.peft.targets import SelfAttention
from tailtune.models.peft.vpt import VptOptions
from tailtune.runtime.checkpoint import load_checkpoint, save_checkpoint
from tailtune.runtime.rundir import read_metrics

# proj_tuning needs CLIP's image projection (open_clip only) and changes the feature width: its
# own tests are tests/models/peft/test_proj_tuning.py.
CLIP_ONLY = {"proj_tuning"}
VIT_METHODS = [m for m in PEFT_METHODS.names() if "vit" in PEFT_METHODS.get(m).kinds and m not in CLIP_ONLY]
# prompts join attention from the start; SSF's scale and shift are drawn around (1, 0) as the reference's;
# CLIP-Adapter's bottleneck is randomly initialised as the paper's
NOT_IDENTITY = {"vpt_shallow", "vpt_deep", "ssf", "clip_adapter"}


def shared_copy(backbone):
    """A structural copy that shares every tensor (and the tokenizer): fast even for ViT-B/16.

    PEFT methods only add modules or set requires_grad, so the fixture resets requires_grad.
    """
    memo = {id(t): t for t in itertools.chain(backbone.parameters(), backbone.buffers())}
    memo[id(getattr(backbone, "tokenizer", None))] = getattr(backbone, "tokenizer", None)
    return copy.deepcopy(backbone, memo)


def n_trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------------ CLIP ViT-B/16: the table

B16_COUNTS = {  # (C = 100, C = 1000)
    "adaptformer": (101_436, 617_868),
    "adapter": (101_424, 617_856),
    "lora": (147_456, 1_179_648),
    "vpt_shallow": (7_680, 7_680),
    "vpt_deep": (92_160, 92_160),
    "ssf": (202_752, 202_752),
    "bitfit": (101_376, 101_376),
    "ln_tuning": (36_864, 36_864),
    "full": (85_054_464, 85_054_464),
    "masked": (84_996, 765_132),
    "adaptformer+ssf": (101_436 + 202_752, 617_868 + 202_752),
    "clip_adapter": (2 * 768 * 192, 2 * 768 * 192),  # on the 768 features before the projection
    "proj_tuning": (768 * 512, 768 * 512),
    "proj_tuning+clip_adapter": (768 * 512 + 2 * 512 * 128, 768 * 512 + 2 * 512 * 128),
}


@pytest.fixture(scope="module")
def b16_base():
    return build_backbone(ModelConfig(name="ViT-B-16", pretrained="none"))


@pytest.fixture
def b16(b16_base):
    yield shared_copy(b16_base)
    b16_base.requires_grad_(False)


@pytest.mark.parametrize("classes", [100, 1000])
@pytest.mark.parametrize("method", list(B16_COUNTS))
def test_parameter_counts_on_clip_vit_b16(b16, method, classes):
    apply_peft(b16, PeftConfig(method=method), classes)
    assert n_trainable(b16) == B16_COUNTS[method][classes == 1000]


def test_block_range_on_vit_b16(b16):
    apply_peft(b16, PeftConfig(method="adaptformer", blocks="last 4"), 100)
    assert n_trainable(b16) == 4 * 101_436 // 12
    tuned = {int(re.search(r"resblocks\.(\d+)\.", n).group(1)) for n, p in b16.named_parameters() if p.requires_grad}
    assert tuned == {8, 9, 10, 11}


# ------------------------------------------------------------------ tiny open_clip and timm ViTs

D, L, C, R = 64, 2, 10, 2  # width, blocks, classes, bottleneck 2^floor(log2(10 / 4))
NAMES = [f"class{i}" for i in range(C)]


def _masked_tiny() -> int:
    thousandths = max(1000 * C // (12 * L * D), 1)  # 6
    layers = [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D)]  # (out, in) of qkv, out, fc1, fc2
    return L * sum(out * (inp + 1) * thousandths // 1000 for out, inp in layers)


def _aft_tiny() -> int:
    ratio = C / (L * (12 * D + 9))  # LIFT+'s default for location=all (LIFT-plus trainer.py)
    tensors = [3 * D * D, 3 * D, D * D, D, 4 * D * D, 4 * D, 4 * D * D, D]  # weight, bias of qkv, out, fc1, fc2
    return L * sum(int(n * ratio) for n in tensors)


TINY_COUNTS = {
    "none": 0,
    "adaptformer": L * (2 * D + (D * R + R) + (R * D + D) + 1),
    "adapter": L * (2 * D + (D * R + R) + (R * D + D)),
    "lora": L * 2 * (D * R + R * D),
    "lora_mlp": L * (R * (D + 4 * D) + R * (4 * D + D)),
    "vpt_shallow": 10 * D,
    "vpt_deep": L * 10 * D,
    "ssf": L * 2 * (3 * D + D + 4 * D + D + 2 * D),
    "bitfit": L * (3 * D + D + 4 * D + D + 2 * D),
    "ln_tuning": L * 2 * 2 * D,
    "full": L * (3 * D * D + 3 * D + D * D + D + 4 * D * D + 4 * D + 4 * D * D + D + 4 * D),
    "masked": _masked_tiny(),
    "clip_adapter": 2 * D * (D // 4),
    "aft": _aft_tiny(),
}

BLOCK = r"^(clip\.visual\.transformer\.resblocks|net\.blocks)\.\d+\."  # image encoder blocks
# Which parameter names each method must make trainable (and nothing else).
INTENDED = {
    "none": lambda n: False,
    "full": lambda n: re.search(BLOCK, n) is not None,
    "bitfit": lambda n: re.search(BLOCK, n) is not None and n.endswith("bias"),
    "ln_tuning": lambda n: re.search(BLOCK + r"(ln_1|ln_2|norm1|norm2)\.(weight|bias)$", n) is not None,
    "adaptformer": lambda n: ".adapter." in n,
    "adapter": lambda n: ".adapter." in n,
    "lora": lambda n: re.search(r"\.attn\.qkv\.lora\.[qv]\.(down|up)\.weight$", n) is not None,
    "lora_mlp": lambda n: re.search(r"\.mlp\.(c_fc|c_proj|fc1|fc2)\.lora\.all\.(down|up)\.weight$", n) is not None,
    "vpt_shallow": lambda n: n.endswith(".vpt.tokens"),
    "vpt_deep": lambda n: n.endswith(".vpt.tokens"),
    "ssf": lambda n: n.endswith((".scale", ".shift")),
    "masked": lambda n: n.endswith((".weight_values", ".bias_values")),
    "clip_adapter": lambda n: re.search(r"^(clip\.visual|net)\.clip_adapter\.fc\.[02]\.weight$", n) is not None,
    "aft": lambda n: n.endswith((".weight_values", ".bias_values")),
}


def test_tables_cover_the_registry():
    assert set(TINY_COUNTS) == set(INTENDED) == set(VIT_METHODS)
    # the CNN-only methods have their own tests (test_peft_zoo: bn_tuning; tests/models/peft/test_ssf_pool.py)
    assert set(PEFT_METHODS.names()) == set(VIT_METHODS) | {"bn_tuning", "ssf_pool"} | CLIP_ONLY
    assert {m for m in VIT_METHODS if not PEFT_METHODS.get(m).identity_at_init} == NOT_IDENTITY


def tiny_timm_net():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                             depth=L, embed_dim=D, num_heads=2)


@pytest.fixture(scope="module")
def tiny_bases():
    torch.manual_seed(0)
    clip = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))
    net = tiny_timm_net()
    vit = TimmBackbone(ModelConfig(provider="timm", name="vit_tiny_patch16_224", pretrained="none"), model=net)
    vit.requires_grad_(False).eval()
    return {"open_clip": clip, "timm": vit}


def fresh(bases, family):
    """A copy of a tiny base backbone with its own encoder tensors (text tower and tokenizer shared)."""
    base = bases[family]
    own = {id(t) for t in itertools.chain(base.encoder.parameters(), base.encoder.buffers())}
    memo = {id(t): t for t in itertools.chain(base.parameters(), base.buffers()) if id(t) not in own}
    memo[id(getattr(base, "tokenizer", None))] = getattr(base, "tokenizer", None)
    return copy.deepcopy(base, memo)


FAMILIES = ["open_clip", "timm"]
IMAGES = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", VIT_METHODS)
def test_trainable_set_count_and_identity_at_init(tiny_bases, family, method):
    plain = fresh(tiny_bases, family)
    tuned = fresh(tiny_bases, family)
    torch.manual_seed(1)
    apply_peft(tuned, PeftConfig(method=method), C)
    names = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in tuned.named_parameters() if INTENDED[method](n)}
    assert n_trainable(tuned) == TINY_COUNTS[method]
    with torch.no_grad():
        same = torch.allclose(plain(IMAGES), tuned(IMAGES), atol=1e-5)
        assert same == (method not in NOT_IDENTITY)
        if names and method not in NOT_IDENTITY:  # the identity is not vacuous
            for p in tuned.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
            assert not torch.allclose(plain(IMAGES), tuned(IMAGES), atol=1e-4)


def _model(bases, family, method, seed=1):
    backbone = fresh(bases, family)
    torch.manual_seed(seed)
    apply_peft(backbone, PeftConfig(method=method), C)
    return TailModel(backbone, nn.Linear(D, C))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", VIT_METHODS)
def test_a_training_step_changes_only_the_trainable_tensors(tiny_bases, family, method):
    model = _model(tiny_bases, family, method)
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    F.cross_entropy(model(IMAGES), torch.arange(4)).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # all in the graph
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= trainable
    assert "head.weight" in changed
    if method != "none":
        assert any(not k.startswith("head.") for k in changed)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", VIT_METHODS)
def test_checkpoint_round_trip(tiny_bases, family, method, tmp_path):
    a = _model(tiny_bases, family, method, seed=1)
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    info = {"name": family}
    save_checkpoint(tmp_path / "c.safetensors", a.trainable_state_dict(), "peft: {}", info, NAMES)
    b = _model(tiny_bases, family, method, seed=2)  # other initial PEFT values
    load_checkpoint(tmp_path / "c.safetensors", b, info, NAMES)
    sa, sb = a.trainable_state_dict(), b.trainable_state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    a.eval()
    b.eval()
    with torch.no_grad():
        assert torch.equal(a(IMAGES), b(IMAGES))


def test_masked_checkpoints_carry_the_entries_they_trained(tiny_bases, tmp_path):
    """The mask is saved, not only re-drawn from the seed: a model that drew other entries takes the saved ones."""
    from tailtune.models.peft.masked import MaskedLinear

    def model():
        backbone = fresh(tiny_bases, "open_clip")
        apply_peft(backbone, section("peft", method="masked", masked=MaskedOptions(ratio=0.2, seed=3)), C)
        return TailModel(backbone, nn.Linear(D, C)).eval()

    a, b = model(), model()
    with torch.no_grad():
        for p in a.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
        for layer in (m for m in b.modules() if isinstance(m, MaskedLinear)):  # as if the generator drew otherwise
            layer.weight_index.copy_((layer.weight_index + 1) % layer.base.weight.numel())
    saved = a.trainable_state_dict()
    assert sum(k.endswith((".weight_index", ".bias_index")) for k in saved) == 2 * 4 * L
    save_checkpoint(tmp_path / "c.safetensors", saved, "peft: {}", {"name": "x"}, NAMES)
    load_checkpoint(tmp_path / "c.safetensors", b, {"name": "x"}, NAMES)
    with torch.no_grad():
        assert torch.equal(a(IMAGES), b(IMAGES))
    # A file written before the indices were saved still loads: the model keeps the ones its seed drew.
    old = {k: v for k, v in saved.items() if not k.endswith("_index")}
    save_checkpoint(tmp_path / "old.safetensors", old, "peft: {}", {"name": "x"}, NAMES)
    c = model()
    load_checkpoint(tmp_path / "old.safetensors", c, {"name": "x"}, NAMES)
    with torch.no_grad():
        assert torch.equal(a(IMAGES), c(IMAGES))
    del old[next(k for k in old if k.endswith("weight_values"))]  # but a missing parameter is still refused
    save_checkpoint(tmp_path / "bad.safetensors", old, "peft: {}", {"name": "x"}, NAMES)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "bad.safetensors", model(), {"name": "x"}, NAMES)


def test_bn_tuning_on_a_cnn_trains_exactly_the_batchnorm_affines():
    backbone = build_backbone(ModelConfig(provider="timm", name="tf_efficientnet_lite0", pretrained="none"))
    expected = {f"{n}.{k}" for n, m in backbone.named_modules() if isinstance(m, nn.BatchNorm2d) for k in ("weight", "bias")}
    apply_peft(backbone, PeftConfig(method="bn_tuning"), C)
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == expected


# ------------------------------------------------------------------ composition and block ranges

def test_composition_counts_add_up_and_order_does_not_matter(tiny_bases):
    a = _model(tiny_bases, "open_clip", "adaptformer+ssf+lora").backbone
    b = _model(tiny_bases, "open_clip", "lora+ssf+adaptformer").backbone
    assert n_trainable(a) == TINY_COUNTS["adaptformer"] + TINY_COUNTS["ssf"] + TINY_COUNTS["lora"]
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    with torch.no_grad():  # applied in the same order, so the same draws from the same seed
        assert torch.equal(a(IMAGES), b(IMAGES))
    plain = fresh(tiny_bases, "open_clip")
    c = _model(tiny_bases, "open_clip", "adaptformer+lora").backbone  # without SSF: the identity at init
    with torch.no_grad():
        assert torch.allclose(plain(IMAGES), c(IMAGES), atol=1e-5)


@pytest.mark.parametrize("spec,tuned", [("first 1", {0}), ("last 1", {1}), ("1:2", {1}), ([0, 1], {0}), ("all", {0, 1})])
@pytest.mark.parametrize("method", ["lora", "ssf", "masked", "adapter", "vpt_deep", "bitfit", "full"])
def test_block_ranges(tiny_bases, method, spec, tuned):
    backbone = fresh(tiny_bases, "timm")
    apply_peft(backbone, PeftConfig(method=method, blocks=spec), C)
    blocks = {int(re.search(r"blocks\.(\d+)\.", n).group(1)) for n, p in backbone.named_parameters() if p.requires_grad}
    assert blocks == tuned
    if method not in ("masked",):  # masked: floors per layer, so not exactly proportional
        assert n_trainable(backbone) == TINY_COUNTS[method] * len(tuned) // L


def test_a_block_range_beyond_the_depth_is_a_startup_error(tiny_bases):
    with pytest.raises(ConfigError, match="peft.blocks='last 3' needs 3 blocks.*has 2"):
        check_peft(tiny_bases["open_clip"], PeftConfig(method="lora", blocks="last 3"))


@pytest.mark.parametrize("override,match", [
    ("peft.blocks=6:12", "base-60"),  # YAML reads 6:12 as 372
    ("peft.blocks=last_0", "selects no block"),
    ("peft.blocks=middle", "not valid"),
    ("peft.blocks=[3,3]", "selects no block"),
    ("peft.vpt.position=start", "vpt.position"),
    ("peft.vpt.length=0", "vpt.length"),
    ("peft.ssf.parts=qkv+mlps", "ssf.parts='mlps'"),
    ("peft.masked.ratio=0", "masked.ratio"),
    ("peft.masked.ratio=1.5", "masked.ratio"),
    ("peft.vpt_length=5", r"'peft.vpt_length' in command-line overrides is now peft.vpt.length"),
    ("peft.ssf_parts=qkv", "is now peft.ssf.parts"),
    ("peft.mask_seed=1", "is now peft.masked.seed"),
    ("peft.vpt.lenght=5", "Did you mean peft.vpt.length"),
])
def test_bad_peft_options_fail_at_config_time(override, match):
    """Also the flat keys of before the options moved to their methods: refused, naming the new key."""
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_good_peft_options_parse():
    cfg = load_config(overrides=["peft.method=ssf+masked", "peft.blocks=[6,12]", "peft.ssf.parts=qkv+norm",
                                 "peft.masked.ratio=0.01"])
    assert list(cfg.peft.blocks) == [6, 12] and cfg.peft.ssf.parts == "qkv+norm" and cfg.peft.masked.ratio == 0.01


def test_conflicting_or_repeated_methods_are_refused(tiny_bases):
    with pytest.raises(ConfigError, match="vpt_shallow and vpt_deep"):
        check_peft(tiny_bases["timm"], PeftConfig(method="vpt_shallow+vpt_deep"))
    with pytest.raises(ConfigError, match="lora more than once"):
        check_peft(tiny_bases["timm"], PeftConfig(method="lora+lora"))


def test_ssf_parts_are_switchable(tiny_bases):
    backbone = fresh(tiny_bases, "open_clip")
    apply_peft(backbone, section("peft", method="ssf", ssf=SsfOptions(parts="qkv+norm")), C)
    assert n_trainable(backbone) == L * 2 * (3 * D + 2 * D)


def test_masked_ratio_option_and_seed(tiny_bases):
    a = fresh(tiny_bases, "timm")
    apply_peft(a, section("peft", method="masked", masked=MaskedOptions(ratio=0.5, seed=3)), C)
    layers = [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D)]
    assert n_trainable(a) == L * sum(out * (inp + 1) // 2 for out, inp in layers)
    b = fresh(tiny_bases, "timm")
    apply_peft(b, section("peft", method="masked", masked=MaskedOptions(ratio=0.5, seed=4)), C)
    index = {n: t for n, t in a.named_buffers() if n.endswith("weight_index")}
    other = dict(b.named_buffers())
    assert any(not torch.equal(t, other[n]) for n, t in index.items())


# ------------------------------------------------------------------ VPT token layout

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("position", ["end", "after_cls"])
@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep"])
def test_prompt_tokens_sit_where_asked_and_leave_before_pooling(tiny_bases, family, method, position):
    backbone = fresh(tiny_bases, family)
    apply_peft(backbone, section("peft", method=method, vpt=VptOptions(position=position, length=3)), C)
    blocks = [b for _, b in backbone.blocks()]
    seen = {}
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0]))
    last_out = {}
    blocks[-1].register_forward_hook(lambda m, args, out: last_out.__setitem__("x", out))
    with torch.no_grad():
        backbone(IMAGES)
    tokens = 1 + (32 // 8) ** 2  # class + patches
    at = slice(1, 4) if position == "after_cls" else slice(tokens, tokens + 3)
    for i, x in seen.items():
        assert x.shape == (4, tokens + 3, D)
        if i == 0 or method == "vpt_deep":
            assert torch.equal(x[:, at], blocks[i].vpt.tokens.expand(4, -1, -1))
    with torch.no_grad():
        raw = blocks[-1].forward(seen[len(blocks) - 1])  # .forward: without the hooks
    keep = [i for i in range(tokens + 3) if i not in range(tokens + 3)[at]]
    assert torch.equal(last_out["x"], raw[:, keep])  # exactly the prompts leave


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_updates_query_and_value_but_not_key(tiny_bases, family):
    backbone = fresh(tiny_bases, family)
    apply_peft(backbone, PeftConfig(method="lora"), C)
    qkv = backbone.blocks()[0][1].attn.qkv
    with torch.no_grad():
        for p in qkv.lora.parameters():
            p.normal_()
        x = torch.randn(2, 5, D)
        delta = qkv(x) - qkv.base(x)
        manual = {name: m.up.weight @ m.down.weight / R for name, m in qkv.lora.items()}
    assert torch.allclose(delta[..., :D], x @ manual["q"].T, atol=1e-5)
    assert torch.equal(delta[..., D:2 * D], torch.zeros(2, 5, D))
    assert torch.allclose(delta[..., 2 * D:], x @ manual["v"].T, atol=1e-5)


def test_a_copied_vpt_model_uses_its_own_prompts(tiny_bases):
    a = fresh(tiny_bases, "timm")
    apply_peft(a, PeftConfig(method="vpt_deep"), C)
    b = copy.deepcopy(a)
    with torch.no_grad():
        before = a(IMAGES)
        assert torch.equal(before, b(IMAGES))
        for p in b.parameters():
            if p.requires_grad:
                p.mul_(3.0)
        assert torch.equal(before, a(IMAGES)) and not torch.allclose(before, b(IMAGES))


# ------------------------------------------------------------------ open_clip attention made explicit

@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "float", "bool"])
def test_self_attention_equals_multihead_attention(batch_first, mask):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first)
    nn.init.normal_(mha.in_proj_bias)
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    attn_mask = None
    if mask == "float":
        attn_mask = torch.randn(5, 5)
    elif mask == "bool":
        attn_mask = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    expected = mha(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
    got, _ = SelfAttention(mha)(x, x, x, need_weights=False, attn_mask=attn_mask)
    assert torch.allclose(expected, got, atol=1e-5)
    assert SelfAttention(mha).qkv.weight is mha.in_proj_weight


# ------------------------------------------------------------------ start-up errors and the run's record

def test_vpt_on_a_cnn_fails_before_any_image_is_decoded(tiny_cfg, monkeypatch, tmp_path):
    import tailtune.data.validate as validate
    from datatrees import class_tree

    def no_decoding(*a, **k):
        raise AssertionError("images were decoded before the PEFT check")

    monkeypatch.setattr(validate, "decode_error", no_decoding)
    class_tree(tmp_path / "photos", [8, 8])
    cfg = tiny_cfg
    cfg.data = DataConfig(name="folder", root=str(tmp_path / "photos"), num_workers=0)
    cfg.model = ModelConfig(provider="timm", name="tf_efficientnet_lite0", pretrained="none")
    cfg.head.init = "class_mean"
    cfg.peft = PeftConfig(method="vpt_deep")
    with pytest.raises(ConfigError, match="vpt_deep.*vit backbones.*is a cnn"):
        tailtune.build(cfg)
    cfg.peft = PeftConfig(method="bn_tuning", blocks="last 2")
    with pytest.raises(ConfigError, match="peft.blocks='last 2'.*CNN"):
        tailtune.build(cfg)


@pytest.mark.slow
def test_train_records_the_masked_parameter_count(tiny_overrides):
    cfg = load_config("lift", overrides=[*tiny_overrides, "peft.method=masked", "eval.tte=none"])
    metrics = tailtune.fit(cfg)
    # 6 classes, 2 blocks, width 64: ratio floor(1000 * 6 / 1536) / 1000 = 0.003
    layers = [(3 * D, D), (D, D), (4 * D, D), (D, 4 * D)]
    expected = L * sum(out * (inp + 1) * 3 // 1000 for out, inp in layers)
    visual = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none")).clip.visual
    total = sum(p.numel() for p in visual.parameters())
    assert metrics["params"]["trainable_backbone"] == expected == 294
    assert metrics["params"]["backbone_total"] == total
    assert metrics["params"]["trainable_backbone_share"] == pytest.approx(expected / total)
    assert read_metrics(next((cfg_dir := Path(cfg.output_dir)).iterdir()))["params"] == metrics["params"]
    assert f"{expected:,} trainable backbone parameters" in (next(cfg_dir.iterdir()) / "log.txt").read_text()
