"""tailtune.load / predict, and export -> load -> predict, on a tiny LoRA + AdaptFormer run."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tailtune
from tailtune.cli import app as cli
from tailtune.config import from_yaml_text, load_config
from tailtune.data.sources.base import build_data
from tailtune.errors import CheckpointError, ConfigError, DataError
from tailtune.inference.export import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    _align_attention,
    build_without_data,
    export_run,
)
from tailtune.models.peft.lora import merge_lora
from tailtune.report.record import load_predictions
from tailtune.runtime.rundir import PREDICTIONS

CLASSES = [f"class {k}" for k in range(6)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run whose LoRA (merged on export) and AdaptFormer (kept) both trained."""
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("runs")
    # fp32: merged and unmerged LoRA then agree to ~1e-6 (bf16 would blur that comparison).
    cfg = load_config("lift", overrides=[*TINY_CLIP, "peft.method=lora+adaptformer", "peft.lr=0.5",
                                         "train.precision=fp32", f"output_dir={out}", "name=r"])
    tailtune.fit(cfg)
    return out / "r"


@pytest.fixture(scope="module")
def test_images(run):
    """The run's test images, as PIL images (the synthetic source regenerates them)."""
    data = build_data(from_yaml_text((run / "config.yaml").read_text()).data)
    from torchvision.transforms.functional import to_pil_image

    return [to_pil_image(data.test[i][0]) for i in range(len(data.test))]


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model"
    return out, export_run(run, out, onnx=False)


def test_predict_returns_the_trained_classes(run, test_images):
    predictor = tailtune.load(run, device="cpu")
    assert predictor.classnames == CLASSES and predictor.tte == "fivecrop"
    preds = predictor.predict(test_images, top_k=3)
    assert len(preds) == len(test_images)
    for p in preds:
        assert len(p.names) == 3 and set(p.names) <= set(CLASSES)
        assert p.names == [CLASSES[c] for c in p.classes] and p.probs == sorted(p.probs, reverse=True)
    # The same classes the run's own evaluation gave these test images.
    _, saved = load_predictions(run / PREDICTIONS)
    assert [p.classes[0] for p in preds] == saved["fivecrop"].tolist()
    full = predictor.predict(test_images[:2], top_k=10)  # capped at the class count
    assert [len(p.classes) for p in full] == [6, 6] and sum(full[0].probs) == pytest.approx(1.0, abs=1e-5)
    single = predictor.predict(test_images[:4], top_k=1, tte="none")
    assert [p.classes[0] for p in single] == saved["none"][:4].tolist()
    from torchvision.transforms.functional import (
        pil_to_tensor,  # (3, H, W) uint8 tensors are images too
    )

    as_tensors = predictor.predict([pil_to_tensor(img) for img in test_images[:4]], top_k=1, tte="none")
    assert [p.classes[0] for p in as_tensors] == saved["none"][:4].tolist()


