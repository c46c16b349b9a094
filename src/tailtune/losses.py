"""Training losses behind one registry. Each maps (logits, targets) -> a scalar.

Every loss is built from the loss config and the training class counts n_j (the prior is
n_j / sum n). Losses that change over training (LDAM with deferred re-weighting) take the
epoch through ``set_epoch``; the trainer calls it before each epoch.

Weighted losses (cb, grw, ldam with DRW) use PyTorch's weighted mean: sum_i w_{y_i} l_i /
sum_i w_{y_i}, the convention of the LDAM-DRW and LIFT code; the weights are also
normalised to mean 1 over classes so that they read the same in logs and configs.

Soft targets: a loss whose class says ``soft_targets = True`` also takes (N, C) class
distributions q (mixup / CutMix / Remix, training/mixing.py) and applies ``loss.label_smoothing``
eps (q -> (1 - eps) q + eps / C, hard labels being one-hot q). With soft targets each loss is
the linear extension of its hard-label form, sum_j q_ij L(z_i, j), which for two mixed labels is
mixup's lam L(z, y_a) + (1 - lam) L(z, y_b) and for one-hot q the hard-label loss itself; a
weighted loss keeps its weighted mean, each (image i, class j) counting with weight q_ij w_j:
sum_ij q_ij w_j L_ij / sum_ij q_ij w_j. LADE's
regulariser estimates per-class batch statistics from hard labels: it takes none of them.
Hard labels without smoothing run the hard-label code unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tailtune.config import LossConfig, _check_positive, options_of, setting
from tailtune.errors import ConfigError
from tailtune.registry import Registry

LOSSES: Registry = Registry("loss", section="loss", chosen_by="loss.name")  # options: loss.<name>.*


def _check_beta(key: str, beta: float) -> None:
    if not 0 < beta < 1:
        raise ConfigError(f"{key}={beta!r} must be in (0, 1) (0.9999 is usual).")


@dataclass
class FocalOptions:
    """focal: the focusing exponent."""

    MOVED: ClassVar[dict[str, str]] = {"gamma": "gamma"}

    gamma: float = setting(2.0, "focal: focusing exponent")

    def __post_init__(self) -> None:
        _check_positive("loss.focal", "gamma", self.gamma, allow_zero=True)


@dataclass
class LaOptions:
    """la: the logit adjustment."""

    MOVED: ClassVar[dict[str, str]] = {"tau": "tau"}

    tau: float = setting(1.0, "logit adjustment strength (la)")

    def __post_init__(self) -> None:
        _check_positive("loss.la", "tau", self.tau, allow_zero=True)


@dataclass
class CbOptions:
    """cb: the class-balanced weights."""

    MOVED: ClassVar[dict[str, str]] = {"beta": "beta"}

    beta: float = setting(0.9999, "cb: class-balanced weights (1 - beta) / (1 - beta^n_j)")

    def __post_init__(self) -> None:
        _check_beta("loss.cb.beta", self.beta)


@dataclass
class LdamOptions:
    """ldam: the margins and the deferred re-weighting."""

    MOVED: ClassVar[dict[str, str]] = {"ldam_max_margin": "max_margin", "ldam_scale": "scale",
                                       "drw_epoch": "drw_epoch", "beta": "beta"}

    max_margin: float = setting(0.5, "ldam: margin of the rarest class")
    scale: float = setting(25.0, "ldam: the margin is subtracted as loss.ldam.scale * m_j (match head.scale)")
    drw_epoch: Optional[int] = setting(  # noqa: UP045  (OmegaConf reads the annotation)
        None, "ldam: deferred re-weighting from this epoch (0-based); null = off")
    beta: float = setting(0.9999, "ldam's DRW: class-balanced weights (1 - beta) / (1 - beta^n_j)")

    def __post_init__(self) -> None:
        _check_positive("loss.ldam", "max_margin", self.max_margin)
        _check_positive("loss.ldam", "scale", self.scale)
        _check_positive("loss.ldam", "drw_epoch", self.drw_epoch, allow_zero=True)
        _check_beta("loss.ldam.beta", self.beta)


@dataclass
class LadeOptions:
    """lade: the weight and the inner regularisation of the LADE regulariser."""

    MOVED: ClassVar[dict[str, str]] = {"lade_alpha": "alpha", "lade_lambda": "remine_lambda"}

    alpha: float = setting(0.1, "lade: weight of the LADE regulariser")
    remine_lambda: float = setting(0.1, "lade: ReMINE regularisation inside the regulariser")

    def __post_init__(self) -> None:
        _check_positive("loss.lade", "alpha", self.alpha, allow_zero=True)
        _check_positive("loss.lade", "remine_lambda", self.remine_lambda, allow_zero=True)


def smoothed(targets: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor | None:
    """``targets`` (hard labels (N,) or distributions (N, C)) as (N, C) float distributions with
    label smoothing ``eps``: (1 - eps) q + eps / C (timm's ``mixup_target`` convention); None for
    hard labels without smoothing (the hard-label code then runs as before)."""
    if targets.dim() == 1:
        if not eps:
            return None
        targets = F.one_hot(targets, num_classes).to(torch.float32)
    q = targets.float()
    return q * (1.0 - eps) + eps / num_classes if eps else q


def soft_cross_entropy(logits: torch.Tensor, q: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i sum_j q_ij w_j (-log softmax(z_i)_j) / sum_i sum_j q_ij w_j (w = 1: the batch mean).

    For one-hot q this is ``F.cross_entropy(logits, y, weight=weight)`` (PyTorch's weighted mean)."""
    per_class = -F.log_softmax(logits.float(), dim=1) * q
    if weight is None:
        return per_class.sum(1).mean()
    return (per_class * weight).sum() / (q * weight).sum()


def _counts(class_counts) -> torch.Tensor:
    counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64), dtype=torch.float64)
    if counts.dim() != 1 or len(counts) == 0:
        raise ConfigError(f"class counts must be a non-empty list, got shape {tuple(counts.shape)}.")
    if (counts < 0).any() or counts.sum() <= 0:
        raise ConfigError("class counts must be >= 0 with at least one training image.")
    return counts


