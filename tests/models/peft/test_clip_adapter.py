"""CLIP-Adapter (models/peft/clip_adapter.py): the paper's formula on the output features, its
options, composition, and a tiny run through checkpoint, load, export (kept, not merged) and ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import tailtune
from tailtune.config import ModelConfig, PeftConfig, load_config, section
from tailtune.errors import ConfigError
from tailtune.models.backbones.base import build_backbone
from tailtune.models.model import TailModel
from tailtune.models.peft.base import apply_peft, check_peft, peft_off
from tailtune.models.peft.clip_adapter import ClipAdapterOptions
from tailtune.training.feature_cache import cache_point

D = 64  # TT-Tiny-ViT's width: the features before the projection
IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny(provider: str = "open_clip"):
    torch.manual_seed(0)
    if provider == "timm":
        return build_backbone(ModelConfig(provider="timm", name="vit_tiny_patch16_224", pretrained="none",
                                          resolution=32))
    return build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))


def adapted(opts: ClipAdapterOptions | None = None, method: str = "clip_adapter", provider: str = "open_clip"):
    backbone = tiny(provider)
    plain = backbone(IMAGES).detach()
    apply_peft(backbone, section("peft", method=method, clip_adapter=opts or ClipAdapterOptions()), 10)
    return backbone, plain


@pytest.mark.parametrize("provider", ["open_clip", "timm"])
def test_the_papers_residual_bottleneck_on_the_features(provider):
    """ratio * ReLU(W2 ReLU(W1 f)) + (1 - ratio) * f, no biases, width // 4 (gaopengcuhk/CLIP-Adapter)."""
    backbone, f = adapted(provider=provider)
    fc = backbone.encoder.clip_adapter.fc
    w1, w2 = fc[0].weight, fc[2].weight
    assert w1.shape == (backbone.feature_dim // 4, backbone.feature_dim) and fc[0].bias is None and fc[2].bias is None
    with torch.no_grad():
        want = 0.2 * F.relu(F.relu(f @ w1.t()) @ w2.t()) + 0.8 * f
        assert torch.allclose(backbone(IMAGES), want, atol=1e-5)
        assert not torch.allclose(backbone(IMAGES), f, atol=1e-4)
        with peft_off(backbone):  # the frozen features, for the head's initialisation
            assert torch.equal(backbone(IMAGES), f)
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in backbone.encoder.named_parameters(prefix=_encoder_name(backbone))
                         if ".clip_adapter." in n}


def _encoder_name(backbone) -> str:
    return next(n for n, m in backbone.named_modules() if m is backbone.encoder)


def test_options_set_the_width_and_the_ratio():
    backbone, f = adapted(ClipAdapterOptions(reduction=8, ratio=0.5))
    fc = backbone.encoder.clip_adapter.fc
    assert fc[0].out_features == D // 8
    with torch.no_grad():
        want = 0.5 * fc(f) + 0.5 * f
        assert torch.allclose(backbone(IMAGES), want, atol=1e-5)


