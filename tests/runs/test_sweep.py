"""Sweeps: grids of tiny runs, skipping finished points, one comparison; seeds' mean and spread."""

import json
import os
import re

import numpy as np
import pytest

from conftest import TINY_CLIP
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.errors import ConfigError
from tailtune.report.spread import aggregate, format_mean_std, mean_std
from tailtune.runs.sweep import parse_arguments, plan, split_values

# Classifier only, one view, no gap subset: the sweep's machinery is under test here.
FAST = [*TINY_CLIP, "peft.method=none", "eval.tte=none", "eval.gap_per_class=0"]
GRID = ["train.lr=0.01,0.1", "loss=ce,la"]
POINTS = ["train.lr=0.01__loss=ce", "train.lr=0.01__loss=la", "train.lr=0.1__loss=ce", "train.lr=0.1__loss=la"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished 2 x 2 sweep of tiny runs and the log of its first run."""
    out = tmp_path_factory.mktemp("sweep") / "grid"
    lines = []
    result = plan("lift", args=[*FAST, *GRID], out=out).run(log=lines.append)
    return out, result, lines


def _mtimes(folder):
    return {p: os.stat(folder / p / "metrics.json").st_mtime_ns for p in POINTS}


def test_split_values_keeps_bracketed_and_quoted_commas():
    assert split_values("4,8,16") == ["4", "8", "16"]
    assert split_values("[0,6],'last 4'") == ["[0,6]", "'last 4'"]
    assert split_values('"a, b",c') == ['"a, b"', "c"]


def test_parse_arguments_axes_fixed_and_aliases():
    axes, fixed = parse_arguments(["peft.r=4,8", "loss=ce,la", "peft.blocks=[0,6]", "seeds=0,1", "peft=lora"])
    assert [(a.key, a.target, a.values) for a in axes] == [
        ("peft.r", "peft.r", ("4", "8")), ("loss", "loss.name", ("ce", "la")), ("seeds", "train.seed", ("0", "1"))]
    assert fixed == ["peft.blocks=[0,6]", "peft.method=lora"]


@pytest.mark.parametrize("args, message", [
    (["seeds=0,a"], "seeds=0,a must list whole numbers"),
    (["peft.r=4,,8"], "has an empty value"),
    (["peft.r"], "is not of the form key=value"),
    (["peft.r=4,4"], "repeats a value"),
    (["loss=ce,la", "loss.name=ce,bs"], "loss.name is swept twice"),
    (["peft.r=4,8", "peft.r=16"], "peft.r is both swept"),
    (["peft.r=4,8", "name=x"], "set per point by the sweep"),
    (["train.epochs=2"], "needs at least one axis"),
    (["peft.r=4,-1"], "sweep point peft.r=-1: .*peft.r=-1 must be > 0"),
    (["loss=ce,nope"], "sweep point loss=nope: .*nope"),
])
def test_bad_sweeps_fail_before_anything_runs(tmp_path, args, message):
    with pytest.raises(ConfigError, match=message):
        plan("lift", args=[*FAST, *args], out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_2x2_sweep_writes_four_runs_and_one_comparison(swept):
    out, result, lines = swept
    assert result["ran"] == POINTS and result["failed"] == {}
    assert sorted(p.name for p in out.iterdir() if (p / "metrics.json").exists()) == POINTS
    for name in POINTS:
        lr, loss = re.fullmatch(r"train.lr=([\d.]+)__loss=(\w+)", name).groups()
        saved = load_config(None, files=[str(out / name / "config.yaml")])
        assert (saved.train.lr, saved.loss.name, saved.peft.method) == (float(lr), loss, "none")
    summary = json.loads((out / "comparison.json").read_text())
    assert [row["run"] for row in summary["runs"]] == POINTS
    for row in summary["runs"]:
        metrics = json.loads((out / row["run"] / "metrics.json").read_text())
        assert row["overall"] == metrics["test"]["overall"] and row["balanced"] == metrics["test"]["balanced"]
    assert summary["sweep"]["axes"]["train.lr"]["values"] == ["0.01", "0.1"]
    # The plotted value for lr 0.1 on the loss=la line is that run's overall accuracy.
    curve = summary["sweep"]["axes"]["train.lr"]["curves"]["loss=la"]
    saved = json.loads((out / "train.lr=0.1__loss=la" / "metrics.json").read_text())["test"]
    assert curve["overall"][1]["mean"] == saved["overall"] and curve["balanced"][1]["mean"] == saved["balanced"]
    page = (out / "report.html").read_text()
    assert '<section id="sweep-0">' in page and '<section id="sweep-1">' in page
    assert (out / "report" / "sweep_0.png").exists() and (out / "report" / "sweep_1.png").exists()
    assert "0 finished (skipped), 4 to run" in lines[0]


def test_running_again_skips_finished_points_and_continues_the_rest(swept):
    out, _, _ = swept
    before = _mtimes(out)
    lines = []
    again = plan("lift", args=[*FAST, *GRID], out=out).run(log=lines.append)
    assert again["ran"] == [] and _mtimes(out) == before
    assert "4 finished (skipped), 0 to run" in lines[0]
    # A point that did not finish (no metrics.json) is the only one trained on the next run.
    (out / POINTS[1] / "metrics.json").unlink()
    third = plan("lift", args=[*FAST, *GRID], out=out).run(log=lambda _: None)
    after = _mtimes(out)
    assert third["ran"] == [POINTS[1]]
    assert {p: t for p, t in after.items() if p != POINTS[1]} == {p: t for p, t in before.items() if p != POINTS[1]}


def test_a_folder_of_another_config_is_refused(swept):
    out, _, _ = swept
    with pytest.raises(ConfigError, match="holds a run of another config"):
        plan("lift", args=[*FAST, *GRID, "train.momentum=0.5"], out=out)


def test_point_commands_rebuild_the_point_config(swept):
    out, _, _ = swept
    sweep = plan("lift", args=[*FAST, *GRID], out=out)
    point = sweep.points[2]
    cmd = sweep.command(point)
    assert cmd[1:5] == ["-m", "tailtune.cli", "train", "--recipe"]
    args = cli.build_parser().parse_args(cmd[3:])
    assert args.run_dir == str(out / point.name)
    assert cli._load(args) == point.cfg
    torchrun = sweep.command(point, "torchrun", 4)
    assert torchrun[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]


def test_print_commands_lists_only_unfinished_points(swept, capsys):
    out, _, _ = swept
    assert cli.main(["sweep", "lift", *FAST, "train.lr=0.01,0.1,0.5", "loss=ce,la", "--out", str(out), "--print-commands"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and all("train.lr=0.5" in line for line in printed)


def test_mean_and_std_over_seeds_match_numpy():
    rows = [{"run": "a0", "overall": 80.0, "few": 40.0}, {"run": "b0", "overall": 70.0, "few": None},
            {"run": "a1", "overall": 82.5, "few": 45.0}, {"run": "a2", "overall": 79.0, "few": 47.5},
            {"run": "b1", "overall": 71.0, "few": 30.0}]
    stats = aggregate(rows, ["a", "b", "a", "a", "b"], ["overall", "few"])
    assert [(s["setting"], s["runs"], s["n"]) for s in stats] == [("a", ["a0", "a1", "a2"], 3), ("b", ["b0", "b1"], 2)]
    a = np.array([80.0, 82.5, 79.0])
    assert stats[0]["overall"]["mean"] == pytest.approx(a.mean())
    assert stats[0]["overall"]["std"] == pytest.approx(np.std(a, ddof=1))
    assert stats[0]["few"]["std"] == pytest.approx(np.std([40.0, 45.0, 47.5], ddof=1))
    # A missing value is left out; one value has no spread.
    assert stats[1]["few"] == {"mean": 30.0, "std": None, "n": 1}
    assert mean_std([None]) == {"mean": None, "std": None, "n": 0}
    assert format_mean_std(stats[1]["overall"]) == f"70.50 ± {np.std([70.0, 71.0], ddof=1):.2f}"


def test_train_with_seeds_reports_mean_and_spread(tmp_path, capsys):
    args = ["train", "--recipe", "lift", *FAST, f"output_dir={tmp_path}", "name=seeded",
            "seeds=0,1"]
    assert cli.main(args) == 0
    folder = tmp_path / "seeded"
    runs = [json.loads((folder / f"seed={s}" / "metrics.json").read_text())["test"]["overall"] for s in (0, 1)]
    assert [load_config(None, files=[str(folder / f"seed={s}" / "config.yaml")]).train.seed for s in (0, 1)] == [0, 1]
    spread = json.loads((folder / "comparison.json").read_text())["settings"]
    assert len(spread) == 1 and spread[0]["n"] == 2
    assert spread[0]["overall"]["mean"] == pytest.approx(np.mean(runs))
    assert spread[0]["overall"]["std"] == pytest.approx(np.std(runs, ddof=1))
    page = (folder / "report.html").read_text()
    assert '<section id="spread">' in page and format_mean_std(spread[0]["overall"]) in page
    assert (f"lift (2 seeds): overall {format_mean_std(spread[0]['overall'])}  "
            f"balanced {format_mean_std(spread[0]['balanced'])}") in capsys.readouterr().out


# ---------------------------------------------------------------- post-hoc axes (evaluation only)

POSTHOC = ["posthoc=none,la", "posthoc.tau=0,1"]


@pytest.fixture(scope="module")
def posthoc_swept(tmp_path_factory):
    """A finished sweep of two tiny runs, each adjusted post hoc: none, la tau 0 and la tau 1."""
    out = tmp_path_factory.mktemp("sweep") / "posthoc"
    lines = []
    result = plan("lift", args=[*FAST, "train.lr=0.01,0.1", *POSTHOC], out=out).run(log=lines.append)
    return out, result, lines


def test_posthoc_axes_are_not_training_axes():
    sweep = plan("lift", args=[*FAST, "train.lr=0.01,0.1", *POSTHOC], out="unused")
    plain = plan("lift", args=[*FAST, "train.lr=0.01,0.1"], out="unused")
    # The same points, folders and configs as without the post-hoc axes.
    assert [(p.name, p.overrides, p.cfg) for p in sweep.points] == [(p.name, p.overrides, p.cfg) for p in plain.points]
    assert [a.key for a in sweep.axes] == ["train.lr"] and "posthoc" not in plain.describe()
    assert (sweep.posthoc.methods, sweep.posthoc.taus) == (("none", "la"), ("0", "1"))
    # Without posthoc.tau, tau is chosen on the validation split, as for `tailtune eval --posthoc`.
    assert plan("lift", args=[*FAST, "train.lr=0.01,0.1", "posthoc=la"], out="unused").posthoc.taus == ("auto",)


def test_a_posthoc_sweep_has_a_row_per_point_method_and_tau(posthoc_swept):
    out, result, lines = posthoc_swept
    points = ["train.lr=0.01", "train.lr=0.1"]
    assert result["ran"] == points and result["failed"] == {}
    rows = json.loads((out / "sweep.json").read_text())["posthoc"]["rows"]
    assert [(r["point"], r["train.lr"], r["posthoc"], r["posthoc.tau"], r["tau"]) for r in rows] == [
        (p, lr, m, t, None if t is None else float(t)) for p, lr in zip(points, ["0.01", "0.1"])
        for m, t in [("none", None), ("la", "0"), ("la", "1")]]
    assert json.loads((out / "comparison.json").read_text())["sweep"]["posthoc"]["rows"] == rows
    keys = ["overall", "balanced", "many", "medium", "few", "top5"]
    for p in points:
        none, la0, la1 = [r for r in rows if r["point"] == p]
        metrics = json.loads((out / p / "metrics.json").read_text())["test"]
        # none is the run as trained; la with tau 0 subtracts nothing: the same numbers.
        assert [none[k] for k in keys] == [metrics.get(k) for k in keys]
        assert [la0[k] for k in keys] == [none[k] for k in keys]
        assert la0["ece"] == pytest.approx(none["ece"], abs=1e-6) and la0["nll"] == pytest.approx(none["nll"], abs=1e-6)
        assert la1["tau_from"] == "given" and la1["nll"] != pytest.approx(none["nll"], abs=1e-9)
        # The cached results are posthoc_eval's: one evaluation per run for both taus.
        cached = json.loads((out / "posthoc" / f"{p}.json").read_text())["results"]
        assert [r["method"] for r in cached] == ["la"] and [r["tau"] for r in cached[0]["rows"]] == [0.0, 1.0]
        assert cached[0]["rows"][1]["after"]["overall"] == la1["overall"]
    page = (out / "report.html").read_text()
    assert '<section id="posthoc">' in page and "Post-hoc adjustment" in page
    assert sum(1 for line in lines if line.startswith("post-hoc la")) == 2


def test_a_posthoc_sweep_run_again_evaluates_nothing_and_prints_rows(posthoc_swept, capsys):
    out, _, _ = posthoc_swept
    lines = []
    again = plan("lift", args=[*FAST, "train.lr=0.01,0.1", *POSTHOC], out=out).run(log=lines.append)
    assert again["ran"] == [] and not any(line.startswith("post-hoc") for line in lines)
    assert cli.main(["sweep", "lift", *FAST, "train.lr=0.01,0.1", *POSTHOC, "--out", str(out), "--report-only"]) == 0
    printed = capsys.readouterr().out
    assert "  posthoc=none tau –: overall" in printed and "  posthoc=la tau 1: overall" in printed


def test_auto_tau_rows_show_the_tau_chosen_on_val():
    from tailtune.report.sweep import tau_cell

    assert tau_cell({"tau": 0.7, "tau_from": "val"}) == "auto → 0.7"
    assert tau_cell({"tau": 1.0, "tau_from": "given"}) == "1" and tau_cell({"tau": None}) == "–"


@pytest.mark.parametrize("args, message", [
    (["posthoc=taunorm"], "sweep point train.lr=0.01: posthoc=taunorm: .*head.type=cosine"),
    (["posthoc=none,la", "data.val=none"], "sweep point train.lr=0.01: .*validation split"),
    (["posthoc=la,bs"], "list post-hoc methods among none, la, taunorm"),
    (["posthoc=la", "posthoc.tau=0,-1"], "posthoc.tau"),
    (["posthoc.tau=0,1"], "give the methods too"),
    (["posthoc=none", "posthoc.tau=0,1"], "applies to posthoc=la or taunorm"),
    (["posthoc.bins=3"], "the post-hoc axes are"),
])
def test_bad_posthoc_axes_fail_before_anything_trains(tmp_path, args, message):
    with pytest.raises(ConfigError, match=message):
        plan("lift", args=[*FAST, "train.lr=0.01,0.1", *args], out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_posthoc_without_a_training_axis_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no training axis"):
        plan("lift", args=[*FAST, "posthoc=la"], out=tmp_path / "s")


def test_the_posthoc_cache_key_changes_with_the_checkpoint_not_only_the_predictions(tmp_path):
    # Post-hoc adjusts the logits: two checkpoints that predict the same classes have other logits.
    import torch

    from tailtune.report.record import save_predictions
    from tailtune.runs.sweep import _fingerprint
    from tailtune.runtime.checkpoint import save_checkpoint

    keys = []
    for i, w in enumerate((1.0, 2.0, 2.0)):
        run = tmp_path / f"r{i}"
        run.mkdir()
        save_predictions(run / "predictions.npz", [0, 1], {"none": [0, 1]})
        save_checkpoint(run / "checkpoint.safetensors", {"head.weight": torch.full((2, 2), w)}, "", {}, ["a", "b"])
        keys.append(_fingerprint(run))
    assert keys[0] != keys[1] and keys[1] == keys[2]


def test_a_fixed_option_of_one_choice_of_a_swept_key_goes_only_to_its_points(tmp_path):
    """loss=ce,ldam with loss.ldam.drw_epoch=0: the ce point is not refused for an option it would not read;
    it gets no such override (its command trains as it is), the ldam point does."""
    sweep = plan("lift", args=[*FAST, "loss=ce,ldam", "loss.ldam.drw_epoch=0"], out=tmp_path / "s")
    by_loss = {p.values["loss"]: p for p in sweep.points}
    assert by_loss["ldam"].cfg.loss.ldam.drw_epoch == 0 and "loss.ldam.drw_epoch=0" in by_loss["ldam"].overrides
    assert by_loss["ce"].cfg.loss.ldam.drw_epoch is None and "loss.ldam.drw_epoch=0" not in by_loss["ce"].overrides
    assert "loss.ldam.drw_epoch=0" not in sweep.command(by_loss["ce"])
    load_config("lift", overrides=by_loss["ce"].overrides)  # what `tailtune train` of that command composes


def test_a_fixed_option_no_point_of_the_sweep_uses_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"no point of this sweep uses loss.ldam.drw_epoch=0: .*applies to "
                                          r"loss.name=ldam only, not to loss.name=ce"):
        plan("lift", args=[*FAST, "loss=ce,la", "loss.ldam.drw_epoch=0"], out=tmp_path / "s")


def test_an_option_of_one_choice_in_a_config_file_is_refused_where_it_does_not_apply(tmp_path):
    """A -c file goes to every point whole: its option for ldam stops the ce point, naming the file."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("loss:\n  ldam:\n    drw_epoch: 0\n")
    with pytest.raises(ConfigError, match=r"sweep point loss=ce: loss.ldam.drw_epoch=0 applies to loss.name=ldam "
                                          r"only.*config file .*mine.yaml set it"):
        plan("lift", files=[str(mine)], args=[*FAST, "loss=ce,ldam"], out=tmp_path / "s")
