"""The methods that apply to ResNets (CLIP's through open_clip, timm's), ssf_pool's placement, and the
refusal of the methods that need transformer blocks.

Facts from the references: LIFT's ssf_attn is one SSF(feat_dim) on the output of a CLIP ResNet's
attention pooling, and its bias_tuning / bn_tuning / full_tuning take every bias / BatchNorm /
parameter of the image tower (LIFT models/peft_rn.py:RN_Tuner, Peft_RN.forward); LIFT+'s v.ssf on a
ResNet is one SSF(embed_dim) after the global pooling (LIFT-plus models/models.py:PEFT_RN).
"""

import copy
import warnings

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import tailtune
from tailtune.config import ModelConfig, PeftConfig, load_config
from tailtune.errors import ConfigError
from tailtune.inference.export import export_run
from tailtune.models.backbones.base import build_backbone
from tailtune.models.peft.base import PEFT_METHODS, apply_peft, methods_for, peft_off
from tailtune.models.peft.ssf_pool import ChannelScaleShift
from tailtune.runs.run import init_head
from tailtune.runtime.rundir import CHECKPOINT

CLIP_RN = ["model.provider=open_clip", "model.name=TT-Tiny-RN", "model.pretrained=none"]
TIMM_RN = ["model.provider=timm", "model.name=test_resnet", "model.pretrained=none", "model.resolution=32",
           "head.init=class_mean"]
CNN_METHODS = ["ssf_pool", "bitfit", "bn_tuning", "full", "bitfit+ssf_pool"]
FAST = ["data.synthetic.num_classes=4", "data.synthetic.train_per_class=8", "data.synthetic.test_per_class=2",
        "train.batch_size=8", "eval.tte=none", "eval.gap_per_class=0", "eval.report=false",
        "train.precision=fp32", "peft.lr=0.5"]


def clip_rn():
    return build_backbone(ModelConfig(provider="open_clip", name="TT-Tiny-RN", pretrained="none"))


def trainable(backbone) -> set[str]:
    return {n for n, p in backbone.named_parameters() if p.requires_grad}


def test_ssf_pool_scales_and_shifts_the_pooled_features_only():
    b = clip_rn()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = b(x)
    torch.manual_seed(0)
    apply_peft(b, PeftConfig(method="ssf_pool"), 10)
    pool = b.clip.visual.attnpool
    assert isinstance(pool, ChannelScaleShift)
    assert trainable(b) == {"clip.visual.attnpool.scale", "clip.visual.attnpool.shift"}
    assert pool.scale.shape == pool.shift.shape == (b.feature_dim,)  # RN50: 2 x 1024
    torch.manual_seed(0)  # scale drawn first, N(1, 0.02), then shift N(0, 0.02) (LIFT models/peft_modules.py:SSF)
    assert torch.equal(pool.scale, torch.empty(16).normal_(1.0, 0.02))
    assert torch.equal(pool.shift, torch.empty(16).normal_(0.0, 0.02))
    with torch.no_grad():
        assert torch.allclose(b(x), before * pool.scale + pool.shift, atol=1e-6)
        with peft_off(b):
            assert torch.equal(b(x), before)


