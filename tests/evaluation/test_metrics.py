"""Metrics against values counted by hand on a small confusion."""

import math

import numpy as np
import pytest

from tailtune.evaluation.metrics import compute_metrics, geometric_mean, harmonic_mean

# 4 classes; class 3 has no test image. Per class: 0: 3/4 right, 1: 1/2, 2: 2/2.
TARGETS = [0, 0, 0, 0, 1, 1, 2, 2]
PREDS = [0, 0, 0, 1, 1, 2, 2, 2]
GROUPS = [0, 0, 1, 2]  # many: class 0 and 1, medium: 2, few: 3


def metrics():
    return compute_metrics(PREDS, TARGETS, GROUPS, ["many", "medium", "few"], 4)


def test_accuracies_overall_groups_and_per_class():
    m = metrics()
    assert m["overall"] == pytest.approx(100 * 6 / 8)
    # many: the mean of its classes' accuracies (75 and 50), not its images' (4/6 = 66.7)
    assert m["many"] == pytest.approx(62.5) and m["medium"] == pytest.approx(100.0) and m["few"] is None
    assert m["balanced"] == pytest.approx(75.0)  # (75 + 50 + 100) / 3; class 3 has no test image
    assert m["per_class"][:3] == pytest.approx([75.0, 50.0, 100.0]) and m["per_class"][3] is None
    assert m["num_samples"] == 8


def test_macro_f1():
    # precision: class 0 3/3, class 1 1/2, class 2 2/3; recall 3/4, 1/2, 1
    f1 = [2 * p * r / (p + r) for p, r in [(1, 0.75), (0.5, 0.5), (2 / 3, 1.0)]]
    assert metrics()["macro_f1"] == pytest.approx(100 * sum(f1) / 3)


def test_macro_f1_is_over_the_classes_with_test_images():
    # 5 classes; 2 and 3 have no test image, 3 is predicted once (a miss of class 0), 2 never.
    # Class 0: precision 1/1, recall 1/2 -> F1 2/3; class 1: precision 2/3, recall 1 -> 4/5;
    # class 4 (present, never predicted): precision 0 (nothing predicted), recall 0 -> F1 0.
    m = compute_metrics([0, 3, 1, 1, 1], [0, 0, 1, 1, 4], [0, 0, 0, 0, 0], ["all"], 5)
    assert m["macro_f1"] == pytest.approx(100 * (2 / 3 + 4 / 5 + 0) / 3)
    assert compute_metrics([], [], [0, 0], ["all"], 2)["macro_f1"] == 0.0


def test_worst_class_and_means_of_per_class_accuracy():
    m = metrics()
    accs = [75.0, 50.0, 100.0]
    assert m["worst_class"] == 50.0 and m["worst_class_index"] == 1
    assert m["mean_class"] == pytest.approx(75.0)
    assert m["harmonic_mean"] == pytest.approx(3 / (1 / 75 + 1 / 50 + 1 / 100))
    assert m["geometric_mean"] == pytest.approx((75 * 50 * 100) ** (1 / 3))
    assert m["harmonic_mean"] < m["geometric_mean"] < m["mean_class"]  # HM <= GM <= AM, strict here
    assert harmonic_mean(accs) == pytest.approx(3 / sum(1 / a for a in accs))
    assert geometric_mean(accs) == pytest.approx(math.exp(sum(math.log(a) for a in accs) / 3))


def test_a_class_at_zero_makes_harmonic_and_geometric_mean_zero():
    m = compute_metrics([0, 0, 0, 0], [0, 0, 1, 1], [0, 0], ["many", "few"], 2)
    assert m["per_class"] == [100.0, 0.0]
    assert m["worst_class"] == 0.0 and m["worst_class_index"] == 1
    assert m["harmonic_mean"] == 0.0 and m["geometric_mean"] == 0.0
    assert m["mean_class"] == 50.0 and m["overall"] == 50.0
    # The reference clamps a class at 0.001% instead (reference: utils/evaluator.py:92): it would
    # report 100 / mean(100 / 100, 100 / 0.001) = 0.002; tailtune takes the limit, 0.


def test_harmonic_mean_agrees_with_the_references_clamp_when_no_class_is_at_zero():
    accs = [100 / 7, 0.001, 64.0, 100.0]  # one right image of 7; the clamp's floor itself
    clamped = 100.0 / np.mean([1.0 / (max(a, 0.001) / 100.0) for a in accs])
    assert harmonic_mean(accs) == pytest.approx(clamped)


def test_groups_are_class_means_on_an_unbalanced_test_set():
    # 3 classes, all "many"; test images 10 / 2 / 4 per class, right 9 / 0 / 2.
    targets = [0] * 10 + [1] * 2 + [2] * 4
    preds = [0] * 9 + [1] + [0, 0] + [2, 2, 0, 0]
    m = compute_metrics(preds, targets, [0, 0, 0], ["many", "few"], 3)
    assert m["per_class"] == pytest.approx([90.0, 0.0, 50.0])
    assert m["overall"] == pytest.approx(100 * 11 / 16)  # images: 68.75
    assert m["many"] == pytest.approx(140 / 3) and m["balanced"] == pytest.approx(140 / 3)  # classes: 46.67
    assert m["few"] is None  # a group without classes


def test_a_class_without_test_images_is_left_out_of_its_group():
    # many = classes 0 and 1; class 1 has no test image, so many is class 0's accuracy alone
    # (counting it as 0% would give 25, as 100% 75).
    m = compute_metrics([0, 1], [0, 0], [0, 0, 1], ["many", "few"], 3)
    assert m["per_class"] == [50.0, None, None]
    assert m["many"] == 50.0 and m["few"] is None and m["balanced"] == 50.0 and m["mean_class"] == 50.0


def test_balanced_is_sklearns_balanced_accuracy():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    targets = rng.choice(7, size=300, p=[0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02])
    preds = np.where(rng.random(300) < 0.6, targets, rng.integers(0, 7, 300))
    m = compute_metrics(preds, targets, [0, 0, 1, 1, 1, 2, 2], ["many", "medium", "few"], 7)
    assert m["balanced"] == pytest.approx(100 * metrics.balanced_accuracy_score(targets, preds))
    assert m["overall"] == pytest.approx(100 * metrics.accuracy_score(targets, preds))
    assert m["balanced"] != pytest.approx(m["overall"])  # unbalanced: the two differ
    recall = metrics.recall_score(targets, preds, average=None, labels=range(7))
    assert m["few"] == pytest.approx(100 * recall[5:].mean())


def test_no_samples():
    m = compute_metrics([], [], [0, 0], ["many"], 2)
    assert m["overall"] == 0.0 and m["harmonic_mean"] == 0.0 and m["worst_class_index"] is None