@pytest.mark.parametrize("override,match", [
    ("peft.clip_adapter.ratio=0", r"peft.clip_adapter.ratio=0.* \(0, 1\]"),
    ("peft.clip_adapter.ratio=1.5", r"peft.clip_adapter.ratio=1.5"),
    ("peft.clip_adapter.reduction=0", r"peft.clip_adapter.reduction=0 must be > 0"),
    ("peft.clip_adapter.reducton=2", "Did you mean peft.clip_adapter.reduction"),
])
def test_bad_options_fail_at_config_time(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_a_reduction_wider_than_the_features_is_a_startup_error():
    cfg = section("peft", method="clip_adapter", clip_adapter=ClipAdapterOptions(reduction=D + 1))
    with pytest.raises(ConfigError, match="peft.clip_adapter.reduction=65 leaves no hidden unit.*64 features"):
        check_peft(tiny(), cfg)


def test_it_composes_with_block_methods_and_applies_to_cnns():
    backbone, _ = adapted(method="adaptformer+clip_adapter")
    names = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert any(".clip_adapter." in n for n in names) and any(".mlp.adapter." in n for n in names)
    other, _ = adapted(method="clip_adapter+adaptformer")  # stage order: the same model whatever the order
    with torch.no_grad():
        assert torch.equal(backbone(IMAGES), other(IMAGES))
    cnn = build_backbone(ModelConfig(provider="timm", name="tf_efficientnet_lite0", pretrained="none"))
    apply_peft(cnn, PeftConfig(method="clip_adapter"), 10)
    assert sum(p.numel() for p in cnn.parameters() if p.requires_grad) == 2 * 1280 * 320


def test_the_feature_cache_never_cuts_past_it():
    """The cache cuts the encoder itself, which would skip the hook: a trained CLIP-Adapter runs uncached."""
    backbone, _ = adapted()
    point = cache_point(TailModel(backbone, torch.nn.Linear(D, 10)))
    assert point.split is None and "clip_adapter" in point.reason


# ------------------------------------------------------------------ a tiny run, end to end

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """proj_tuning + clip_adapter + lora: LoRA merges on export, the adapter and the projection are kept."""
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config("lift", overrides=[*TINY_CLIP, "peft.method=proj_tuning+clip_adapter+lora", "peft.lr=0.5",
                                         "train.precision=fp32", "eval.tte=none", f"output_dir={out}", "name=r"])
    metrics = tailtune.fit(cfg)
    return out / "r", cfg, metrics


def test_the_run_saves_only_what_trained_and_reloads_strictly(run):
    folder, cfg, metrics = run
    saved = load_file(str(folder / "checkpoint.safetensors"))
    backbone = {k for k in saved if not k.startswith("head.")}
    assert "backbone.clip.visual.proj" in backbone
    assert {k for k in backbone if ".clip_adapter." in k} == {f"backbone.clip.visual.clip_adapter.fc.{i}.weight"
                                                              for i in (0, 2)}
    assert all(".lora." in k for k in backbone - {"backbone.clip.visual.proj"} if ".clip_adapter." not in k)
    assert saved["head.weight"].shape[1] == 32  # the classifier reads the projected (joint-space) features
    expected = 64 * 32 + 2 * 32 * 8 + 2 * 2 * (64 + 64)  # proj + adapter + LoRA (2 blocks, q and v, r = 1 for 6 classes)
    assert metrics["params"]["trainable_backbone"] == expected
    assert sum(v.numel() for k, v in saved.items() if not k.startswith("head.")) == expected
    predictor = tailtune.load(folder, device="cpu")  # strict load of the checkpoint
    with torch.no_grad():
        assert predictor.model.float()(torch.zeros(1, 3, 32, 32)).shape == (1, 6)


def test_export_keeps_the_adapter_and_the_projection_and_onnx_matches(run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tailtune.inference.export import EXPORT_CONFIG, EXPORT_WEIGHTS, export_run

    folder, _, _ = run
    out = tmp_path / "export"
    summary = export_run(folder, out, onnx=True)
    assert summary["merged"] == ["lora"] and summary["onnx"]["written"]
    meta = json.loads((out / EXPORT_CONFIG).read_text())
    assert meta["config"]["peft"]["method"] == "proj_tuning+clip_adapter"
    tensors = load_file(str(out / EXPORT_WEIGHTS))
    assert "backbone.clip.visual.proj" in tensors and not any(".lora." in k for k in tensors)
    assert any(".clip_adapter." in k for k in tensors)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    from_run = tailtune.load(folder, device="cpu").model.float().eval()
    from_export = tailtune.load(out, device="cpu").model.float().eval()
    with torch.no_grad():
        want = from_run(x)
        assert torch.allclose(from_export(x), want, atol=1e-4)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.numpy()})[0]
    assert np.abs(got - want.numpy()).max() < 1e-3


def test_dry_run_counts_the_adapter(tiny_overrides):
    from tailtune.runs.estimate import dry_run

    cfg = load_config("lift", overrides=[*tiny_overrides, "peft.method=clip_adapter", "train.precision=fp32"])
    result = dry_run(cfg, timed_steps=1)
    assert result.summary["trainable_backbone"] == 2 * D * (D // 4)
    assert result.summary["feature_cache"] is False
    assert any(f"{2 * D * (D // 4):,} backbone" in line for line in result.lines)
