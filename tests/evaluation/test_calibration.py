"""Temperature scaling: fitted on validation logits, argmax unchanged, validation NLL not higher."""

import numpy as np
import pytest

from tailtune.errors import ConfigError
from tailtune.evaluation.calibration import (
    check_calibration,
    fit_temperature,
    mean_nll,
    temperature_record,
)
from tailtune.evaluation.metrics import compute_metrics


def overconfident(n: int, c: int = 6, scale: float = 4.0, seed: int = 0):
    """Logits whose argmax is right 60% of the time, scaled up: overconfident, so T > 1 helps."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    right = rng.random(n) < 0.6
    logits[right, labels[right]] += 2.0
    return scale * logits, labels


def test_fitted_temperature_lowers_val_nll_and_keeps_every_argmax():
    val, yv = overconfident(400)
    test, yt = overconfident(300, seed=1)
    t = fit_temperature(val, yv)
    assert t > 1.5  # the logits were scaled up by 4
    assert mean_nll(val, yv, t) < mean_nll(val, yv, 1.0)
    assert mean_nll(val, yv, t) <= min(mean_nll(val, yv, t * f) for f in (0.9, 0.99, 1.01, 1.1)) + 1e-9
    assert ((test / t).argmax(1) == test.argmax(1)).all()
    groups, names = [0, 0, 1, 1, 2, 2], ["many", "medium", "few"]
    before = compute_metrics(test.argmax(1), yt, groups, names, 6, logits=test)
    after = compute_metrics((test / t).argmax(1), yt, groups, names, 6, logits=test / t)
    for key in ("overall", "balanced", "many", "few", "top5", "per_class", "macro_f1"):
        assert after[key] == before[key]
    assert after["ece"] < before["ece"] and after["nll"] < before["nll"]
    record = temperature_record(val, yv, test, yt, groups, names, 6, "none")
    assert record["method"] == "temperature" and record["fitted_on"] == "val" and record["tte"] == "none"
    assert record["temperature"] == pytest.approx(t)
    assert record["test"] == pytest.approx({k: after[k] for k in ("ece", "nll", "brier")})


def test_a_calibrated_model_keeps_a_temperature_near_one_and_never_a_worse_nll():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3000, 5))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])  # labels drawn from the softmax itself
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(1.0, abs=0.1)
    assert mean_nll(logits, labels, t) <= mean_nll(logits, labels, 1.0)


def test_underconfident_logits_get_a_temperature_below_one():
    val, yv = overconfident(400, scale=0.3)
    assert fit_temperature(val, yv) < 1.0


def test_temperature_needs_a_validation_split():
    check_calibration("none", False)
    check_calibration("temperature", True)
    with pytest.raises(ConfigError, match=r"eval.calibrate=temperature .*data.val=holdout"):
        check_calibration("temperature", False)
    with pytest.raises(ConfigError, match="--calibrate='platt' is not valid; choose one of none, temperature"):
        check_calibration("platt", True, "--calibrate")
    with pytest.raises(ConfigError, match="validation split is empty"):
        fit_temperature(np.zeros((0, 3)), [])