def test_predict_files_folders_and_cli_json(run, test_images, tmp_path, capsys):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    picks = [0, 9, 23]
    for i in picks:  # PNG is lossless: the files hold exactly the test images' pixels
        test_images[i].save(folder / ("sub" if i == 23 else "") / f"img{i:02d}.png")
    (folder / "notes.txt").write_text("not an image")
    assert cli.main(["predict", str(run), str(folder), "--json", "-k", "2", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    _, saved = load_predictions(run / PREDICTIONS)
    assert [o["image"].rsplit("/", 1)[1] for o in out] == ["img00.png", "img09.png", "img23.png"]
    assert [o["top"][0]["class"] for o in out] == saved["fivecrop"][picks].tolist()
    assert all(o["top"][0]["name"] == CLASSES[o["top"][0]["class"]] and len(o["top"]) == 2 for o in out)
    assert cli.main(["predict", str(run), str(folder / "img00.png"), "-q", "--device", "cpu"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].endswith("img00.png") and text[1].strip().startswith("1.") and len(text) == 6


def test_predict_input_errors(run, tmp_path):
    predictor = tailtune.load(run, device="cpu")
    with pytest.raises(DataError, match="neither an image file nor a folder"):
        predictor.predict(tmp_path / "missing.png")
    with pytest.raises(DataError, match="holds no image files"):
        predictor.predict(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="image file .*bad.png is corrupt or not an image"):
        predictor.predict(tmp_path / "bad.png")
    with pytest.raises(ConfigError, match="top_k=0"):
        predictor.predict(tmp_path / "bad.png", top_k=0)
    with pytest.raises(ConfigError, match="neither a run folder"):
        tailtune.load(tmp_path)


def test_export_load_predict_gives_the_runs_outputs(run, exported, test_images, tmp_path):
    out, summary = exported
    assert sorted(p.name for p in out.iterdir()) == [EXPORT_CONFIG, EXPORT_WEIGHTS]
    assert summary["merged"] == ["lora"]
    meta = json.loads((out / EXPORT_CONFIG).read_text())
    assert meta["classnames"] == CLASSES and meta["config"]["peft"]["method"] == "adaptformer"
    assert meta["config"]["model"]["pretrained"] == "none"
    tensors = load_file(str(out / EXPORT_WEIGHTS))
    assert not any("lora" in k for k in tensors) and any("adapter" in k for k in tensors)
    assert not any("transformer.resblocks" in k and "visual" not in k for k in tensors)  # no text tower
    # Loaded from a copy, with the run folder gone: nothing but the export is read.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    moved = run.with_name("r_moved")
    run.rename(moved)
    try:
        from_export = tailtune.load(copy, device="cpu")
    finally:
        moved.rename(run)
    from_run = tailtune.load(run, device="cpu")
    a, b = from_run.logits(test_images), from_export.logits(test_images)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    _, saved = load_predictions(run / PREDICTIONS)
    assert [p.classes[0] for p in from_export.predict(test_images)] == saved["fivecrop"].tolist()
    assert from_export.classnames == CLASSES and from_export.tte == "fivecrop"


def test_lora_merge_is_exact_and_removes_the_modules(run):
    from tailtune.models.peft.lora import LoRALinear

    cfg = load_config("lift", overrides=[*_tiny(), "peft.method=lora"])
    model = build_without_data(cfg, CLASSES).model.float().eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # a non-zero update, else merging would be trivially exact
        if isinstance(m, LoRALinear):
            for lr in m.lora.values():
                lr.up.weight.data = torch.randn(lr.up.weight.shape, generator=g) * 0.1
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        before = model(x)
        qkv = model.backbone.encoder.transformer.resblocks[0].attn.qkv
        lora = qkv.lora
        expected = qkv.base.weight.clone()
        d = expected.shape[1]
        expected[:d] += lora["q"].up.weight @ lora["q"].down.weight / lora["q"].down.weight.shape[0]
        expected[2 * d:] += lora["v"].up.weight @ lora["v"].down.weight / lora["v"].down.weight.shape[0]
    assert merge_lora(model) == 2
    plain = build_without_data(load_config("lift", overrides=[*_tiny(), "peft.method=none"]), CLASSES).model
    _align_attention(model, plain)
    attn = model.backbone.encoder.transformer.resblocks[0].attn
    assert isinstance(attn, torch.nn.MultiheadAttention)
    assert torch.equal(attn.in_proj_weight, expected)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5, rtol=1e-5)


def _tiny():
    from conftest import TINY_CLIP

    return TINY_CLIP


def test_export_without_merge_keeps_lora(run, tmp_path, test_images):
    summary = export_run(run, tmp_path / "nomerge", merge=False, onnx=False)
    assert summary["merged"] == []
    meta = json.loads((tmp_path / "nomerge" / EXPORT_CONFIG).read_text())
    assert meta["config"]["peft"]["method"] == "lora+adaptformer"
    a = tailtune.load(tmp_path / "nomerge", device="cpu").logits(test_images[:4], tte="none")
    b = tailtune.load(run, device="cpu").logits(test_images[:4], tte="none")
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_export_loading_is_strict(exported, tmp_path):
    out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    meta = json.loads((bad / EXPORT_CONFIG).read_text())
    (bad / EXPORT_CONFIG).write_text(json.dumps({**meta, "extra": 1}))
    with pytest.raises(CheckpointError, match="unknown \\['extra'\\]"):
        tailtune.load(bad, device="cpu")
    tensors = load_file(str(out / EXPORT_WEIGHTS))
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(bad / EXPORT_WEIGHTS))
    (bad / EXPORT_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="checksum differs"):
        tailtune.load(bad, device="cpu")
    from tailtune.inference.export import _sha256

    (bad / EXPORT_CONFIG).write_text(json.dumps({**meta, "weights_sha256": _sha256(bad / EXPORT_WEIGHTS)}))
    with pytest.raises(CheckpointError, match=f"missing \\['{dropped}'\\]"):
        tailtune.load(bad, device="cpu")
    (bad / EXPORT_CONFIG).write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(CheckpointError, match="not a tailtune export"):
        tailtune.load(bad, device="cpu")


def test_export_refuses_a_non_empty_folder(run, exported):
    out, _ = exported
    with pytest.raises(ConfigError, match="not empty"):
        export_run(run, out, onnx=False)


def test_onnx_export_matches_pytorch(run, tmp_path, test_images, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "onnx"
    assert cli.main(["export", str(run), str(out), "--onnx"]) == 0
    printed = capsys.readouterr().out
    assert "merged into the weights: lora" in printed and f"ONNX: {out / 'model.onnx'}" in printed
    from tailtune.data.transforms import eval_transform

    predictor = tailtune.load(out, device="cpu")
    x = torch.stack([eval_transform(predictor.exp.backbone.preprocess, "none")(im) for im in test_images[:5]])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        want = predictor.model.float()(x).numpy()
    assert np.abs(got - want).max() < 1e-3


def _by_hand(path, spec: dict, policy: str):
    """The model's input for one image file, from config.json's "preprocessing" alone (PIL + NumPy:
    what a user feeding model.onnx writes). Returns (views, 3, crop, crop) float32."""
    from PIL import Image

    p = spec["policies"][policy]
    img = Image.open(path).convert("RGB")
    w, h = img.size
    short, long = min(w, h), max(w, h)
    size = p["resize_short_side"]
    new = (size, int(size * long / short)) if w <= h else (int(size * long / short), size)
    if new != (w, h):
        img = img.resize(new, getattr(Image.Resampling, spec["interpolation"].upper()))
    W, H = img.size
    c = p["crop"]
    at = {"center": (int(round((H - c) / 2)), int(round((W - c) / 2))), "top_left": (0, 0),
          "top_right": (0, W - c), "bottom_left": (H - c, 0), "bottom_right": (H - c, W - c)}
    images = [img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)] if p["flipped_too"] else [img]
    views = []
    for im in images:
        for name in p["crops"]:
            top, left = at[name]
            x = np.asarray(im.crop((left, top, left + c, top + c)), dtype=np.float32) / 255.0
            views.append(((x - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32))
                         .transpose(2, 0, 1))
    assert len(views) == p["views"] and spec["channel_order"] == "RGB" and spec["layout"] == "NCHW"
    return np.stack(views).astype(np.float32)


@pytest.mark.parametrize("policy", ["default", "none", "tencrop"])
def test_onnx_from_config_json_alone_matches_tailtune_predict(run, tmp_path_factory, policy):
    """config.json's preprocessing, followed by hand with PIL + NumPy + onnxruntime, gives the
    probabilities and the top-1 of `tailtune predict` on the export."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from PIL import Image

    out = tmp_path_factory.getbasetemp() / "onnx_parity"
    if not (out / "model.onnx").exists():
        export_run(run, out, onnx=True)
    spec = json.loads((out / EXPORT_CONFIG).read_text())["preprocessing"]
    assert spec["format"] == "tailtune-preprocessing-1" and spec["default"] == "fivecrop"
    assert spec["policies"]["fivecrop"]["resize_short_side"] == 32 + 24  # resolution + expand
    assert spec["policies"]["none"]["resize_short_side"] == int(32 * 8 / 7)
    policy = spec["default"] if policy == "default" else policy
    folder = tmp_path_factory.mktemp("parity")
    files = []
    for i, size in enumerate([(50, 40), (29, 37), (64, 64), (56, 90)]):  # landscape, portrait, square
        rng = np.random.default_rng(i)
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)  # smooth pictures, not noise
        img = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
        files.append(folder / f"p{i}.png")
        img.save(files[-1])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = np.stack([session.run(["logits"], {"images": _by_hand(f, spec, policy)})[0].mean(0) for f in files])
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    predictor = tailtune.load(out, device="cpu")
    want = predictor.logits(files, tte=policy).numpy()
    assert np.abs(logits - want).max() < 1e-3 * max(1.0, np.abs(want).max())
    preds = predictor.predict(files, top_k=len(CLASSES), tte=policy)
    for p, row in zip(preds, probs):
        assert p.classes[0] == int(row.argmax())
        assert np.allclose([row[c] for c in p.classes], p.probs, atol=1e-4)
