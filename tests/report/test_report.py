"""Run reports and comparisons, built from tiny real runs."""

import base64
import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tailtune
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.data.longtail import class_groups
from tailtune.errors import ConfigError
from tailtune.report.compare import config_differences
from tailtune.report.html import error_destinations, tail_confusions
from tailtune.report.record import load_predictions, read_curves
from tailtune.report.text import format_results
from tailtune.runtime.rundir import PREDICTIONS

RUN_SECTIONS = ("results", "per-class", "class-counts", "training", "confusions", "config")
COMPARE_SECTIONS = ("results", "groups", "per-class", "differences", "runs")
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished tiny runs: AdaptFormer for 2 epochs, classifier only for 1."""
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("runs")
    a = tailtune.fit(load_config("lift", overrides=[*TINY_CLIP, "train.epochs=2", f"output_dir={out}", "name=adapt"]))
    b = tailtune.fit(load_config("lift", overrides=[*TINY_CLIP, "peft.method=none", "eval.report=false",
                                               f"output_dir={out}", "name=probe"]))
    return {"adapt": (out / "adapt", a), "probe": (out / "probe", b)}


def _section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


def _images(html_part: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b)))
            for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_part)]


def test_run_saves_predictions_of_both_evaluations(runs):
    run, metrics = runs["adapt"]
    labels, preds = load_predictions(run / PREDICTIONS)
    # The synthetic source lists its test images class by class, 4 per class.
    assert labels.tolist() == np.repeat(np.arange(6), 4).tolist()
    assert set(preds) == {"fivecrop", "none"}
    for tte, key in (("fivecrop", "test"), ("none", "test_no_tte")):
        per_class = [100.0 * np.mean(preds[tte][labels == c] == c) for c in range(6)]
        assert metrics[key]["per_class"] == pytest.approx(per_class)
        assert metrics[key]["overall"] == pytest.approx(100.0 * np.mean(preds[tte] == labels))
    assert metrics["test_no_tte"]["tte"] == "none" and metrics["test_no_tte"]["views_per_image"] == 1


def test_metrics_table_and_report_carry_balanced_accuracy(runs):
    run, metrics = runs["adapt"]
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("test", "test_no_tte"):
        per_class = np.array(saved[key]["per_class"], dtype=float)
        assert saved[key]["balanced"] == pytest.approx(per_class.mean())
        groups = np.asarray(saved["data"]["groups"])
        for g, name in enumerate(saved["data"]["group_names"]):
            if (groups == g).any():
                assert saved[key][name] == pytest.approx(per_class[groups == g].mean())
    lines = format_results(saved).splitlines()
    header, row = lines[1].split(), lines[2].split()
    assert header[:2] == ["overall", "balanced"]
    assert row[:2] == [f"{saved['test']['overall']:.2f}", f"{saved['test']['balanced']:.2f}"]
    results = _section((run / "report.html").read_text(), "results")
    assert '<th class="num">overall</th><th class="num">balanced</th>' in results
    for key in ("test", "test_no_tte"):
        t = saved[key]
        assert f'<td class="num">{t["overall"]:.2f}</td><td class="num">{t["balanced"]:.2f}</td>' in results
    # A metrics.json from before balanced: the table falls back on mean_class.
    old = {**saved, "test": {k: v for k, v in saved["test"].items() if k != "balanced"}}
    assert format_results(old).splitlines()[2].split()[1] == f"{saved['test']['mean_class']:.2f}"


def test_no_tte_metrics_match_a_fresh_evaluation(runs):
    run, metrics = runs["adapt"]
    assert tailtune.evaluate(run, tte="none", quiet=True)["per_class"] == metrics["test_no_tte"]["per_class"]


def test_report_is_written_by_fit_with_every_section(runs):
    run, metrics = runs["adapt"]
    page = (run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    for sid in RUN_SECTIONS:
        _section(page, sid)
    for sid in ("results", "per-class", "class-counts", "training", "confusions"):
        imgs = _images(_section(page, sid))
        assert imgs and all(im.format == "PNG" and im.width > 400 for im in imgs), sid
    # Self-contained: no scripts, no external files, no links out of the page.
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:|#)', page)
    for name in ("metrics", "per_class_accuracy", "class_counts", "training_curves", "confusions"):
        assert Image.open(run / "report" / f"{name}.png").format == "PNG"
    results = _section(page, "results")
    for key in ("test", "test_no_tte"):
        assert f"{metrics[key]['overall']:.2f}" in results
    assert f"{metrics['params']['trainable_backbone']:,} trainable backbone" in results
    assert "<td>without TTE</td>" in results and "<td>with TTE (fivecrop)</td>" in results


def test_confusion_section_lists_the_few_shot_errors(runs):
    run, metrics = runs["adapt"]
    labels, preds = load_predictions(run / PREDICTIONS)
    counts = np.array(metrics["data"]["train_counts"])
    few = np.flatnonzero(counts < 20)  # the benchmark's few-shot rule, applied here independently
    errors = Counter((t, p) for t, p in zip(labels.tolist(), preds["fivecrop"].tolist()) if t in few and t != p)
    part = _section((run / "report.html").read_text(), "confusions")
    assert f"{sum(errors.values())} of the test images of few-shot classes were misclassified" in part
    for (t, p), n in errors.items():
        assert f"<td>class {t}</td><td>class {p}</td>" in part
        assert f"<td class=\"num\">{n}</td>" in part


def test_tail_confusions_hand_computed():
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 3])
    preds = np.array([0, 1, 0, 0, 2, 0, 0, 3, 2, 0])
    groups = np.array([0, 1, 2, 2])
    names = ["a", "b", "c", "d"]
    rows = tail_confusions(labels, preds, groups, 2, names)
    # class c (label 2): 2 -> a twice, 2 -> d once; class d: 3 -> a once. b is group 1: left out.
    assert [(r["true_name"], r["pred_name"], r["count"]) for r in rows] == [("c", "a", 2), ("c", "d", 1), ("d", "a", 1)]
    assert [r["share"] for r in rows] == [50.0, 25.0, 100.0]
    assert [r["pred_group"] for r in rows] == [0, 2, 0]
    assert error_destinations(labels, preds, groups, 2, 3) == (4, [3, 0, 1])
    assert tail_confusions(labels, preds, groups, 2, names, top=1)[0]["count"] == 2


def test_class_groups_rebuilt_for_runs_without_them():
    data = {"train_counts": [5, 300, 40, 10, 150], "classes_per_group": [2, 1, 2]}
    assert class_groups(data).tolist() == [2, 0, 1, 2, 0]
    assert class_groups({**data, "groups": [1, 1, 1, 1, 1]}).tolist() == [1] * 5


def test_tensorboard_holds_every_curve_of_the_report(runs):
    run, metrics = runs["adapt"]
    curves, epoch_steps = read_curves(run / "tb")
    assert set(curves) == {"loss", "lr", "running_acc", "epoch_loss", "epoch_acc"}
    # train.log_every=1: the running accuracy at an epoch's last step is that epoch's accuracy.
    steps, running = curves["running_acc"]
    at_end = [running[steps.index(s)] for s in epoch_steps]
    assert at_end == pytest.approx([h["accuracy"] for h in metrics["history"]], abs=1e-4)
    # The rate each step trained at: per-epoch cosine over 2 epochs trains the second at half the rate.
    assert len(epoch_steps) == 2 and curves["lr"][1][-1] == pytest.approx(0.5 * 0.01)


def test_report_can_be_left_to_the_report_command(runs, capsys):
    run, _ = runs["probe"]  # trained with eval.report=false
    assert not (run / "report.html").exists() and not (run / "report").exists()
    assert cli.main(["report", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    page = (run / "report.html").read_text()
    assert all(f'<section id="{sid}">' in page for sid in RUN_SECTIONS)


def test_report_refuses_unfinished_runs(tmp_path, capsys):
    from tailtune.report.html import write_report

    with pytest.raises(ConfigError, match="not a tailtune run folder"):
        write_report(tmp_path)
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no metrics.json (an unfinished run)" in capsys.readouterr().err


def test_compare_two_runs(runs, tmp_path, capsys):
    (a, ma), (b, mb) = runs["adapt"], runs["probe"]
    out = tmp_path / "cmp"
    assert cli.main(["compare", str(a), str(b), "--out", str(out)]) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    page = (out / "report.html").read_text()
    for sid in COMPARE_SECTIONS:
        _section(page, sid)
    for sid in ("groups", "per-class"):
        assert _images(_section(page, sid))
    table = _section(page, "results")
    for m in (ma, mb):
        assert f"{m['test']['overall']:.2f}" in table
    summary = json.loads((out / "comparison.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["adapt", "probe"]
    assert [r["overall"] for r in summary["runs"]] == [ma["test"]["overall"], mb["test"]["overall"]]
    assert [r["balanced"] for r in summary["runs"]] == [ma["test"]["balanced"], mb["test"]["balanced"]]
    assert "balanced" in table
    assert [r["trainable_params"] for r in summary["runs"]][1] == 6 * 64  # classifier only: C x d
    diffs = _section(page, "differences")
    assert "peft.method" in diffs and "train.epochs" in diffs and "data.name" not in diffs


CALLER_MATPLOTLIB = """
import sys
import matplotlib

