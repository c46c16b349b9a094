"""Post-hoc rebalancing of a trained classifier, no retraining: the arithmetic on logits.

- Logit adjustment (Menon et al., 2021, "Long-tail learning via logit adjustment", eq. 6):
  ``z - tau * log(prior)``, the prior being the training class frequencies of the run. A
  tail class (small prior, very negative log) gains ``tau * |log prior|``.
- tau-normalisation (Kang et al., 2020, "Decoupling representation and classifier"): the
  class vectors of the classifier rescaled to ``w_c / ||w_c||^tau`` (tau = 1: unit norms).
  A classifier trained on long-tailed data gives the head classes the larger norms; dividing
  them out undoes that. It applies to the ``linear`` head only: the ``cosine``, ``l2``,
  ``layernorm`` and text heads normalise their class vectors in the forward already, so
  rescaling them changes nothing (``check_taunorm`` refuses them). The linear head's bias
  is kept as trained, so tau = 0 is the trained head exactly. It is computed from the head's
  logits (:func:`taunorm_logits`), so a run's stored logits (evaluation/logits.py) suffice.

tau is chosen on the validation split (:func:`choose_tau`: the grid value with the best
validation balanced accuracy, the smallest such tau on a tie), never on the test set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from tailtune.errors import ConfigError
from tailtune.evaluation.logits import RunLogits, run_logits
from tailtune.evaluation.metrics import compute_metrics
from tailtune.experiment import Experiment

METHODS = ("la", "taunorm")
METHOD_NAMES = {"la": "logit adjustment", "taunorm": "tau-normalisation"}
# The grids --tau auto searches on the validation split.
GRIDS = {"la": tuple(round(0.1 * i, 1) for i in range(21)),  # 0, 0.1, ..., 2
         "taunorm": tuple(round(0.1 * i, 1) for i in range(11))}  # 0, 0.1, ..., 1
CRITERION = "balanced"  # the validation metric tau maximises (mean per-class accuracy)
ECE_BINS = 15
TAUNORM_HEADS = ("linear",)


def log_prior(train_counts: Sequence[int]) -> np.ndarray:
    """log(n_c / sum n) of the training class counts; a class without training images counts as
    one image (its log prior would be -inf and logit adjustment would predict it everywhere)."""
    counts = np.maximum(np.asarray(train_counts, dtype=np.float64), 1.0)
    return np.log(counts / counts.sum())


def adjust_logits(logits: torch.Tensor, prior_log: np.ndarray | torch.Tensor, tau: float) -> torch.Tensor:
    """Logit adjustment: ``logits - tau * log(prior)`` (row-wise, the same shift for every image)."""
    shift = torch.as_tensor(np.asarray(prior_log), dtype=torch.float64)
    return (logits.double() - tau * shift).to(logits.dtype)


def tau_normalise(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """Class vectors ``w_c / ||w_c||^tau``; a zero row stays zero."""
    norms = weight.double().norm(dim=1, keepdim=True).clamp(min=1e-12)
    return (weight.double() / norms ** tau).to(weight.dtype)


def check_taunorm(head_type: str, where: str = "the run") -> None:
    """Refuse tau-normalisation for a head whose class vectors are normalised in the forward."""
    if head_type not in TAUNORM_HEADS:
        raise ConfigError(
            f"--posthoc taunorm rescales the classifier's class vectors to w / ||w||^tau, but {where} has "
            f"head.type={head_type}, which normalises them in its forward (logits from w / ||w||): every tau "
            "gives the same logits, so there is nothing to adjust. Use --posthoc la (logit adjustment works "
            "with every head), or train with head.type=linear to compare tau-normalisation.")


def taunorm_logits(logits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Logits of a linear head whose class vectors are tau-normalised, from the trained head's
    logits ``z = x W^T + b``: ``x W_tau^T + b = (z - b) / ||w_c||^tau + b`` column by column. The
    same numbers as rescaling the weights and running the head (the mean over a test-time
    ensemble's views commutes with both), and no features needed: the stored logits suffice."""
    norms = weight.detach().double().cpu().norm(dim=1).clamp(min=1e-12)
    b = bias.detach().double().cpu() if bias is not None else torch.zeros_like(norms)
    return ((logits.double() - b) / norms ** tau + b).float()