def log_prior(class_counts) -> torch.Tensor:
    """log(n_j / sum n); a class without training images gets log(0) = -inf (it cannot be learnt)."""
    counts = _counts(class_counts)
    return torch.log(counts / counts.sum()).float()


def class_balanced_weights(class_counts, beta: float) -> torch.Tensor:
    """Cui et al. (2019): w_j = (1 - beta) / (1 - beta^n_j), normalised to mean 1."""
    counts = _counts(class_counts).clamp(min=1)  # an empty class would divide by zero; it is never a target
    w = (1.0 - beta) / (1.0 - beta ** counts)
    return (w / w.mean()).float()


def inverse_prior_weights(class_counts) -> torch.Tensor:
    """w_j proportional to 1 / prior_j, normalised to mean 1 (generalised re-weighting, exponent 1)."""
    counts = _counts(class_counts).clamp(min=1)
    w = counts.sum() / counts
    return (w / w.mean()).float()


class _SoftTargets(nn.Module):
    """Base of the losses that take soft targets: keeps ``loss.label_smoothing``."""

    soft_targets: ClassVar[bool] = True

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.smoothing = float(getattr(cfg, "label_smoothing", 0.0) or 0.0)

    def soft(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """The (smoothed) target distributions, or None for hard labels without smoothing."""
        return smoothed(targets, logits.shape[1], self.smoothing)


class _PriorLoss(_SoftTargets):
    """Base: keeps the class counts' log prior as a (device-following) buffer."""

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__(cfg)
        self.register_buffer("log_prior", log_prior(class_counts), persistent=False)


@LOSSES.register("ce", help="cross-entropy")
class CrossEntropy(_SoftTargets):
    """Plain cross-entropy."""

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__(cfg)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        q = self.soft(logits, targets)
        if q is not None:
            return soft_cross_entropy(logits, q)
        return F.cross_entropy(logits.float(), targets)


@LOSSES.register("focal", help="focal loss (1 - p_y)^gamma * CE, gamma = loss.focal.gamma (2)", options=FocalOptions)
class Focal(_SoftTargets):
    """Focal loss (Lin et al., 2017): mean over the batch of (1 - p_y)^gamma * -log p_y.

    Soft targets q: mean over the batch of sum_j q_j (1 - p_j)^gamma * -log p_j."""

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__(cfg)
        self.gamma = options_of(cfg, "focal", FocalOptions).gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        q = self.soft(logits, targets)
        if q is not None:
            logp = F.log_softmax(logits.float(), dim=1)
            return (-(q * (1.0 - logp.exp()) ** self.gamma * logp).sum(1)).mean()
        logp = F.log_softmax(logits.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
        return (-(1.0 - logp.exp()) ** self.gamma * logp).mean()


@LOSSES.register("la", help="logit-adjusted CE: CE(z + tau * log prior), tau = loss.la.tau (1)", options=LaOptions)
class LogitAdjusted(_PriorLoss):
    """Logit-adjusted cross-entropy: CE(z + tau * log prior) (Menon et al., 2021)."""

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__(cfg, class_counts)
        self.tau = options_of(cfg, "la", LaOptions).tau

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        q = self.soft(logits, targets)
        if q is not None:
            return soft_cross_entropy(logits.float() + self.tau * self.log_prior, q)
        return F.cross_entropy(logits.float() + self.tau * self.log_prior, targets)


@LOSSES.register("bs", help="balanced softmax: CE(z + log prior)")
class BalancedSoftmax(_PriorLoss):
    """Balanced softmax (Ren et al., 2020): CE(z + log prior)."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        q = self.soft(logits, targets)
        if q is not None:
            return soft_cross_entropy(logits.float() + self.log_prior, q)
        return F.cross_entropy(logits.float() + self.log_prior, targets)


class _Weighted(_SoftTargets):
    """Cross-entropy with fixed per-class weights (PyTorch's weighted mean)."""

    def __init__(self, cfg: LossConfig, weights: torch.Tensor):
        super().__init__(cfg)
        self.register_buffer("weight", weights, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        q = self.soft(logits, targets)
        if q is not None:
            return soft_cross_entropy(logits, q, self.weight)
        return F.cross_entropy(logits.float(), targets, weight=self.weight)


@LOSSES.register("cb", help="class-balanced CE, w_j = (1 - beta) / (1 - beta^n_j), beta = loss.cb.beta (0.9999)",
                 options=CbOptions)
class ClassBalanced(_Weighted):
    """Class-balanced cross-entropy (Cui et al., 2019) with effective-number weights."""

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__(cfg, class_balanced_weights(class_counts, options_of(cfg, "cb", CbOptions).beta))


@LOSSES.register("grw", help="re-weighted CE, w_j proportional to 1 / prior_j")
class InversePriorWeighted(_Weighted):
    """Generalised re-weighting (Zhang et al., 2021) with exponent 1: w_j proportional to 1 / prior_j."""

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__(cfg, inverse_prior_weights(class_counts))


@LOSSES.register("ldam", help="LDAM margins s * m_j, m_j ~ n_j^(-1/4), max loss.ldam.max_margin; DRW from "
                 "loss.ldam.drw_epoch", options=LdamOptions)
class LDAM(_SoftTargets):
    """Label-distribution-aware margin loss (Cao et al., 2019), optional deferred re-weighting.

    Margins m_j = C / n_j^(1/4), C chosen so that max_j m_j = ``loss.ldam.max_margin``. The paper
    computes CE(s * (cos - m_y 1_y)); tailtune's logits already carry the classifier's scale
    (the cosine head returns s * cos), so the margin is subtracted in logit units:
    CE(z - s * m_y 1_y) with s = ``loss.ldam.scale``. With the cosine head at the same scale this
    is exactly the paper's loss; with other heads s * m_j is simply a margin in logits.

    DRW: from epoch ``loss.ldam.drw_epoch`` (0-based) on, the CE is weighted with class-balanced
    weights (``beta``); before it, unweighted.

    Soft targets q: sum_j q_ij CE(z_i - s m_j 1_j, j) (each class's own margin), in the weighted
    mean under DRW; computed in float64 from sum_k exp z_ik without a (C, C) table.
    """

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__(cfg)
        counts = _counts(class_counts).clamp(min=1)
        margins = counts ** -0.25
        opts = options_of(cfg, "ldam", LdamOptions)
        margins = margins * (opts.max_margin / margins.max())
        self.register_buffer("margin", (opts.scale * margins).float(), persistent=False)
        self.register_buffer("drw_weight", class_balanced_weights(class_counts, opts.beta), persistent=False)
        self.drw_epoch = opts.drw_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def reweighting(self) -> bool:
        return self.drw_epoch is not None and self.epoch >= self.drw_epoch

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = self.drw_weight if self.reweighting else None
        q = self.soft(logits, targets)
        if q is not None:
            return self._soft(logits, q, weight)
        # one_hot * margin[y] keeps everything on the logits' device (CPU or GPU alike).
        shift = F.one_hot(targets, logits.shape[1]).to(torch.float32) * self.margin[targets][:, None]
        return F.cross_entropy(logits.float() - shift, targets, weight=weight)

    def _soft(self, logits: torch.Tensor, q: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        z = logits.double()
        m = self.margin.double()
        top = z.max(1, keepdim=True).values
        e = (z - top).exp()
        # sum_k exp(z_k) with z_j lowered by its margin: S - e_j (1 - exp(-m_j)), for every j at once
        lse = (e.sum(1, keepdim=True) - e * (1.0 - torch.exp(-m))).log() + top
        per_class = (lse - (z - m)) * q.double()  # CE(z - m_j 1_j, j), weighted by q_ij
        if weight is None:
            return per_class.sum(1).mean().float()
        w = weight.double()
        return ((per_class * w).sum() / (q.double() * w).sum()).float()


@LOSSES.register("lade", help="LADE: CE(z + log prior) + loss.lade.alpha (0.1) * LADE regulariser", options=LadeOptions)
class LADE(_PriorLoss):
    """LADE (Hong et al., CVPR 2021): the PC-softmax loss plus the LADE regulariser.

    L = CE(z + log p_s) + alpha * L_LADER, with p_s the training prior and p_t uniform.
    For each class y the regulariser estimates log p_t(x|y)/p_t(x) with the (ReMINE-
    regularised) Donsker-Varadhan bound over the batch, importance-weighting the batch
    (drawn from p_s) by p_t(y) / p_s(y):

        first_y  = mean of z_iy over the batch samples of class y (0 if none)
        second_y = logsumexp_i(z_iy - log p_s(y) + log p_t(y)) - log N
        L_LADER  = -sum_y p_s(y) * (first_y - second_y - lambda * second_y^2)

    alpha = ``loss.lade.alpha`` (0.1), lambda = ``loss.lade.remine_lambda`` (0.1), as in the LIFT code.

    Hard labels only: the regulariser's per-class batch means need each image's one class.
    """

    soft_targets: ClassVar[bool] = False
    hard_reason: ClassVar[str] = "its regulariser estimates per-class batch statistics from each image's one label"

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__(cfg, class_counts)
        counts = _counts(class_counts)
        self.register_buffer("prior", (counts / counts.sum()).float(), persistent=False)
        opts = options_of(cfg, "lade", LadeOptions)
        self.alpha, self.lam = opts.alpha, opts.remine_lambda

    def regulariser(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, c = logits.shape
        onehot = F.one_hot(targets, c).to(logits.dtype)  # (N, C)
        per_class = onehot.sum(0)
        first = (logits * onehot).sum(0) / per_class.clamp(min=1)
        # p_t uniform: log p_t(y) = -log C. log(0) priors (empty classes) give -inf terms that
        # logsumexp and the 0 weight below would turn into NaN, so such classes are left out.
        present = self.prior > 0
        shifted = logits - self.log_prior.clamp(min=-1e4) - math.log(c)
        second = torch.logsumexp(shifted, dim=0) - math.log(n)
        bound = first - second - self.lam * second ** 2
        return -(self.prior * torch.where(present, bound, torch.zeros_like(bound))).sum()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() != 1 or self.smoothing:
            refuse_hard_only("lade", "soft targets (train.mixup.*, loss.label_smoothing)")
        logits = logits.float()
        ce = F.cross_entropy(logits + self.log_prior, targets)
        return ce + self.alpha * self.regulariser(logits, targets)


def takes_soft_targets(name: str) -> bool:
    """Whether loss ``name`` takes soft targets (its class says ``soft_targets = True``)."""
    return bool(getattr(LOSSES.get(name), "soft_targets", False))


def refuse_hard_only(name: str, option: str) -> None:
    """ConfigError naming loss ``name`` and ``option`` when the loss takes hard labels only."""
    if takes_soft_targets(name):
        return
    why = getattr(LOSSES.get(name), "hard_reason", "it is written for hard labels")
    soft = ", ".join(n for n in LOSSES.in_order() if takes_soft_targets(n))
    raise ConfigError(f"loss.name={name} needs hard labels ({why}), so {option} cannot be used with it; "
                      f"drop {option} or choose a loss that takes soft targets: {soft}.")


def build_loss(cfg: LossConfig, class_counts) -> nn.Module:
    """The configured loss for training class counts ``class_counts``."""
    if getattr(cfg, "label_smoothing", 0.0):
        refuse_hard_only(cfg.name, f"loss.label_smoothing={cfg.label_smoothing}")
    return LOSSES.get(cfg.name)(cfg, class_counts)
