"""Decoupled baselines (runs/decoupled.py): cRT and LWS on a finished run's frozen trained backbone."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import tailtune
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.errors import ConfigError
from tailtune.inference.export import export_run
from tailtune.models.heads import CosineClassifier
from tailtune.report.record import load_predictions
from tailtune.runs import run as run_module
from tailtune.runs.decoupled import decoupled_config
from tailtune.training.feature_cache import CachedViews, ViewPlan
from tailtune.training.trainer import Trainer


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished run whose AdaptFormer modules and head trained (CE, instance sampling: biased to the head)."""
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config("lift", overrides=[*TINY_CLIP, "train.precision=fp32", "eval.tte=none", "loss.name=ce",
                                         "train.epochs=2", "peft.lr=0.5", f"output_dir={out}", "name=src"])
    tailtune.fit(cfg)
    return out / "src"


def _sha(path):
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["sha256"]


def _decoupled(method, source, tmp_path, *extra):
    return decoupled_config(method, source, overrides=[f"output_dir={tmp_path}", f"name={method}", "train.epochs=40",
                                                       "train.batch_size=16", "train.precision=fp32", "quiet=true", *extra])


def test_crt_trains_the_classifier_alone_on_cached_features(source, tmp_path, monkeypatch):
    forwards = []
    real_train = run_module._train

    def counting_train(trainer, selector, run):  # the epochs: after the cache is built
        hook = trainer.model.backbone.register_forward_hook(lambda *a: forwards.append(1))
        try:
            return real_train(trainer, selector, run)
        finally:
            hook.remove()

    monkeypatch.setattr(run_module, "_train", counting_train)
    cfg = _decoupled("crt", source, tmp_path, "train.lr=0.05", f"train.cache_dir={tmp_path / 'cache'}")
    assert (cfg.train.decoupled, cfg.train.sampler, cfg.loss.name) == ("crt", "class_balanced", "ce")
    saved = tailtune.config.from_yaml_text((source / "config.yaml").read_text())
    assert (cfg.model, cfg.peft, cfg.head, cfg.eval) == (saved.model, saved.peft, saved.head, saved.eval)
    metrics = tailtune.fit(cfg)
    run = tmp_path / "crt"
    assert forwards == []  # 40 epochs and not one backbone forward: the classifier trains on the cache
    assert metrics["history"][-1]["accuracy"] > metrics["history"][0]["accuracy"]
    sha = _sha(source / "checkpoint.safetensors")
    assert metrics["decoupled"] == {"method": "crt", "name": "cRT", "from_run": str(source.resolve()),
                                    "checkpoint_sha256": sha,
                                    "source_test_overall": json.loads((source / "metrics.json").read_text())
                                    ["test"]["overall"]}
    assert metrics["params"]["trainable_backbone"] == 0 and metrics["head_init"].startswith("random")
    # The disk cache is named by the source checkpoint too: another model's features are never reused.
    (meta,) = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert meta["source_checkpoint_sha256"] == sha
    # The checkpoint holds the source's trained backbone tensors, unchanged, and a new head.
    src, new = load_file(str(source / "checkpoint.safetensors")), load_file(str(run / "checkpoint.safetensors"))
    assert set(src) == set(new) and any("adapter" in k for k in new)
    assert all(torch.equal(src[k], new[k]) for k in src if not k.startswith("head."))
    assert not torch.equal(src["head.weight"], new["head.weight"])
    assert "cRT of run" in (run / "log.txt").read_text() and (run / "report.html").is_file()
    assert "cRT of run" in (run / "report.html").read_text()
    # Self-contained: with the source run gone, eval and predict give the run's own numbers.
    moved = source.with_name("src_moved")
    source.rename(moved)
    try:
        again = tailtune.evaluate(run, quiet=True)
        predictor = tailtune.load(run, device="cpu")
    finally:
        moved.rename(source)
    assert again["overall"] == pytest.approx(metrics["test"]["overall"])
    labels, saved = load_predictions(run / "predictions.npz")
    data = tailtune.config.from_yaml_text((run / "config.yaml").read_text()).data
    from tailtune.data.sources.base import build_data

    test = build_data(data).test
    from torchvision.transforms.functional import to_pil_image

    images = [to_pil_image(test[i][0]) for i in range(len(test))]
    assert [p.classes[0] for p in predictor.predict(images)] == saved["none"].tolist()


