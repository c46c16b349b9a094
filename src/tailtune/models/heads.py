"""Classifiers and their initialisers.

Classifiers (``HEADS``) map features to logits and keep their class vectors in
``.weight`` (C, D), which every initialiser (``HEAD_INITS``) fills: an initialiser
returns a (C, D) tensor of unit rows, or None to keep the random initialisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HeadConfig
from ..errors import ConfigError
from ..registry import Registry
from .prompts import PROMPT_MODES, class_prompts, class_text_features

HEADS: Registry = Registry("classifier")
HEAD_INITS: Registry = Registry("head initialisation")


class _Classifier(nn.Module):
    """Holds the (C, D) class weights every initialiser writes."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim).normal_(0, 0.02))


@HEADS.register("cosine", help="cosine classifier, logits = head.scale * cos(x, w) (default, scale 25)")
class CosineClassifier(_Classifier):
    """scale * cos(feature, class weight)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 25.0):
        super().__init__(dim, num_classes)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


@HEADS.register("linear", help="linear classifier with bias")
class LinearClassifier(_Classifier):
    """A plain linear layer with bias."""

    def __init__(self, dim: int, num_classes: int, scale: float = 25.0):
        super().__init__(dim, num_classes)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@HEADS.register("l2", help="normalised class weights, raw features: logits = x . w / |w|")
class L2NormedClassifier(_Classifier):
    """Unit-norm class weights on unnormalised features (no bias, no scale)."""

    def __init__(self, dim: int, num_classes: int, scale: float = 25.0):
        super().__init__(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, F.normalize(self.weight, dim=-1))


@HEADS.register("layernorm", help="LayerNorm (no affine) on features, normalised class weights")
class LayerNormedClassifier(_Classifier):
    """LayerNorm without affine parameters on the features, unit-norm class weights.

    LayerNorm leaves features of norm sqrt(D), so the logits are sqrt(D) * cos(centred x, w):
    the scale comes from the dimension rather than from a parameter.
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 25.0):
        super().__init__(dim, num_classes)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(x), F.normalize(self.weight, dim=-1))


def build_head(cfg: HeadConfig, dim: int, num_classes: int) -> nn.Module:
    """The configured classifier for ``dim``-dimensional features."""
    return HEADS.get(cfg.type)(dim, num_classes, scale=cfg.scale)