matplotlib.use("svg")  # the caller's own backend and style
matplotlib.rcParams["font.size"] = 17.0
matplotlib.rcParams["axes.spines.top"] = True
before = matplotlib.rcParams.copy()
import tailtune
from tailtune.data.stats import plot_counts
from tailtune.report.sweep import axis_figure

tailtune.write_report(sys.argv[1])
tailtune.compare_runs([sys.argv[1], sys.argv[2]], sys.argv[3])
plot_counts([30, 9, 2], sys.argv[3] + "/counts.png")
axis_figure("loss.name", ["ce", "la"], {"all": {"overall": [{"mean": 50.0, "std": 1.0}] * 2}}, ["overall"])
assert "matplotlib.pyplot" not in sys.modules, "tailtune imported pyplot"
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
changed = sorted(k for k in before if matplotlib.rcParams[k] != before[k])
assert not changed, changed
"""


def test_reports_leave_the_callers_matplotlib_alone(runs, tmp_path):
    """No backend switch, no global style, no pyplot: a notebook keeps its own matplotlib."""
    (a, _), (b, _) = runs["adapt"], runs["probe"]
    done = subprocess.run([sys.executable, "-c", CALLER_MATPLOTLIB, str(a), str(b), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "report.html").exists() and (tmp_path / "counts.png").exists()

def test_config_differences():
    a = {"peft": {"method": "lora", "r": 4}, "name": "x", "train": {"lr": 0.1}}
    b = {"peft": {"method": "none", "r": 4}, "name": "y", "train": {"lr": 0.1}, "quiet": True}
    assert config_differences([a, b]) == {"peft.method": ["lora", "none"]}


def test_compare_needs_two_finished_runs(runs, tmp_path):
    from tailtune.report.compare import compare_runs

    a, _ = runs["adapt"]
    with pytest.raises(ConfigError, match="at least two"):
        compare_runs([a])
    with pytest.raises(ConfigError, match="not a tailtune run folder"):
        compare_runs([a, tmp_path], tmp_path / "out")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_a_browser(runs, tmp_path):
    run, _ = runs["adapt"]
    shot = tmp_path / "page.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,4000", f"--screenshot={shot}", (run / "report.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (4000, 1280)
    # The figures were decoded and drawn: the group colours of the plots appear on the page.
    colours = {tuple(c) for c in img.reshape(-1, 3)[::7]}
    assert len(colours) > 200
    blue_bars = np.all(np.abs(img.astype(int) - (0, 114, 178)) < 12, axis=-1).sum()  # Okabe-Ito blue
    assert blue_bars > 2000