def test_lws_learns_larger_scales_for_the_tail(source, tmp_path):
    cfg = _decoupled("lws", source, tmp_path, "train.lr=0.5")
    metrics = tailtune.fit(cfg)
    run = tmp_path / "lws"
    new = load_file(str(run / "checkpoint.safetensors"))
    src = load_file(str(source / "checkpoint.safetensors"))
    assert set(new) == set(src) | {"head.lws_scale"}
    assert all(torch.equal(src[k], new[k]) for k in src)  # backbone and classifier both kept
    scale = new["head.lws_scale"].numpy()
    # Balanced sampling on an imbalanced set: the rarer classes' scales grow relative to the frequent ones'.
    counts = np.asarray(metrics["data"]["train_counts"])
    assert scale[counts == counts.min()].mean() > scale[counts == counts.max()].mean()
    # The scales are part of the model wherever it is loaded: eval and export reproduce the run.
    assert tailtune.evaluate(run, quiet=True)["overall"] == pytest.approx(metrics["test"]["overall"])
    summary = export_run(run, tmp_path / "export", onnx=False)
    assert summary["max_logit_difference"] < 1e-4
    assert "head.lws_scale" in load_file(str(tmp_path / "export" / "model.safetensors"))


def test_crt_on_separable_cached_features_reaches_100():
    """The cRT stage alone: a re-initialised cosine classifier, class-balanced sampling, on cached features."""
    gen = torch.Generator().manual_seed(0)
    counts = [40, 12, 4]
    means = torch.eye(3, 8) * 4
    feats = torch.cat([means[c] + 0.5 * torch.randn(n, 8, generator=gen) for c, n in enumerate(counts)])
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    model = torch.nn.Module()
    model.head = CosineClassifier(8, 3)
    with torch.no_grad():  # cRT's re-initialisation of a cosine head (runs/decoupled.py): unit random rows
        model.head.weight.copy_(torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=-1))
    model.forward = lambda x: model.head(x.float())
    cfg = load_config("crt", overrides=["train.epochs=30", "train.batch_size=8", "train.lr=0.5"]).train
    trainer = Trainer(model, torch.nn.CrossEntropyLoss(), CachedViews(feats[None].bfloat16(), labels,
                                                                      ViewPlan(1, 30, False)),
                      cfg, torch.device("cpu"), quiet=True, log=lambda _: None)
    history = trainer.fit()
    assert history[-1]["accuracy"] == 100.0
    assert (model.head(feats).argmax(1) == torch.tensor(labels)).all()


def test_from_refusals(source, tmp_path, tiny_overrides):
    with pytest.raises(ConfigError, match="no such folder"):
        decoupled_config("crt", tmp_path / "missing")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(source, unfinished)
    (unfinished / "metrics.json").unlink()
    with pytest.raises(ConfigError, match="unfinished run.*let the run finish"):
        decoupled_config("crt", unfinished)
    with pytest.raises(ConfigError, match="--data .* drop --data"):
        decoupled_config("crt", source, data="cifar100_ir100")
    # Another model: a config whose sections differ from the source's is refused, naming the key.
    other = load_config("crt", overrides=[*tiny_overrides, "peft.method=lora", f"train.from_run={source}"])
    with pytest.raises(ConfigError, match=r"peft.method='lora' \(the run's: 'adaptformer'\)"):
        tailtune.fit(other)
    with pytest.raises(ConfigError, match="give it with --from RUN_DIR"):
        tailtune.fit(load_config("crt", overrides=tiny_overrides))
    with pytest.raises(ConfigError, match="train.decoupled=none"):
        tailtune.fit(load_config("lift", overrides=[*tiny_overrides, f"train.from_run={source}"]))
    with pytest.raises(ConfigError, match="train.decoupled"):
        load_config("crt", overrides=["train.decoupled=bogus"])
    assert not list(tmp_path.glob("runs/*"))  # refused before any run folder is kept
    # The CLI: --from with the recipe; a refusal is one line.
    assert cli.main(["train", "-r", "crt", "--from", str(tmp_path / "missing")]) != 0


def test_a_decoupled_run_is_not_a_source(source, tmp_path):
    crt = tmp_path / "crt_of_crt"
    shutil.copytree(source, crt)
    text = (crt / "config.yaml").read_text().replace("decoupled: none", "decoupled: crt")
    (crt / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="is itself a cRT run"):
        tailtune.fit(decoupled_config("crt", crt, overrides=[f"output_dir={tmp_path}"]))