def summary(logits: torch.Tensor, labels: np.ndarray, groups, group_names, num_classes: int) -> dict:
    """What a post-hoc entry records of one set of logits: overall, balanced and per-group accuracy,
    top-5, ECE (percent, 15 bins) and NLL (nats/image), all from :func:`compute_metrics`."""
    labels = np.asarray(labels, dtype=np.int64)
    logits = logits.double()
    m = compute_metrics(logits.argmax(1).numpy(), labels, groups, group_names, num_classes,
                        logits=logits.numpy() if len(labels) else None)
    return {k: m.get(k) for k in ("overall", "balanced", *group_names, "top5", "ece", "nll")}


def choose_tau(grid: Sequence[float], score: Callable[[float], float]) -> tuple[float, list[tuple[float, float]]]:
    """The grid value with the highest ``score`` (the validation balanced accuracy), the smallest
    such tau on a tie (the least adjustment); returns it and every (tau, score)."""
    scored = [(float(t), float(score(t))) for t in sorted(grid)]
    best = max(s for _, s in scored)
    return next(t for t, s in scored if s >= best - 1e-9), scored


# ---------------------------------------------------------------- on an experiment's model

AUTO = "auto"


def posthoc_results(exp: Experiment, method: str, taus: Sequence, tte: str | None = None, quiet: bool = True,
                    where: str = "the run", logits: RunLogits | None = None) -> dict:
    """Before / after of ``method`` (la | taunorm) on the test split, for each tau of ``taus`` (a
    number, given, or ``"auto"``: chosen on the validation split over ``GRIDS[method]`` by the
    best validation balanced accuracy). The validation split is only read for ``"auto"``.

    ``logits``: where the test and validation logits come from (evaluation.logits.RunLogits: the
    run's stored logits when they match, else the model's, computed once for every method);
    None: the model's. They are the model's own, so the 'before' numbers of the test split are the
    plain evaluation's.

    Returns {"method", "split", "tte", "before", "rows": [{"tau", "tau_from", "after"}], "val":
    [(tau, val balanced), ...] or None, "grid"}.
    """
    if method not in METHODS:
        raise ConfigError(f"--posthoc {method!r} is not a post-hoc method; choose one of {', '.join(METHODS)}.")
    if method == "taunorm":
        check_taunorm(exp.cfg.head.type, where)
    auto = AUTO in taus
    if auto and exp.data.val is None:
        raise no_val_error(where, method)
    tte = tte or exp.cfg.eval.tte
    logits = logits or run_logits(exp, None, None, quiet)
    d = exp.data
    prior = log_prior(d.train_counts)
    head = exp.model.head

    def adjusted(z, tau):
        if method == "la":
            return adjust_logits(z, prior, tau)
        return taunorm_logits(z, head.weight, getattr(head, "bias", None), tau)

    def measure(z, labels):
        return summary(z, labels, d.groups, d.group_names, d.num_classes)

    def split(name):
        z, labels, _ = logits.get(name, tte)
        return torch.from_numpy(np.asarray(z, dtype=np.float32)), labels

    val_curve = chosen = None
    if auto:
        vl, vy = split("val")
        chosen, val_curve = choose_tau(GRIDS[method], lambda t: measure(adjusted(vl, t), vy)[CRITERION])
    tl, ty = split("test")
    rows = []
    for tau in taus:
        value, source = (chosen, "val") if tau == AUTO else (float(tau), "given")
        rows.append({"tau": value, "tau_from": source, "after": measure(adjusted(tl, value), ty)})
    return {"method": method, "split": "test", "tte": tte, "before": measure(tl, ty), "rows": rows,
            "val": val_curve, "grid": list(GRIDS[method]) if auto else None}


def no_val_error(where: str, method: str) -> ConfigError:
    return ConfigError(
        f"--posthoc {method} --tau auto chooses tau on the validation split, and {where} has none (never on the "
        "test set). Give tau (e.g. --tau 1), or train the run with a validation split: data.val=holdout holds "
        "images of every class out of training (data.holdout_per_class=N sets how many).")