@dataclass
class InitContext:
    """What an initialiser may use; features are computed lazily (only if asked for).

    ``train_features(indices=None)`` returns (features, labels) of the training images
    (all, or those at ``indices``) under the test transform, from the frozen backbone.
    ``train_labels`` lets an initialiser choose images before computing any feature.
    """

    backbone: object
    classnames: list[str]
    cfg: HeadConfig
    train_features: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    train_labels: Sequence[int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def _no_text_tower(backbone) -> ConfigError:
    return ConfigError(f"head.init=text needs a backbone with a text tower; {backbone.info['name']!r} has none. "
                       "Use head.init=class_mean (or auto, which picks it for vision-only backbones).")


@HEAD_INITS.register("text", help="text features of the class prompts (head.prompt_mode)")
def text_init(ctx: InitContext) -> torch.Tensor:
    """Text features of each class's prompts, in the image feature space.

    A class's prompts (several with an ensemble or descriptors) are averaged in the joint
    text space, then mapped into the image feature space, as the method does.
    """
    if not getattr(ctx.backbone, "has_text", False):
        raise _no_text_tower(ctx.backbone)
    text = class_text_features(ctx.backbone.text_embeddings, class_prompts(ctx.classnames, ctx.cfg))
    return ctx.backbone.text_to_features(text)


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised mean of the L2-normalised features of each class (zero rows for absent classes)."""
    feats = F.normalize(feats.float(), dim=-1)
    labels = labels.long()
    sums = torch.zeros(num_classes, feats.shape[1]).index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    return F.normalize(sums / counts, dim=-1)


@HEAD_INITS.register("class_mean", help="mean of normalised frozen features per class (training set)")
def class_mean_init(ctx: InitContext) -> torch.Tensor:
    """Mean of L2-normalised frozen features of each class over the training set."""
    feats, labels = ctx.train_features()
    return class_means(feats, labels, ctx.num_classes)


def k_shot_indices(labels: Sequence[int], k: int, seed: int) -> list[int]:
    """At most ``k`` indices per class, drawn without replacement with a seeded generator."""
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    # One shuffle, then a stable sort by class: each class's images in random order, first k kept.
    # O(N log N), where a loop over classes would cost O(N * C) (8142 classes on iNaturalist).
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    order = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, sorted_labels, right=False)
    rank = torch.arange(len(labels)) - starts
    return sorted(order[rank < k].tolist())


@HEAD_INITS.register("k_shot", help="class means over at most head.shots images per class (head.seed)")
def k_shot_init(ctx: InitContext) -> torch.Tensor:
    """Class means of L2-normalised features over at most ``shots`` images per class."""
    labels = ctx.train_labels if ctx.train_labels is not None else ctx.train_features()[1].tolist()
    feats, got = ctx.train_features(k_shot_indices(labels, ctx.cfg.shots, ctx.cfg.seed))
    return class_means(feats, got, ctx.num_classes)


PROBE_C = 1.0  # inverse L2 strength, scikit-learn's default (the LIFT code's probe)
PROBE_MAX_ITER = 100
PROBE_CHUNK = 8192  # rows per forward inside the LBFGS closure: bounds the (N, C) logits in memory


def probe_objective(feats: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    sample_w: torch.Tensor, chunk: int = PROBE_CHUNK, backward: bool = False) -> float:
    """0.5 |W|^2 + C * sum_i s_i CE(W x_i + b, y_i); with ``backward`` accumulates its gradient."""
    total = 0.5 * (weight * weight).sum()
    if backward:
        total.backward()
    value = float(total.detach())
    for i in range(0, len(feats), chunk):
        logits = feats[i:i + chunk] @ weight.t() + bias
        part = PROBE_C * (sample_w[i:i + chunk] * F.cross_entropy(logits, labels[i:i + chunk], reduction="none")).sum()
        if backward:
            part.backward()
        value += float(part.detach())
    return value


def fit_linear_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     max_iter: int = PROBE_MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced multinomial logistic regression on L2-normalised features.

    Minimises 0.5 |W|^2 + C * sum_i s_i CE(W x_i + b, y_i) with s_i = N / (K n_{y_i}) over
    the K classes present (scikit-learn's ``class_weight="balanced"``), bias unpenalised,
    by full-batch LBFGS from zero. Returns (W, b).
    """
    x = F.normalize(feats.float(), dim=-1)
    y = labels.long().to(x.device)
    counts = torch.bincount(y, minlength=num_classes).float()
    present = int((counts > 0).sum())
    sample_w = len(y) / (present * counts[y])
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        return probe_objective(x, y, weight, bias, sample_w, backward=True)

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


@HEAD_INITS.register("linear_probe", help="class-balanced logistic regression on frozen features, rows normalised")
def linear_probe_init(ctx: InitContext) -> torch.Tensor:
    """Normalised class rows of a balanced logistic regression on the normalised frozen features."""
    feats, labels = ctx.train_features()
    params = next(iter(ctx.backbone.parameters()), None) if isinstance(ctx.backbone, nn.Module) else None
    device = params.device if params is not None else torch.device("cpu")
    weight, _ = fit_linear_probe(feats.to(device), labels.to(device), ctx.num_classes)
    return F.normalize(weight, dim=-1)


@HEAD_INITS.register("random", help="keep the classifier's random initialisation")
def random_init(ctx: InitContext) -> None:
    """Keep the classifier's random initialisation."""
    return None


def resolve_init(cfg: HeadConfig, backbone) -> str:
    """The initialiser's name: ``cfg.init``, or for auto text (CLIP) / class_mean (vision-only)."""
    if cfg.init != "auto":
        HEAD_INITS.get(cfg.init)
        return cfg.init
    return "text" if getattr(backbone, "has_text", False) else "class_mean"


def check_head(cfg: HeadConfig, backbone) -> None:
    """Start-up check of head type, initialiser and prompt mode against the backbone."""
    HEADS.get(cfg.type)
    PROMPT_MODES.get(cfg.prompt_mode)
    if resolve_init(cfg, backbone) == "text" and not getattr(backbone, "has_text", False):
        raise _no_text_tower(backbone)


@torch.no_grad()
def initialise_head(head: nn.Module, ctx: InitContext) -> str:
    """Set the head's weights with the configured initialiser; returns its name."""
    name = resolve_init(ctx.cfg, ctx.backbone)
    weight = HEAD_INITS.get(name)(ctx)
    if weight is not None:
        if weight.shape != head.weight.shape:
            raise ConfigError(f"head.init={name} gave weights {tuple(weight.shape)}, "
                              f"the head needs {tuple(head.weight.shape)}.")
        head.weight.copy_(weight.to(head.weight))
    return name
