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
  is kept as trained, so tau = 0 is the trained head exactly.

tau is chosen on the validation split (:func:`choose_tau`: the grid value with the best
validation balanced accuracy, the smallest such tau on a tie), never on the test set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from tailtune.data.base import Transformed
from tailtune.data.transforms import eval_transform
from tailtune.errors import ConfigError
from tailtune.evaluation.evaluate import predict_split
from tailtune.evaluation.metrics import compute_metrics
from tailtune.experiment import Experiment, tte_options

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


def taunorm_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Logits of a linear head whose class vectors are tau-normalised: ``x W_tau^T + b``."""
    w = tau_normalise(weight.detach().double().cpu(), tau)
    out = features.double() @ w.t()
    if bias is not None:
        out = out + bias.detach().double().cpu()
    return out.float()


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


def split_outputs(exp: Experiment, split: str, tte: str, features: bool, quiet: bool = True):
    """(logits, features or None, labels) of the model on ``split`` with the test-time ensemble
    ``tte`` (both averaged over the views, as the plain evaluation averages the logits; the
    head of a linear classifier commutes with that mean). The logits are the model's own, so
    the 'before' numbers of the test split are the plain evaluation's."""
    dataset = getattr(exp.data, split)
    view = eval_transform(exp.backbone.preprocess, tte, tte_options(exp.cfg))
    exp.model.eval()
    model = exp.model
    if features:
        def fn(images):
            f = model.backbone(images)
            return torch.cat([model.head(f).float(), f.float()], 1)
    else:
        fn = model
    out, labels = predict_split(exp, fn, Transformed(dataset, view), quiet, f"posthoc {split} ({tte})")
    c = exp.data.num_classes
    return out[:, :c], (out[:, c:] if features else None), labels.numpy()


def posthoc_results(exp: Experiment, method: str, taus: Sequence, tte: str | None = None, quiet: bool = True,
                    where: str = "the run") -> dict:
    """Before / after of ``method`` (la | taunorm) on the test split, for each tau of ``taus`` (a
    number, given, or ``"auto"``: chosen on the validation split over ``GRIDS[method]`` by the
    best validation balanced accuracy). The validation split is only read for ``"auto"``.

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
    d = exp.data
    prior = log_prior(d.train_counts)
    head = exp.model.head

    def adjusted(logits, feats, tau):
        if method == "la":
            return adjust_logits(logits, prior, tau)
        return taunorm_logits(feats, head.weight, getattr(head, "bias", None), tau)

    def measure(logits, labels):
        return summary(logits, labels, d.groups, d.group_names, d.num_classes)

    need_feats = method == "taunorm"
    val_curve = chosen = None
    if auto:
        vl, vf, vy = split_outputs(exp, "val", tte, need_feats, quiet)
        chosen, val_curve = choose_tau(GRIDS[method], lambda t: measure(adjusted(vl, vf, t), vy)[CRITERION])
    tl, tf, ty = split_outputs(exp, "test", tte, need_feats, quiet)
    rows = []
    for tau in taus:
        value, source = (chosen, "val") if tau == AUTO else (float(tau), "given")
        rows.append({"tau": value, "tau_from": source, "after": measure(adjusted(tl, tf, value), ty)})
    return {"method": method, "split": "test", "tte": tte, "before": measure(tl, ty), "rows": rows,
            "val": val_curve, "grid": list(GRIDS[method]) if auto else None}


def no_val_error(where: str, method: str) -> ConfigError:
    return ConfigError(
        f"--posthoc {method} --tau auto chooses tau on the validation split, and {where} has none (never on the "
        "test set). Give tau (e.g. --tau 1), or train the run with a validation split: data.val=holdout holds "
        "images of every class out of training (data.holdout_per_class=N sets how many).")
