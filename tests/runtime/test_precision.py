"""Precision of training and of every evaluation (eval.precision), on CPUs with and without native bf16."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import tailtune
import tailtune.runtime.hardware as hw
from conftest import TINY_CLIP, needs_native_bf16
from tailtune import config as C
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.config.reference import field_choices
from tailtune.data.base import Transformed
from tailtune.data.transforms import eval_transform
from tailtune.errors import ConfigError
from tailtune.evaluation import evaluate as evaluate_module
from tailtune.evaluation.evaluate import evaluate_with_predictions, predict_split, train_features
from tailtune.runs import run as run_module
from tailtune.runtime.precision import resolve_eval_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
BF16, FP16 = torch.bfloat16, torch.float16
# A run with every kind of evaluation: head-init features (class_mean), val (select_by_val), test
# with and without the test-time ensemble, and the train-vs-test gap.
EVERY_EVAL = ["data.val=holdout", "data.holdout_per_class=1", "train.select_by_val=true", "head.init=class_mean",
              "eval.gap_per_class=2"]


def test_eval_precision_is_checked(tiny_overrides):
    assert field_choices(C.EvalConfig)["precision"] == C.EVAL_PRECISIONS == ("train", "auto", "bf16", "fp16", "fp32")
    assert C.EvalConfig().precision == "train"  # as before the key existed: the run's own precision
    assert load_config("lift").eval.precision == "fp32"  # the reproduction recipes: the reference's
    with pytest.raises(ConfigError, match=r"eval.precision='fp64' is not valid; choose one of train, auto, bf16"):
        load_config("lift", overrides=["eval.precision=fp64"])
    cfg = load_config("lift", overrides=[*tiny_overrides, "train.device=cpu", "eval.precision=fp16"])
    with pytest.raises(ConfigError, match=r"eval.precision=fp16 is not supported on CPU; use bf16 or fp32"):
        tailtune.build(cfg)
    with pytest.raises(ConfigError, match=r"eval.precision=fp16 is not supported on CPU"):
        tailtune.zeroshot(cfg)


@pytest.mark.parametrize("native", [True, False])
def test_eval_precision_follows_its_key_on_both_kinds_of_cpu(monkeypatch, native):
    """train: whatever train.precision resolves to; auto: the hardware's rule whatever training used."""
    monkeypatch.setattr(hw, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr(hw, "cuda_bf16_native", lambda device: native)
    auto_cpu = BF16 if native else None
    assert resolve_eval_precision("train", "auto", CPU, "vit") == auto_cpu
    assert resolve_eval_precision("train", "bf16", CPU, "vit") == BF16
    assert resolve_eval_precision("train", "fp32", CPU, "vit") is None
    assert resolve_eval_precision("auto", "fp32", CPU, "vit") == auto_cpu
    assert resolve_eval_precision("auto", "bf16", CPU, "cnn") is None  # CNNs stay fp32 on CPU
    assert resolve_eval_precision("fp32", "bf16", CPU, "vit") is None
    assert resolve_eval_precision("bf16", "fp32", CPU, "cnn") == BF16
    assert resolve_eval_precision("auto", "fp32", CUDA, "vit") == (BF16 if native else FP16)
    assert resolve_eval_precision("fp16", "fp32", CUDA, "vit") == FP16  # inference needs no grad scaler
    exp = tailtune.build(load_config("lift", overrides=[*TINY_CLIP, "train.device=cpu", "eval.precision=fp32"]))
    assert exp.dtype == auto_cpu and exp.eval_dtype is None


def _record_forward_dtypes(monkeypatch) -> list[tuple[str, torch.dtype]]:
    """(phase, output dtype) of every nn.Linear call in the backbones of the runs built next.

    Phases: "fit" (a forward with gradients: training), "init" (the head-init feature pass),
    "eval:<split>" (an evaluation of split test / val / train).
    """
    seen, phase = [], []
    real_build, real_eval, real_features = run_module._build, evaluate_with_predictions, train_features
    real_test, real_split = run_module.evaluate_with_logits, run_module.split_logits

    def hook(module, args, out):
        seen.append((phase[-1] if phase else "fit" if torch.is_grad_enabled() else "?", out.dtype))

    def build(cfg, data=None, keep_rng=True):
        exp = real_build(cfg, data, keep_rng)
        for m in exp.backbone.modules():  # (attention's out_proj is not called as a module)
            if isinstance(m, torch.nn.Linear):
                m.register_forward_hook(hook)
        return exp

    def during(name, fn):
        def wrapped(*args, **kwargs):
            phase.append(name(*args, **kwargs) if callable(name) else name)
            try:
                return fn(*args, **kwargs)
            finally:
                phase.pop()
        return wrapped

    evaluating = during(lambda exp, tte=None, split="test", quiet=True: f"eval:{split}", real_eval)
    monkeypatch.setattr(run_module, "_build", build)
    monkeypatch.setattr(run_module, "evaluate_with_logits",
                        during(lambda exp, tte=None, split="test", quiet=True: f"eval:{split}", real_test))  # test
    monkeypatch.setattr(run_module, "split_logits",  # val, stored for post-hoc (eval.save_logits)
                        during(lambda exp, tte=None, split="test", quiet=True: f"eval:{split}", real_split))
    monkeypatch.setattr(evaluate_module, "evaluate_with_predictions", evaluating)  # val, gap
    monkeypatch.setattr(run_module, "train_features", during("init", real_features))
    return seen


@pytest.fixture(scope="module")
def bf16_run_fp32_eval(tmp_path_factory):
    """Trained in bf16 (explicit: on every CPU), evaluated in fp32; the dtypes its forwards computed in."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        seen = _record_forward_dtypes(mp)
        metrics = tailtune.fit(load_config("lift", overrides=[*TINY_CLIP, *EVERY_EVAL, "train.precision=bf16",
                                                         "eval.precision=fp32", f"output_dir={out}", "name=r"]))
    return out / "r", metrics, seen


def test_every_evaluation_runs_in_eval_precision(bf16_run_fp32_eval):
    run, metrics, seen = bf16_run_fp32_eval
    phases = {p for p, _ in seen}
    assert phases == {"fit", "init", "eval:val", "eval:test", "eval:train"}, phases
    assert {d for p, d in seen if p == "fit"} == {BF16}
    assert {d for p, d in seen if p != "fit"} == {torch.float32}
    assert metrics["test"]["precision"] == metrics["test_no_tte"]["precision"] == "fp32"
    assert metrics["val"]["precision"] == "fp32"
    assert "precision: training bf16, evaluation fp32" in (run / "log.txt").read_text()


def test_fp32_evaluation_differs_from_bf16(bf16_run_fp32_eval):
    """The same trained model, evaluated in fp32 and in the training's bf16: close, not equal."""
    run, _, _ = bf16_run_fp32_eval
    exp = tailtune.load_run(run)
    images = Transformed(exp.data.test, eval_transform(exp.backbone.preprocess, "none"))
    fp32, _ = predict_split(exp, exp.model, images, True, "fp32")
    exp.cfg = replace(exp.cfg, eval=replace(exp.cfg.eval, precision="train"))
    assert exp.eval_dtype == BF16
    bf16, _ = predict_split(exp, exp.model, images, True, "bf16")
    diff = (fp32 - bf16).abs().max().item()
    assert 0 < diff < 0.05 * fp32.abs().max().item(), diff  # bf16 keeps 8 bits of mantissa


def test_eval_of_the_run_folder_reproduces_metrics_json(bf16_run_fp32_eval, capsys):
    run, metrics, _ = bf16_run_fp32_eval
    again = tailtune.evaluate(run, quiet=True)
    assert again["precision"] == "fp32" and again["per_class"] == metrics["test"]["per_class"]
    assert cli.main(["eval", str(run), "-q"]) == 0
    assert "matches metrics.json" in capsys.readouterr().out
    assert cli.main(["eval", str(run), "-q", "--json", "--precision", "bf16"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "bf16"
    with pytest.raises(ConfigError, match="eval.precision='fp8' is not valid"):
        tailtune.evaluate(run, precision="fp8")


@needs_native_bf16
def test_auto_trains_and_evaluates_in_bf16_close_to_fp32(tiny_overrides, monkeypatch):
    """On a CPU with native bf16 the default (auto) runs the bf16 path for real: autocast in every
    forward, and training lands close to fp32's, within bf16's rounding, but not on it."""
    seen = _record_forward_dtypes(monkeypatch)
    auto = tailtune.fit(load_config("lift", overrides=[*tiny_overrides, "eval.precision=train", "name=auto"]))
    # "?": the text tower encoding the prompts of head.init=text, always in fp32 (as the reference's).
    assert set(seen) == {("fit", BF16), ("eval:test", BF16), ("eval:train", BF16), ("?", torch.float32)}
    assert auto["test"]["precision"] == "bf16"
    fp32 = tailtune.fit(load_config("lift", overrides=[*tiny_overrides, "name=fp32", "train.precision=fp32"]))
    assert fp32["test"]["precision"] == "fp32"
    a, b = auto["history"][-1]["loss"], fp32["history"][-1]["loss"]
    assert a != b and abs(a - b) < 0.01 * b, (a, b)  # measured: 2e-4 of the loss
