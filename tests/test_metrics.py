"""Metrics against values counted by hand on a small confusion."""

import math

import pytest

from tailtune.metrics import compute_metrics, geometric_mean, harmonic_mean

# 4 classes; class 3 has no test image. Per class: 0: 3/4 right, 1: 1/2, 2: 2/2.
TARGETS = [0, 0, 0, 0, 1, 1, 2, 2]
PREDS = [0, 0, 0, 1, 1, 2, 2, 2]
GROUPS = [0, 0, 1, 2]  # many: class 0 and 1, medium: 2, few: 3


def metrics():
    return compute_metrics(PREDS, TARGETS, GROUPS, ["many", "medium", "few"], 4)


def test_accuracies_overall_groups_and_per_class():
    m = metrics()
    assert m["overall"] == pytest.approx(100 * 6 / 8)
    assert m["many"] == pytest.approx(100 * 4 / 6) and m["medium"] == pytest.approx(100.0) and m["few"] is None
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


def test_no_samples():
    m = compute_metrics([], [], [0, 0], ["many"], 2)
    assert m["overall"] == 0.0 and m["harmonic_mean"] == 0.0 and m["worst_class_index"] is None
