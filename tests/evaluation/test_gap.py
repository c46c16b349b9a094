"""The generalisation gap: train against test accuracy per group, saved by every run."""

import json

import numpy as np
import pytest

import tailtune
from conftest import TINY_CLIP
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.errors import ConfigError
from tailtune.evaluation.evaluate import evaluate_with_predictions
from tailtune.evaluation.gap import group_gap, stratified_indices
from tailtune.report.text import format_results

# A random classifier trained briefly at a high rate: predictions vary by class and differ
# between train and test images (the tiny model is otherwise exact or constant).
GAP_RUN = [*TINY_CLIP, "head.init=random", "peft.method=none", "train.lr=0.3", "eval.tte=none"]


@pytest.fixture(scope="module")
def gap_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gap")
    metrics = tailtune.fit(load_config("lift", overrides=[*GAP_RUN, "eval.gap_per_class=5", f"output_dir={out}",
                                                     "name=run"]))
    return out / "run", metrics


def _class_means(per_class, groups, names):
    """Mean per-class accuracy overall and per group, by hand."""
    per_class = np.asarray(per_class, dtype=float)
    groups = np.asarray(groups)
    out = {"overall": per_class.mean()}
    for g, name in enumerate(names):
        out[name] = per_class[groups == g].mean() if (groups == g).any() else None
    return out


def test_stratified_indices_cap_each_class_and_are_seeded():
    targets = np.array([0] * 10 + [1] * 3 + [2] * 5 + [0] * 2)
    idx = stratified_indices(targets, 4, seed=0)
    assert np.bincount(targets[idx]).tolist() == [4, 3, 4]
    assert idx.tolist() == sorted(set(idx.tolist()))  # sorted, no repeats
    assert set(idx[targets[idx] == 1].tolist()) == {10, 11, 12}  # a small class keeps every image
    assert stratified_indices(targets, 4, seed=0).tolist() == idx.tolist()
    assert stratified_indices(targets, 4, seed=1).tolist() != idx.tolist()
    assert stratified_indices(targets, 100, seed=0).tolist() == list(range(len(targets)))


def test_group_gap_hand_computed():
    train = [100.0, 90.0, 80.0, 100.0, None]
    test = [70.0, 60.0, 50.0, 10.0, 40.0]
    gap = group_gap(train, test, groups=[0, 0, 1, 2, 2], group_names=["many", "medium", "few"])
    # Class 4 has no training accuracy: it is left out of both sides.
    assert gap["train"] == {"overall": 92.5, "many": 95.0, "medium": 80.0, "few": 100.0}
    assert gap["test"] == {"overall": 47.5, "many": 65.0, "medium": 50.0, "few": 10.0}
    assert gap["gap"] == {"overall": 45.0, "many": 30.0, "medium": 30.0, "few": 90.0}
    assert gap["classes"] == {"overall": 4, "many": 2, "medium": 1, "few": 1}
    empty = group_gap([50.0], [50.0], [0], ["many", "few"])
    assert empty["gap"]["few"] is None and empty["classes"]["few"] == 0


def test_fit_saves_the_gap_of_a_stratified_train_subset(gap_run):
    run, metrics = gap_run
    gap = metrics["generalisation_gap"]
    data = metrics["data"]
    counts = np.array(data["train_counts"])
    assert gap["tte"] == "none" and gap["images_per_class"] == 5
    assert gap["train_images"] == int(np.minimum(counts, 5).sum())
    # Independently: predictions on every training image of the rebuilt run, restricted to the
    # subset (drawn with data.subset_seed), averaged class by class, then group by group.
    exp = tailtune.load_run(run)
    _, preds, labels = evaluate_with_predictions(exp, "none", "train")
    idx = stratified_indices(labels, 5, exp.cfg.data.subset_seed)
    per_class = [100.0 * np.mean(preds[idx][labels[idx] == c] == c) for c in range(len(counts))]
    assert gap["train_per_class"] == pytest.approx(per_class)
    train = _class_means(per_class, data["groups"], data["group_names"])
    test = _class_means(metrics["test"]["per_class"], data["groups"], data["group_names"])
    for key in ("overall", *data["group_names"]):
        if train[key] is None:
            assert gap["gap"][key] is None
            continue
        assert gap["train"][key] == pytest.approx(train[key])
        assert gap["gap"][key] == pytest.approx(train[key] - test[key])
    assert json.loads((run / "metrics.json").read_text())["generalisation_gap"] == gap
    assert len(set(per_class)) > 1  # the check is not a constant predictor's 0 = 0


