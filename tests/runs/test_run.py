"""End to end on a tiny random open_clip ViT and synthetic images."""

import json

import pytest

import tailtune
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.errors import CheckpointError, ConfigError
from tailtune.evaluation.evaluate import evaluate_model


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config("lift", overrides=[*TINY_CLIP, "train.micro_batch_size=8", f"output_dir={out}", "name=r1"])
    metrics = tailtune.fit(cfg)
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
    again = tailtune.evaluate(run, quiet=True)
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
        tailtune.load_run(other)


def test_truncated_checkpoint_is_refused(finished_run, tmp_path):
    run, _ = finished_run
    other = tmp_path / "trunc"
    other.mkdir()
    (other / "config.yaml").write_text((run / "config.yaml").read_text())
    (other / "checkpoint.safetensors").write_bytes((run / "checkpoint.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        tailtune.load_run(other)


def test_checkpoint_for_other_peft_is_refused(finished_run, tmp_path):
    run, _ = finished_run
    other = tmp_path / "peft"
    other.mkdir()
    (other / "config.yaml").write_text((run / "config.yaml").read_text().replace("method: adaptformer",
                                                                                "method: none"))
    (other / "checkpoint.safetensors").write_bytes((run / "checkpoint.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit this model"):
        tailtune.load_run(other)


def test_existing_run_folder_is_refused(tiny_overrides, tmp_path):
    cfg = load_config("lift", overrides=[*tiny_overrides, "name=same"])
    (tmp_path / "runs" / "same").mkdir(parents=True)
    (tmp_path / "runs" / "same" / "config.yaml").write_text("x: 1")
    with pytest.raises(ConfigError, match="already holds a different run"):
        tailtune.fit(cfg)
    assert (tmp_path / "runs" / "same" / "config.yaml").read_text() == "x: 1"


def test_classifier_only_and_cli_train(tiny_overrides, tmp_path):
    assert cli.main(["train", "--recipe", "lift", *tiny_overrides, "peft.method=none", "eval.tte=none",
                     "name=c1"]) == 0
    saved = json.loads((tmp_path / "runs" / "c1" / "metrics.json").read_text())
    assert saved["params"]["trainable_backbone"] == 0 and saved["test"]["views_per_image"] == 1


def test_zeroshot(tiny_cfg):
    out = tailtune.zeroshot(tiny_cfg)
    assert 0 <= out["test"]["overall"] <= 100 and out["test"]["num_samples"] == 24


def test_cli_reports_errors_without_traceback(capsys):
    assert cli.main(["train", "--recipe", "lift", "train.epoch=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'train.epoch'") and "Traceback" not in err


def test_unknown_open_clip_model_lists_close_matches(tiny_overrides):
    cfg = load_config("lift", overrides=[*tiny_overrides, "model.name=ViT-B-61"])
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-B-61'. Close matches: .*ViT-B-16"):
        tailtune.build(cfg)


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
            "model.name=TT-Tiny-ViT", "model.pretrained=none", "data.name=synthetic", "data.synthetic.num_classes=3",
            "data.synthetic.train_per_class=8", "data.synthetic.test_per_class=2", "data.imb_ratio=2", "quiet=true"]
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
    tailtune.fit(cfg)
    # training crops, the test / head-init / gap view (32 * 8 / 7 = 36) and the five crops (32 + 24)
    assert {(name, size if name == "Resize" else None) for name, _, size in seen} == {
        ("RandomResizedCrop", None), ("Resize", 36), ("Resize", 56)}
    assert {mode for _, mode, _ in seen} == {"bilinear"}
    run = cfg.output_dir + "/bl"
    assert tailtune.load_run(run).backbone.preprocess.interpolation == "bilinear"  # eval / predict / export
    seen.clear()
    tailtune.zeroshot(cfg)
    assert seen and {mode for _, mode, _ in seen} == {"bilinear"}


def test_data_interpolation_auto_keeps_the_backbones_filter(tiny_overrides, monkeypatch):
    seen = _spy_resizes(monkeypatch)
    cfg = load_config("lift", overrides=[*tiny_overrides, "data.interpolation=auto"])  # lift's is bilinear
    exp = tailtune.build(cfg)
    assert exp.backbone.preprocess.interpolation == "bicubic"  # open_clip's CLIP preprocessing
    evaluate_model(exp)
    assert seen and {mode for _, mode, _ in seen} == {"bicubic"}


def _global_rng() -> tuple:
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return torch.get_rng_state().clone(), random.getstate(), (kind, keys.copy(), pos, has_gauss, cached)


def _same_rng(a: tuple, b: tuple) -> bool:
    import numpy as np
    import torch

    return (torch.equal(a[0], b[0]) and a[1] == b[1] and a[2][0] == b[2][0] and np.array_equal(a[2][1], b[2][1])
            and a[2][2:] == b[2][2:])


def _caller_draws(seed: int) -> None:
    """A caller's own use of the global streams, different each time."""
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.rand(seed % 7 + 1), random.random(), np.random.rand()


def test_build_leaves_the_callers_rng_and_allocator_alone(tiny_cfg, monkeypatch):
    import torch

    tuned = []
    monkeypatch.setattr("tailtune.runs.run.tune_cpu_allocator", lambda: tuned.append("run") or True)
    monkeypatch.setattr("tailtune.runtime.device.tune_cpu_allocator", lambda: tuned.append("device") or True)
    models = []
    for seed in (11, 12):
        _caller_draws(seed)
        before = _global_rng()
        models.append(tailtune.build(tiny_cfg).model.state_dict())
        assert _same_rng(before, _global_rng()), "build() moved the caller's RNG streams"
    assert not tuned, "build() tuned the process's allocator"
    # ... and its random parts (random backbone, PEFT modules, head) still come from train.seed alone.
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_a_run_seeds_its_own_streams_and_gives_the_callers_back(tiny_overrides, monkeypatch):
    tuned = []
    monkeypatch.setattr("tailtune.runs.run.tune_cpu_allocator", lambda: tuned.append(1) or True)
    results = []
    for seed in (21, 22):
        _caller_draws(seed)
        before = _global_rng()
        cfg = load_config("lift", overrides=[*tiny_overrides, "peft.method=lora", "head.init=random",
                                             "eval.tte=none", "eval.report=false", f"name=s{seed}"])
        results.append(tailtune.fit(cfg))
        assert _same_rng(before, _global_rng()), "fit() did not give the caller's RNG streams back"
    assert tuned == [1, 1]  # a run on the CPU asks for the allocator tuning
    assert results[0]["test"]["per_class"] == results[1]["test"]["per_class"]
    assert [h["loss"] for h in results[0]["history"]] == [h["loss"] for h in results[1]["history"]]


def test_a_library_caller_sees_no_log_lines_until_it_asks(tiny_overrides, tmp_path, capsys, caplog):
    """fit() prints nothing but its progress bars (stderr); its lines go to the `tailtune` logger."""
    import logging

    def cfg(name, *extra):
        return load_config("lift", overrides=[*tiny_overrides, "quiet=false", "eval.tte=none", "eval.report=false",
                                              f"name={name}", *extra])

    logger = logging.getLogger("tailtune")
    handlers = list(logger.handlers)
    tailtune.fit(cfg("plain"))
    out, err = capsys.readouterr()
    assert out == ""
    assert "img/s" in err  # the progress bars stay
    log_txt = (tmp_path / "runs" / "plain" / "log.txt").read_text()
    for line in ("run folder:", "data: synthetic", "epoch 1/1: loss", "results on synthetic"):
        assert line not in err and line in log_txt, line

    with caplog.at_level(logging.INFO, logger="tailtune"):
        tailtune.fit(cfg("shown"))
        shown = [r.getMessage() for r in caplog.records if r.name.startswith("tailtune")]
        assert shown[0].startswith("run folder:") and any(m.startswith("results on synthetic") for m in shown)
        caplog.clear()
        tailtune.fit(cfg("quiet", "quiet=true"))  # quiet: the lines stay off the console (DEBUG), log.txt keeps them
        assert not [r for r in caplog.records if r.name.startswith("tailtune") and r.levelno >= logging.INFO]
        assert "results on synthetic" in (tmp_path / "runs" / "quiet" / "log.txt").read_text()
    caplog.set_level(logging.INFO)
    caplog.clear()
    try:
        logger.setLevel(logging.WARNING)
        tailtune.fit(cfg("silenced"))
    finally:
        logger.setLevel(logging.NOTSET)
    assert not [r for r in caplog.records if r.name.startswith("tailtune")]

    assert cli.main(["train", "-r", "lift", *tiny_overrides, "quiet=false", "eval.tte=none", "eval.report=false",
                     "name=cli"]) == 0
    assert "run folder:" in capsys.readouterr().out  # the CLI attaches the console ...
    assert logger.handlers == handlers and logger.level == logging.NOTSET and logger.propagate  # ... for its command


# --- issue 17 (2, 3): probability metrics in metrics.json, temperature scaling ---


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config("lift", overrides=[*TINY_CLIP, f"output_dir={out}", "name=cal", "eval.report=false",
                                         "data.val=holdout", "data.holdout_per_class=2", "eval.calibrate=temperature"])
    return out / "cal", tailtune.fit(cfg)


def test_metrics_json_holds_the_probability_metrics_and_the_calibration(calibrated_run, capsys):
    run, metrics = calibrated_run
    saved = json.loads((run / "metrics.json").read_text())
    for split in ("test", "val", "test_no_tte"):
        m = saved[split]
        assert {"top5", "nll", "brier", "ece", "classwise_ece", "precision_per_class", "recall_per_class",
                "f1_per_class"} <= set(m), split
        assert set(m["group_calibration"]) == {"many", "medium", "few"}
        assert set(m["group_calibration"]["few"]) == {"ece", "nll", "brier", "top5"}
        assert m["reliability"]["bins"] == 15 and set(m["reliability"]) == {"bins", "overall", "many", "medium", "few"}
        assert sum(m["reliability"]["overall"]["count"]) == m["num_samples"]
        assert len(m["f1_per_class"]) == 6 and m["group_confusion"]["groups"] == ["many", "medium", "few"]
        assert 0 <= m["ece"] <= 100 and m["nll"] > 0 and 0 <= m["brier"] <= 2
    cal = saved["calibration"]
    assert cal["method"] == "temperature" and cal["fitted_on"] == "val" and cal["tte"] == saved["test"]["tte"]
    assert cal["temperature"] > 0 and set(cal["test"]) == {"ece", "nll", "brier"}
    # the test metrics stay those of the unscaled logits: a plain re-evaluation reproduces them
    capsys.readouterr()
    assert cli.main(["eval", str(run), "-q"]) == 0
    out = capsys.readouterr().out
    assert "matches metrics.json" in out and f"top-5 {saved['test']['top5']:.2f}, ECE {saved['test']['ece']:.2f}%" in out
    assert f"temperature scaling (T = {cal['temperature']:.3f}, fitted on val)" not in out  # eval shows its own
    from tailtune.report.text import format_results

    assert f"temperature scaling (T = {cal['temperature']:.3f}, fitted on val): ECE" in format_results(saved)


def test_eval_calibrate_records_temperature_scaling(calibrated_run, capsys):
    run, metrics = calibrated_run
    saved = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert cli.main(["eval", str(run), "-q", "--calibrate", "temperature", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["calibration"]["temperature"] == pytest.approx(saved["calibration"]["temperature"])
    assert shown["overall"] == saved["test"]["overall"]  # scaling never changes a prediction
    assert cli.main(["eval", str(run), "-q", "--calibrate", "temperature", "--tte", "none"]) == 0
    assert "temperature scaling (T = " in capsys.readouterr().out
    again = json.loads((run / "metrics.json").read_text())
    assert again["calibration"]["tte"] == "none" and again["test"] == saved["test"]
    assert cli.main(["eval", str(run), "-q", "--calibrate", "temperature", "--split", "val"]) == 2
    assert "drop --split val" in capsys.readouterr().err


def test_eval_of_an_older_metrics_json_without_the_new_keys(calibrated_run, tmp_path, capsys):
    import shutil

    run, _ = calibrated_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    metrics = json.loads((old / "metrics.json").read_text())
    new = ("top5", "nll", "brier", "ece", "classwise_ece", "group_calibration", "reliability", "precision_per_class",
           "recall_per_class", "f1_per_class", "group_confusion")
    metrics["test"] = {k: v for k, v in metrics["test"].items() if k not in new}
    metrics.pop("calibration")
    (old / "metrics.json").write_text(json.dumps(metrics))
    capsys.readouterr()
    assert cli.main(["eval", str(old), "-q"]) == 0
    assert "matches metrics.json" in capsys.readouterr().out
    from tailtune.report.text import format_results

    assert "top-5" not in format_results(metrics)


def test_calibrate_without_a_validation_split_is_refused(finished_run, tmp_path, capsys):
    from conftest import TINY_CLIP

    run, _ = finished_run
    capsys.readouterr()
    assert cli.main(["eval", str(run), "-q", "--calibrate", "temperature"]) == 2
    assert "--calibrate=temperature fits the temperature on the validation split" in capsys.readouterr().err
    cfg = load_config("lift", overrides=[*TINY_CLIP, f"output_dir={tmp_path}", "name=nv", "eval.calibrate=temperature"])
    with pytest.raises(ConfigError, match=r"eval.calibrate=temperature .* data.val=holdout"):
        tailtune.fit(cfg)
    assert not (tmp_path / "nv").exists()  # refused before training: no run folder left
    with pytest.raises(ConfigError, match="eval.calibrate='platt' is not valid; choose one of none, temperature"):
        load_config("lift", overrides=[*TINY_CLIP, "eval.calibrate=platt"])


# --- the logits post-hoc and calibration read (eval.save_logits) ---


def _count_forwards(monkeypatch) -> list:
    from tailtune.models.model import TailModel

    calls, forward = [], TailModel.forward

    def counted(self, images):
        calls.append(len(images))
        return forward(self, images)

    monkeypatch.setattr(TailModel, "forward", counted)
    return calls


def test_eval_calibrate_reads_the_stored_logits(calibrated_run, tmp_path, capsys, monkeypatch):
    import shutil

    run = tmp_path / "cal"
    shutil.copytree(calibrated_run[0], run)
    calls = _count_forwards(monkeypatch)
    capsys.readouterr()
    assert cli.main(["eval", str(run), "-q", "--calibrate", "temperature"]) == 0
    out = capsys.readouterr().out
    assert calls == []  # no model forward: test and val logits from logits.safetensors
    assert f"logits: read from {run / 'logits.safetensors'} (test fivecrop, val fivecrop): no model forward" in out
    assert "test metrics from the stored logits, not a reproduction check" in out and "matches" not in out
    stored = json.loads((run / "metrics.json").read_text())["calibration"]
    assert stored["tte"] == "fivecrop"
    assert cli.main(["eval", str(run), "-q", "--calibrate", "temperature", "--recompute-logits"]) == 0
    out = capsys.readouterr().out
    assert calls and "logits: computed by the model (test fivecrop, val fivecrop): asked to recompute them" in out
    assert "matches metrics.json" in out  # the model ran: the reproduction check again
    assert json.loads((run / "metrics.json").read_text())["calibration"] == stored  # the same numbers
    # a plain eval always runs the model (the reproduction check), and takes no --recompute-logits
    calls.clear()
    assert cli.main(["eval", str(run), "-q"]) == 0
    assert calls and "matches metrics.json" in capsys.readouterr().out
    assert cli.main(["eval", str(run), "-q", "--recompute-logits"]) == 2
    assert "--recompute-logits goes with --posthoc or --calibrate" in capsys.readouterr().err


@pytest.mark.parametrize("setting", ["false", "auto"])
def test_no_logits_file_with_save_logits_false_or_over_the_auto_limit(setting, tmp_path, capsys, monkeypatch):
    from conftest import TINY_CLIP
    from tailtune.evaluation import logits as L

    if setting == "auto":  # the size rule: this run's file (24 test + 6 val images, 6 classes, 2 modes) is 1,800 bytes
        monkeypatch.setattr(L, "AUTO_MAX_BYTES", L.logits_nbytes([24, 24, 6], 6) - 1)
    cfg = load_config("lift", overrides=[*TINY_CLIP, f"output_dir={tmp_path}", "name=n", "eval.report=false",
                                         "data.val=holdout", "data.holdout_per_class=1", f"eval.save_logits={setting}"])
    assert cfg.eval.save_logits == (False if setting == "false" else "auto")
    tailtune.fit(cfg)
    run = tmp_path / "n"
    saved = json.loads((run / "metrics.json").read_text())
    assert (saved["data"]["test_images"], saved["data"]["val_images"]) == (24, 6)
    assert not (run / "logits.safetensors").exists()
    log = (run / "log.txt").read_text()
    assert ("note: eval.save_logits=auto: the logits are not saved: the file would hold" in log) == (setting == "auto")
    # post-hoc and calibration still work, from the model
    calls = _count_forwards(monkeypatch)
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--posthoc", "la", "--tau", "auto", "-q"]) == 0
    out = capsys.readouterr().out
    assert "logits: computed by the model (val fivecrop, test fivecrop): no logits.safetensors in the run folder" in out
    assert calls and f"recorded in {run / 'metrics.json'}" in out
    assert cli.main(["eval", str(run), "--calibrate", "temperature", "-q"]) == 0
    assert "matches metrics.json" in capsys.readouterr().out


def test_save_logits_takes_true_false_auto_only():
    from conftest import TINY_CLIP

    assert load_config("lift", overrides=[*TINY_CLIP, "eval.save_logits=true"]).eval.save_logits is True
    with pytest.raises(ConfigError, match=r"eval.save_logits='sometimes' is not valid; choose true, false or auto"):
        load_config("lift", overrides=[*TINY_CLIP, "eval.save_logits=sometimes"])