def test_ssf_pool_on_a_timm_resnet_wraps_global_pool():
    b = build_backbone(ModelConfig(provider="timm", name="test_resnet", pretrained="none", resolution=32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = b(x)
    apply_peft(b, PeftConfig(method="ssf_pool"), 10)
    assert trainable(b) == {"net.global_pool.scale", "net.global_pool.shift"}
    pool = b.net.global_pool
    with torch.no_grad():
        assert torch.allclose(b(x), before * pool.scale + pool.shift, atol=1e-6)


def test_bitfit_bn_tuning_and_full_take_the_whole_image_tower_as_lift_does():
    b = clip_rn()
    visual = b.clip.visual
    apply_peft(b, PeftConfig(method="bitfit"), 10)  # BatchNorm biases and the attention pooling's biases
    assert trainable(b) == {f"clip.visual.{n}" for n, _ in visual.named_parameters() if n.endswith("bias")}
    assert "clip.visual.attnpool.c_proj.bias" in trainable(b) and "clip.visual.bn1.bias" in trainable(b)
    b = clip_rn()
    apply_peft(b, PeftConfig(method="bn_tuning"), 10)
    assert trainable(b) == {f"clip.visual.{n}.{k}" for n, m in b.clip.visual.named_modules()
                            if isinstance(m, nn.BatchNorm2d) for k in ("weight", "bias")}
    b = clip_rn()
    apply_peft(b, PeftConfig(method="full"), 10)
    assert trainable(b) == {f"clip.visual.{n}" for n, _ in b.clip.visual.named_parameters()}
    assert not any(n.startswith("clip.transformer") for n in trainable(b))  # the text tower stays frozen


def test_the_methods_that_apply_to_a_cnn_are_declared():
    assert set(methods_for("cnn")) >= {"ssf_pool", "bitfit", "bn_tuning", "full", "none"}
    assert "ssf_pool" not in methods_for("vit") and PEFT_METHODS.get("ssf_pool").kinds == ("cnn",)


@pytest.mark.parametrize("method", [m for m in PEFT_METHODS.names() if "cnn" not in PEFT_METHODS.get(m).kinds])
def test_methods_needing_transformer_blocks_are_refused_on_a_clip_resnet(method):
    b = clip_rn()
    with pytest.raises(ConfigError) as e:
        apply_peft(b, PeftConfig(method=method), 10)
    msg = str(e.value)
    assert f"peft.method={method!r}" in msg and "open_clip model 'TT-Tiny-RN' is a cnn" in msg
    assert all(m in msg for m in ("ssf_pool", "bitfit", "bn_tuning", "full"))
    assert trainable(b) == set()


def test_ssf_pool_is_refused_on_a_vit():
    vit = build_backbone(ModelConfig(provider="open_clip", name="TT-Tiny-ViT", pretrained="none"))
    with pytest.raises(ConfigError, match="ssf_pool.*cnn backbones.*'TT-Tiny-ViT' is a vit.*adaptformer"):
        apply_peft(vit, PeftConfig(method="ssf_pool"), 10)


def test_the_bottleneck_rule_is_refused_without_blocks():
    from tailtune.models.peft.base import resolve_r

    with pytest.raises(ConfigError, match="peft.r: .*needs L transformer blocks.*'TT-Tiny-RN' has none"):
        resolve_r(clip_rn(), PeftConfig(), 100)
    assert resolve_r(clip_rn(), PeftConfig(r=8), 100) == 8


def _fit(tmp_path, overrides):
    from conftest import TINY_CLIP

    cfg = load_config("lift", overrides=[*TINY_CLIP, *FAST, f"output_dir={tmp_path}", *overrides])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny fixtures
        tailtune.fit(cfg, tmp_path / "run")
    return cfg, tmp_path / "run"


@pytest.mark.parametrize("backbone", ["clip_rn", "timm_rn"])
@pytest.mark.parametrize("method", CNN_METHODS)
def test_each_cnn_method_trains_saves_what_trained_reloads_and_exports(tmp_path, backbone, method):
    model = CLIP_RN if backbone == "clip_rn" else TIMM_RN
    cfg, run = _fit(tmp_path, [*model, f"peft.method={method}"])
    saved = load_file(run / CHECKPOINT)
    exp = tailtune.load_run(run)  # strict
    fresh = tailtune.build(cfg).model
    want = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert set(saved) == set(exp.model.trainable_state_dict()) and want <= set(saved)
    # only what trained: the parameters, and under full (peft.bn_mode=auto) the BatchNorm statistics
    extra = {k.rpartition(".")[2] for k in set(saved) - want}
    assert extra <= ({"running_mean", "running_var", "num_batches_tracked"} if method == "full" else set())
    fresh_state = fresh.state_dict()
    changed = {k for k, v in saved.items() if not torch.equal(v, fresh_state[k])}
    assert "head.weight" in changed and any(not k.startswith("head.") for k in changed)
    summary = export_run(run, tmp_path / "export", onnx=backbone == "clip_rn" and method == "bitfit+ssf_pool")
    assert summary["max_logit_difference"] < 1e-4
    if summary["onnx"] is not None:
        assert summary["onnx"]["written"], summary["onnx"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(tailtune.load(tmp_path / "export", device="cpu").model.float()(x),
                              exp.model.float()(x), atol=1e-4)


def test_a_clip_resnet_head_starts_at_its_class_text_features(tmp_path):
    cfg = load_config("lift", overrides=[*CLIP_RN, "data.name=synthetic", "data.synthetic.num_classes=3",
                                         "peft.method=ssf_pool", "train.device=cpu", f"output_dir={tmp_path}"])
    assert cfg.head.init == "text"
    exp = tailtune.build(cfg)
    init_head(exp)
    text = exp.backbone.text_embeddings([cfg.head.prompt.format(c) for c in exp.data.classnames])
    assert torch.allclose(exp.model.head.weight.float(), text, atol=1e-5)  # no projection to undo on a ResNet


def test_trainable_counts_on_clip_rn50():
    """Counted on open_clip's RN50 architecture (random weights): LIFT's RN_Tuner takes the same tensors
    (every bias / BatchNorm of the image tower, one SSF of the 1024-d output), which it prints as its
    "Tuned params"; no table of them is published to compare with."""
    base = build_backbone(ModelConfig(provider="open_clip", name="RN50", pretrained="none"))
    counts = {}
    for method in ("ssf_pool", "bitfit", "bitfit+ssf_pool", "bn_tuning"):
        b = copy.deepcopy(base)
        apply_peft(b, PeftConfig(method=method), 1000)
        counts[method] = sum(p.numel() for p in b.parameters() if p.requires_grad)
    assert counts == {"ssf_pool": 2_048, "bitfit": 33_792, "bitfit+ssf_pool": 35_840, "bn_tuning": 53_248}
