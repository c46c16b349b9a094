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


# --- probability metrics (issue 17: 2, 3): a 3-class example counted by hand ---
# 4 images, classes 0 (many), 1 (medium), 2 (few); probabilities given directly.
PROBS3 = np.array([[0.7, 0.2, 0.1],    # label 0, right, confidence 0.7  -> bin (10/15, 11/15]
                   [0.4, 0.5, 0.1],    # label 0, wrong (predicts 1), confidence 0.5 -> bin (7/15, 8/15]
                   [0.1, 0.8, 0.1],    # label 1, right, confidence 0.8  -> bin (11/15, 12/15]
                   [0.3, 0.3, 0.4]])   # label 2, right, confidence 0.4  -> bin (5/15, 6/15]
TARGETS3 = np.array([0, 0, 1, 2])
GROUPS3 = [0, 1, 2]


def probability_case():
    return compute_metrics(PROBS3.argmax(1), TARGETS3, GROUPS3, ["many", "medium", "few"], 3, probs=PROBS3)


def test_ece_nll_brier_top5_by_hand():
    m = probability_case()
    # every image in its own bin: ECE = mean |correct - confidence| = (0.3 + 0.5 + 0.2 + 0.6) / 4
    assert m["ece"] == pytest.approx(100 * 1.6 / 4)
    assert m["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.4) + math.log(0.8) + math.log(0.4)) / 4)
    brier = [0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2, 0.6 ** 2 + 0.5 ** 2 + 0.1 ** 2, 0.1 ** 2 + 0.2 ** 2 + 0.1 ** 2,
             0.3 ** 2 + 0.3 ** 2 + 0.6 ** 2]
    assert m["brier"] == pytest.approx(sum(brier) / 4)
    assert m["top5"] == 100.0  # C = 3 <= 5: every label is among the top min(5, C)
    # many = the images of class 0: the right one at 0.7, the wrong one at 0.5
    g = m["group_calibration"]
    assert g["many"]["ece"] == pytest.approx(100 * (0.3 + 0.5) / 2)
    assert g["many"]["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2)
    assert g["few"]["brier"] == pytest.approx(brier[3]) and g["few"]["top5"] == 100.0


def test_ece_with_images_sharing_a_bin():
    # two images in (10/15, 11/15]: confidences 0.7 and 0.72, one right: |0.5 - 0.71| for both
    probs = np.array([[0.7, 0.3], [0.28, 0.72]])
    m = compute_metrics(probs.argmax(1), [0, 0], [0, 0], ["many", "few"], 2, probs=probs)
    assert m["ece"] == pytest.approx(100 * abs(0.5 - 0.71))
    rel = m["reliability"]
    assert rel["bins"] == 15 and rel["overall"]["count"][10] == 2 and sum(rel["overall"]["count"]) == 2
    assert rel["overall"]["confidence"][10] == pytest.approx(0.71) and rel["overall"]["accuracy"][10] == 50.0
    assert rel["overall"]["confidence"][0] is None and rel["overall"]["accuracy"][0] is None
    assert rel["few"]["count"] == [0] * 15 and rel["few"]["accuracy"] == [None] * 15
    assert m["group_calibration"]["few"] == {"ece": None, "nll": None, "brier": None, "top5": None}


def test_classwise_ece_by_hand():
    m = probability_case()
    # class c: over all 4 images, bins on p_c against "the label is c"; every bin |sum(hit - p)| / N
    # class 0: p 0.7 (hit), 0.4 (hit), 0.1, 0.3 -> bins (10/15], (6/15], (1/15..2/15], (4/15]: all apart
    c0 = (abs(1 - 0.7) + abs(1 - 0.4) + 0.1 + 0.3) / 4
    # class 1: p 0.2, 0.5, 0.8 (hit), 0.3 -> all in different bins
    c1 = (0.2 + 0.5 + abs(1 - 0.8) + 0.3) / 4
    # class 2: p 0.1, 0.1, 0.1 (one bin, no hit: |0 - 0.3|), 0.4 (hit)
    c2 = (abs(0 - 0.3) + abs(1 - 0.4)) / 4
    assert m["classwise_ece"] == pytest.approx(100 * (c0 + c1 + c2) / 3)


def test_per_class_precision_recall_f1_and_group_confusion():
    m = probability_case()
    # predictions 0, 1, 1, 2: class 0 precision 1/1 recall 1/2; class 1 1/2, 1/1; class 2 1/1, 1/1
    assert m["precision_per_class"] == pytest.approx([100.0, 50.0, 100.0])
    assert m["recall_per_class"] == pytest.approx([50.0, 100.0, 100.0])
    assert m["f1_per_class"] == pytest.approx([100 * 2 / 3, 100 * 2 / 3, 100.0])
    gc = m["group_confusion"]
    assert gc["groups"] == ["many", "medium", "few"]
    assert gc["matrix"] == [[50.0, 50.0, 0.0], [0.0, 100.0, 0.0], [0.0, 0.0, 100.0]]


def test_classes_without_test_images_are_none_and_never_predicted_precision_is_zero():
    m = metrics()  # class 3 has no test image; every class with images is predicted
    assert m["precision_per_class"][3] is None and m["recall_per_class"][3] is None and m["f1_per_class"][3] is None
    m = compute_metrics([0, 0, 0], [0, 1, 2], [0, 0, 1], ["many", "few"], 3)
    assert m["precision_per_class"] == pytest.approx([100 / 3, 0.0, 0.0])  # 1 and 2 never predicted
    assert m["group_confusion"]["matrix"] == [[100.0, 0.0], [100.0, 0.0]]
    m = compute_metrics([0], [0], [0, 1], ["many", "few"], 2)
    assert m["group_confusion"]["matrix"] == [[100.0, 0.0], [None, None]]  # few: no test images


def test_without_logits_the_probability_keys_are_absent():
    m = metrics()
    assert not {"top5", "nll", "brier", "ece", "classwise_ece", "group_calibration", "reliability"} & set(m)


def test_probability_metrics_agree_with_sklearn_on_random_data():
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    n, c = 700, 12
    targets = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) * 2 + 3 * np.eye(c)[targets] * (rng.random((n, 1)) < 0.5)
    groups = [0] * 4 + [1] * 4 + [2] * 4
    m = compute_metrics(logits.argmax(1), targets, groups, ["many", "medium", "few"], c, logits=logits)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = np.arange(c)
    assert m["top5"] == pytest.approx(100 * skm.top_k_accuracy_score(targets, logits, k=5, labels=labels))
    assert m["nll"] == pytest.approx(skm.log_loss(targets, probs, labels=labels))
    assert m["brier"] == pytest.approx(np.mean(((probs - np.eye(c)[targets]) ** 2).sum(1)))
    p, r, f, _ = skm.precision_recall_fscore_support(targets, logits.argmax(1), labels=labels, zero_division=0)
    assert m["precision_per_class"] == pytest.approx(100 * p) and m["f1_per_class"] == pytest.approx(100 * f)
    assert m["recall_per_class"] == pytest.approx(m["per_class"])
    few = np.isin(targets, [8, 9, 10, 11])
    assert m["group_calibration"]["few"]["top5"] == pytest.approx(
        100 * skm.top_k_accuracy_score(targets[few], logits[few], k=5, labels=labels))
    assert m["group_calibration"]["few"]["nll"] == pytest.approx(skm.log_loss(targets[few], probs[few], labels=labels))
    # ECE against a direct loop over the 15 bins (lower edge open, upper closed)
    conf, right = probs.max(1), probs.argmax(1) == targets
    ece = sum(np.sum(sel) / n * abs(right[sel].mean() - conf[sel].mean())
              for b in range(15) if (sel := (conf > b / 15) & (conf <= (b + 1) / 15)).any())
    assert m["ece"] == pytest.approx(100 * ece)
    assert sum(m["reliability"]["overall"]["count"]) == n
    assert sum(sum(m["reliability"][g]["count"]) for g in ("many", "medium", "few")) == n
    # rows in chunks give the same numbers as one block
    from tailtune.evaluation import metrics as M

    chunk = M._CHUNK
    try:
        M._CHUNK = 64
        again = compute_metrics(logits.argmax(1), targets, groups, ["many", "medium", "few"], c, logits=logits)
    finally:
        M._CHUNK = chunk
    assert again["classwise_ece"] == pytest.approx(m["classwise_ece"]) and again["top5"] == m["top5"]
    for g in ("many", "medium", "few"):
        assert again["group_calibration"][g] == pytest.approx(m["group_calibration"][g])
    assert again["reliability"] == m["reliability"]


def test_nll_from_logits_is_exact_where_probabilities_underflow():
    logits = np.array([[0.0, 800.0]])  # p(label 0) = e^-800 underflows to 0 in float64
    m = compute_metrics([1], [0], [0, 0], ["all"], 2, logits=logits)
    assert m["nll"] == pytest.approx(800.0)


def test_no_samples_with_logits():
    m = compute_metrics([], [], [0, 0], ["many"], 2, logits=np.zeros((0, 2)))
    assert m["top5"] is None and m["ece"] is None and m["classwise_ece"] is None
    assert m["reliability"]["overall"]["count"] == [0] * 15


def test_differing_metrics_on_the_new_keys_and_old_metrics():
    from tailtune.evaluation.metrics import differing_metrics

    now = probability_case()
    assert differing_metrics(now, now) == []
    old = {k: v for k, v in now.items() if k not in ("top5", "nll", "ece", "reliability", "group_calibration")}
    assert differing_metrics(old, now) == []  # an older metrics.json: only the keys both hold
    changed = json_copy(now)
    changed["reliability"]["overall"]["accuracy"][10] = 12.0
    changed["group_calibration"]["few"]["ece"] = None
    changed["ece"] += 1e-6  # within the probability metrics' tolerance
    names = [d[0] for d in differing_metrics(changed, now)]
    assert names == ["group_calibration.few.ece", "reliability.overall.accuracy[10]"]
    assert differing_metrics(changed, now)[0][1:] == ("-", f"{now['group_calibration']['few']['ece']:.6g}")


def json_copy(d):
    import json

    return json.loads(json.dumps(d))


def test_non_finite_logits_have_no_probability_metrics():
    logits = np.array([[0.0, np.nan], [1.0, 0.0]])
    m = compute_metrics(logits.argmax(1), [0, 0], [0, 0], ["all"], 2, logits=logits)
    assert m["overall"] == 50.0  # the argmax is still measured
    assert m["nll"] is None and m["ece"] is None and m["top5"] is None
    assert m["group_calibration"]["all"]["nll"] is None and m["reliability"]["overall"]["count"] == [0] * 15