def test_gap_is_in_the_run_report(gap_run):
    run, metrics = gap_run
    page = (run / "report.html").read_text()
    part = page[page.index('<section id="gap">'):]
    part = part[:part.index("</section>")]
    gap = metrics["generalisation_gap"]
    for key in ("overall", "few"):
        assert f"{gap['train'][key]:.2f}" in part and f"{gap['gap'][key]:+.2f}" in part
    assert (run / "report" / "generalisation_gap.png").exists()


def test_eval_train_split_prints_the_gap_per_group(gap_run, capsys):
    run, metrics = gap_run
    assert cli.main(["eval", str(run), "--split", "train", "--tte", "none", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    data = metrics["data"]
    # The whole train split: its per-class accuracy against the saved test accuracy, class-balanced.
    train = _class_means(out["per_class"], data["groups"], data["group_names"])
    test = _class_means(metrics["test"]["per_class"], data["groups"], data["group_names"])
    assert out["generalisation_gap"]["gap"]["few"] == pytest.approx(train["few"] - test["few"])
    assert out["generalisation_gap"]["gap"]["overall"] == pytest.approx(train["overall"] - test["overall"])
    # The train split's own group accuracies are class means too: the gap's train side is them.
    for key in data["group_names"]:
        assert out["generalisation_gap"]["train"][key] == pytest.approx(out[key])
    assert out["generalisation_gap"]["train"]["overall"] == pytest.approx(out["balanced"])
    assert cli.main(["eval", str(run), "--split", "train", "--tte", "none", "-q"]) == 0
    text = capsys.readouterr().out
    assert "generalisation gap" in text and f"{train['few'] - test['few']:+.2f}" in text
    assert text.count("generalisation gap") == 1  # the new one, not also the run's saved subset gap


def test_groups_of_the_long_tailed_train_split_are_class_means(gap_run, capsys):
    # The train split is long-tailed: image and class means differ, and the reported ones are the
    # class means (the reference's definition, reference: utils/evaluator.py:110-112).
    run, metrics = gap_run
    assert cli.main(["eval", str(run), "--split", "train", "--tte", "none", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    data = metrics["data"]
    exp = tailtune.load_run(run)
    _, preds, labels = evaluate_with_predictions(exp, "none", "train")
    groups = np.asarray(data["groups"])
    per_class = np.array([100.0 * np.mean(preds[labels == c] == c) for c in range(len(groups))])
    assert out["per_class"] == pytest.approx(per_class)
    assert out["balanced"] == pytest.approx(per_class.mean())
    assert out["overall"] == pytest.approx(100.0 * np.mean(preds == labels))
    differ = 0
    for g, name in enumerate(data["group_names"]):
        in_group = groups[labels] == g
        if not in_group.any():
            assert out[name] is None
            continue
        assert out[name] == pytest.approx(per_class[groups == g].mean())
        differ += abs(out[name] - 100.0 * np.mean(preds[in_group] == labels[in_group])) > 0.1
    assert differ and abs(out["balanced"] - out["overall"]) > 0.1  # the check tells the two apart


def test_the_results_printed_after_training_end_with_the_gap(gap_run):
    run, metrics = gap_run
    text = format_results(metrics)
    gap = metrics["generalisation_gap"]["gap"]
    assert text.count("generalisation gap") == 1 and f"{gap['overall']:+.2f}" in text
    assert "generalisation gap" in (run / "log.txt").read_text()


def test_gap_can_be_switched_off_and_rejects_negative_sizes(tmp_path):
    with pytest.raises(ConfigError, match="eval.gap_per_class=-1 must be >= 0"):
        load_config("lift", overrides=["eval.gap_per_class=-1"])
    metrics = tailtune.fit(load_config("lift", overrides=[*GAP_RUN, "eval.gap_per_class=0", f"output_dir={tmp_path}",
                                                     "name=nogap"]))
    assert metrics["generalisation_gap"] is None
    assert '<section id="gap">' not in (tmp_path / "nogap" / "report.html").read_text()
