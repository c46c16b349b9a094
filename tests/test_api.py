"""End to end on a tiny random open_clip ViT and synthetic images."""

import json

import pytest

from tailtune import api, cli
from tailtune.config import load_config
from tailtune.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config("lift", overrides=[*TINY_CLIP, "train.micro_batch_size=8", f"output_dir={out}", "name=r1"])
    metrics = api.fit(cfg)
    return out / "r1", metrics


def test_train_writes_every_output(finished_run):
    run, metrics = finished_run
    for f in ("config.yaml", "log.txt", "checkpoint.safetensors", "metrics.json"):
        assert (run / f).exists(), f
    assert list((run / "tb").glob("events.out.tfevents.*"))
    saved = json.loads((run / "metrics.json").read_text())
    test = saved["test"]
    assert set(["overall", "many", "medium", "few", "macro_f1", "per_class"]) <= set(test)
    assert len(test["per_class"]) == 6 and test["tte"] == "fivecrop" and test["views_per_image"] == 5
    assert saved["head_init"] == "text"
    assert saved["params"]["trainable_backbone"] > 0
    assert "epoch 1/1" in (run / "log.txt").read_text()


def test_eval_reproduces_metrics_json(finished_run, capsys):
    run, metrics = finished_run
    again = api.evaluate(run, quiet=True)
    assert again["overall"] == metrics["test"]["overall"]
    assert again["per_class"] == metrics["test"]["per_class"]
    assert cli.main(["eval", str(run), "-q"]) == 0
    assert "matches metrics.json" in capsys.readouterr().out


def test_checkpoint_for_other_class_count_is_refused(finished_run, tmp_path):
    run, _ = finished_run
    cfg_text = (run / "config.yaml").read_text().replace("num_classes: 6", "num_classes: 5")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(cfg_text)
    (other / "checkpoint.safetensors").write_bytes((run / "checkpoint.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="has 6 classes, the dataset has 5"):
        api.load_run(other)


def test_truncated_checkpoint_is_refused(finished_run, tmp_path):
    run, _ = finished_run
    other = tmp_path / "trunc"
    other.mkdir()
    (other / "config.yaml").write_text((run / "config.yaml").read_text())
    (other / "checkpoint.safetensors").write_bytes((run / "checkpoint.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        api.load_run(other)


def test_checkpoint_for_other_peft_is_refused(finished_run, tmp_path):
    run, _ = finished_run
    other = tmp_path / "peft"
    other.mkdir()
    (other / "config.yaml").write_text((run / "config.yaml").read_text().replace("method: adaptformer",
                                                                                "method: none"))
    (other / "checkpoint.safetensors").write_bytes((run / "checkpoint.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit this model"):
        api.load_run(other)


def test_existing_run_folder_is_refused(tiny_overrides, tmp_path):
    cfg = load_config("lift", overrides=[*tiny_overrides, "name=same"])
    (tmp_path / "runs" / "same").mkdir(parents=True)
    (tmp_path / "runs" / "same" / "config.yaml").write_text("x: 1")
    with pytest.raises(ConfigError, match="already holds a different run"):
        api.fit(cfg)
    assert (tmp_path / "runs" / "same" / "config.yaml").read_text() == "x: 1"


def test_classifier_only_and_cli_train(tiny_overrides, tmp_path):
    assert cli.main(["train", "--recipe", "lift", *tiny_overrides, "peft.method=none", "eval.tte=none",
                     "name=c1"]) == 0
    saved = json.loads((tmp_path / "runs" / "c1" / "metrics.json").read_text())
    assert saved["params"]["trainable_backbone"] == 0 and saved["test"]["views_per_image"] == 1


def test_zeroshot(tiny_cfg):
    out = api.zeroshot(tiny_cfg)
    assert 0 <= out["test"]["overall"] <= 100 and out["test"]["num_samples"] == 24


def test_cli_reports_errors_without_traceback(capsys):
    assert cli.main(["train", "--recipe", "lift", "train.epoch=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'train.epoch'") and "Traceback" not in err


def test_unknown_open_clip_model_lists_close_matches(tiny_overrides):
    cfg = load_config("lift", overrides=[*tiny_overrides, "model.name=ViT-B-61"])
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-B-61'. Close matches: .*ViT-B-16"):
        api.build(cfg)


def test_quiet_training_still_prints_the_results(tmp_path, capsys):
    from conftest import TINY_CLIP
    from tailtune import cli

    assert cli.main(["train", "-r", "lift", *TINY_CLIP, "eval.tte=none", "eval.report=false", f"output_dir={tmp_path}",
                     "name=q"]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "run folder" not in out  # the table, not the log


def test_overrides_may_follow_options(tmp_path):
    from tailtune import cli

    args = ["train", "-r", "lift", "--dry-run", "model.provider=open_clip", "--dry-run-steps", "1",
            "model.name=TT-Tiny-ViT", "model.pretrained=none", "data.name=synthetic", "data.num_classes=3",
            "data.train_per_class=8", "data.test_per_class=2", "data.imb_ratio=2", "quiet=true"]
    assert cli.main(args) == 0
    with pytest.raises(SystemExit):
        cli.main(["train", "--dry-run", "--no-such-option"])


def _spy_resizes(monkeypatch) -> list:
    """Record (class, filter, size) of every resize the views make."""
    from tailtune.data import transforms as T

    seen = []
    for cls in (T.Resize, T.RandomResizedCrop):
        def spy(self, img, _orig=cls.forward, _name=cls.__name__):
            seen.append((_name, self.interpolation.value, self.size))
            return _orig(self, img)

        monkeypatch.setattr(cls, "forward", spy)
    return seen


def test_data_interpolation_reaches_every_view_of_a_run(tiny_overrides, monkeypatch):
    seen = _spy_resizes(monkeypatch)
    cfg = load_config("lift", overrides=[*tiny_overrides, "data.interpolation=bilinear", "eval.report=false",
                                         "name=bl"])
    api.fit(cfg)
    # training crops, the test / head-init / gap view (32 * 8 / 7 = 36) and the five crops (32 + 24)
    assert {(name, size if name == "Resize" else None) for name, _, size in seen} == {
        ("RandomResizedCrop", None), ("Resize", 36), ("Resize", 56)}
    assert {mode for _, mode, _ in seen} == {"bilinear"}
    run = cfg.output_dir + "/bl"
    assert api.load_run(run).backbone.preprocess.interpolation == "bilinear"  # eval / predict / export
    seen.clear()
    api.zeroshot(cfg)
    assert seen and {mode for _, mode, _ in seen} == {"bilinear"}


def test_data_interpolation_auto_keeps_the_backbones_filter(tiny_cfg, monkeypatch):
    seen = _spy_resizes(monkeypatch)
    assert tiny_cfg.data.interpolation == "auto"
    exp = api.build(tiny_cfg)
    assert exp.backbone.preprocess.interpolation == "bicubic"  # open_clip's CLIP preprocessing
    api.evaluate_model(exp)
    assert seen and {mode for _, mode, _ in seen} == {"bicubic"}
