"""Temperature scaling (Guo et al. 2017): one scalar T > 0 dividing the logits, fitted on the
validation split's logits by minimising their negative log-likelihood, and the calibration
metrics of the test split after it.

softmax(z / T) keeps every image's argmax, so accuracy, top-5 and the per-class numbers are the
same; only the confidence (ECE, NLL, Brier) changes. The fit is a bounded 1-D search
(scipy's ``minimize_scalar``, bounded Brent) over log T in [log 0.01, log 100]: the NLL is convex
in 1 / T (a log-sum-exp of a linear function minus a linear one), so it has one minimum in log T
and the search finds it to ~1e-5 in log T; T = 1 is kept if the search is not better on the
validation logits, so the validation NLL never increases.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from tailtune.config import CALIBRATIONS
from tailtune.errors import ConfigError
from tailtune.evaluation.metrics import probability_metrics

LOG_T_BOUNDS = (np.log(0.01), np.log(100.0))


def mean_nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean -log softmax(logits / T)[label], in nats."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    labels = np.asarray(labels, dtype=np.int64)
    return float(-log_softmax(z, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits, labels) -> float:
    """The T minimising :func:`mean_nll` of (validation) logits; 1.0 when that is not worse."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ConfigError("temperature scaling needs validation images; the validation split is empty.")
    z = np.asarray(logits, dtype=np.float64)
    res = minimize_scalar(lambda u: mean_nll(z, labels, float(np.exp(u))), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-5})
    t = float(np.exp(res.x))
    return t if mean_nll(z, labels, t) < mean_nll(z, labels, 1.0) else 1.0


def check_calibration(method: str, has_val: bool, where: str = "eval.calibrate") -> None:
    """Refuse an unknown method, or temperature scaling without a validation split to fit it on."""
    if method not in CALIBRATIONS:
        raise ConfigError(f"{where}={method!r} is not valid; choose one of {', '.join(CALIBRATIONS)}.")
    if method == "temperature" and not has_val:
        raise ConfigError(f"{where}=temperature fits the temperature on the validation split and this run has "
                          "none (data.val=none, or a benchmark without one); train with data.val=holdout to hold "
                          "one out of the training images (the test set is never used to fit it).")


def temperature_record(val_logits, val_labels, test_logits, test_labels, groups, group_names, num_classes: int,
                       tte: str) -> dict:
    """metrics.json's "calibration": T fitted on the validation logits, the test split's ECE, NLL
    and Brier score after dividing its logits by T (``tte``: the views both were taken with)."""
    t = fit_temperature(val_logits, val_labels)
    after = probability_metrics(test_labels, groups, group_names, num_classes,
                                logits=np.asarray(test_logits, dtype=np.float64) / t)
    return {"method": "temperature", "temperature": t, "fitted_on": "val", "tte": tte,
            "test": {k: after[k] for k in ("ece", "nll", "brier")}}
