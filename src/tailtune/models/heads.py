"""Classifiers and their initialisers.

Classifiers (``HEADS``) map features to logits and keep their class vectors in
``.weight`` (C, D), which every initialiser (``HEAD_INITS``) fills: an initialiser
returns a (C, D) tensor of unit rows, or None to keep the random initialisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as T

from tailtune.config import HeadConfig, _check_positive, options_of, setting
from tailtune.data.transforms import Preprocess, Resize, ToInput
from tailtune.errors import ConfigError
from tailtune.models.prompts import PROMPT_MODES, class_prompts, class_text_features
from tailtune.registry import Choice, Registry
from tailtune.runtime.hardware import available_memory

HEADS: Registry = Registry("classifier", section="head", chosen_by="head.type")  # options: head.<key>.* (models/text.py)
# head.init=auto is text or class_mean by the backbone (known at start-up): the options of both apply.
HEAD_INITS: Registry = Registry("head initialisation", section="head",  # options: head.<name>.*
                                chosen_by=Choice("head.init", lambda head: ("text", "class_mean") if head.init == "auto"
                                                 else (head.init,)))


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


CLASS_SCALE = "lws_scale"  # the parameter name under the head: head.lws_scale


def _scaled(head: nn.Module, inputs, logits: torch.Tensor) -> torch.Tensor:
    return logits * getattr(head, CLASS_SCALE)


def add_class_scale(head: nn.Module, num_classes: int) -> nn.Parameter:
    """Learnable weight scaling (LWS, Kang et al. 2020): logits_c = s_c * head(x)_c, one scale per
    class (``head.lws_scale``, ones to start), whatever the head computes. A forward hook rather
    than a wrapper, so the head's own tensors keep their names (those of the run it came from)."""
    scale = nn.Parameter(torch.ones(num_classes))
    head.register_parameter(CLASS_SCALE, scale)
    head.register_forward_hook(_scaled)
    return scale


def init_transform(p: Preprocess) -> T.Compose:
    """The view of the initialisers' training features: Resize(res) (short side) + CenterCrop(res).

    The reference's ``transform_plain`` (reference: trainer.py:109-114), used only for the
    head's initialisation; the test view resizes to 8/7 of the resolution instead. The filter
    is the preprocessing's, like every other view's.
    """
    return T.Compose([Resize(p.resolution, interpolation=p.mode), T.CenterCrop(p.resolution),
                      ToInput(p.mean, p.std)])


@dataclass
class InitContext:
    """What an initialiser may use; features are computed lazily (only if asked for).

    ``train_features(indices=None)`` returns (features, labels) of the training images
    (all, or those at ``indices``) from the frozen backbone alone (PEFT modules off), in the
    plain view Resize(res) + CenterCrop(res), as the reference computes them (reference:
    trainer.py:109-114 ``transform_plain``, trainer.py:init_head_class_mean ``use_tuner=False``).
    The features are raw (not normalised). ``train_labels`` lets an initialiser choose images
    before computing any feature.
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
    """Per class, the mean of the raw features, then L2-normalised (zero rows for absent classes).

    The features are averaged as they are and only the mean is normalised, as the reference
    does (reference: trainer.py:init_head_class_mean, lines 382-388): images with larger
    features weigh more than in a mean of normalised features.
    """
    feats = feats.float()
    labels = labels.long().to(feats.device)
    sums = torch.zeros(num_classes, feats.shape[1], device=feats.device).index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    return F.normalize(sums / counts, dim=-1)


@dataclass
class ClassMeanOptions:
    """class_mean: how many training images per class the means take (all, or at most N as LIFT+)."""

    max_per_class: Optional[int] = setting(  # noqa: UP045  (OmegaConf reads the annotation)
        None, "init=class_mean: at most this many images per class, drawn with head.class_mean.seed; null = all "
              "(LIFT+'s class-mean initialisation takes 100)")
    seed: int = setting(0, "init=class_mean with max_per_class: seed of the image choice")

    def __post_init__(self) -> None:
        _check_positive("head.class_mean", "max_per_class", self.max_per_class)


@HEAD_INITS.register("class_mean", help="normalised mean of the raw frozen features per class (training set; "
                                        "head.class_mean.max_per_class: at most N images per class)",
                     options=ClassMeanOptions)
def class_mean_init(ctx: InitContext) -> torch.Tensor:
    """Normalised mean of the raw frozen features of each class over the training set, or over at
    most ``head.class_mean.max_per_class`` images per class (seeded, the images k_shot would draw).

    LIFT+'s class-mean initialisation (LIFT-plus trainer.py ``classifier_init == "class_mean"``,
    utils/samplers.py ``DownSampler(n_max=100)``): raw features of at most 100 images per class,
    averaged, then normalised: ``max_per_class=100``. Its images are drawn by torch's global
    generator; tailtune's by its own seeded one: the same counts, not the same images.
    """
    opts = options_of(ctx.cfg, "class_mean", ClassMeanOptions)
    if opts.max_per_class is None:
        feats, labels = ctx.train_features()
    else:
        all_labels = ctx.train_labels if ctx.train_labels is not None else ctx.train_features()[1].tolist()
        feats, labels = ctx.train_features(k_shot_indices(all_labels, opts.max_per_class, opts.seed))
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


@dataclass
class KShotOptions:
    """k_shot: how many images per class, and which."""

    MOVED: ClassVar[dict[str, str]] = {"shots": "shots", "seed": "seed"}

    shots: int = setting(10, "init=k_shot: images per class (at most)")
    seed: int = setting(0, "init=k_shot: seed of the image choice")

    def __post_init__(self) -> None:
        _check_positive("head.k_shot", "shots", self.shots)


@HEAD_INITS.register("k_shot", help="class means over at most head.k_shot.shots images per class (head.k_shot.seed)",
                     options=KShotOptions)
def k_shot_init(ctx: InitContext) -> torch.Tensor:
    """Class means (:func:`class_means`) over at most ``shots`` images per class."""
    labels = ctx.train_labels if ctx.train_labels is not None else ctx.train_features()[1].tolist()
    opts = options_of(ctx.cfg, "k_shot", KShotOptions)
    feats, got = ctx.train_features(k_shot_indices(labels, opts.shots, opts.seed))
    return class_means(feats, got, ctx.num_classes)


PROBE_C = 1.0  # inverse L2 strength, scikit-learn's default, as the reference's probe
PROBE_MAX_ITER = 100  # reference: trainer.py:init_head_linear_probe, line 413
# scikit-learn's multinomial loss holds a few (N, C) float64 arrays besides the (N, D) features.
PROBE_ARRAYS = 4


def probe_memory(n: int, dim: int, num_classes: int) -> int:
    """Bytes the probe's solver needs, roughly: float64 features and a few (N, C) arrays."""
    return 8 * n * (dim + PROBE_ARRAYS * num_classes)


def fit_linear_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     max_iter: int = PROBE_MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's class-balanced logistic regression on the raw features; returns (W, b).

    As the reference (reference: trainer.py:init_head_linear_probe, line 413):
    ``LogisticRegression(solver="lbfgs", max_iter=100, class_weight="balanced")`` with its
    default L2 penalty and C = 1, i.e. it minimises 0.5 |W|^2 + C * sum_i s_i CE(W x_i + b, y_i)
    with s_i = N / (K n_{y_i}) over the K classes present, multinomial for K > 2. It stops
    after ``max_iter`` iterations, converged or not, as the reference's does. W is (C, D)
    with zero rows (and bias) for classes without images; for K = 2 scikit-learn's single row
    w becomes the rows -w/2 and w/2, the softmax classifier with the same probabilities.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = feats.detach().float().cpu().numpy()
    y = labels.detach().long().cpu().numpy()
    present = np.unique(y)
    if len(present) < 2:
        raise ConfigError(f"head.init=linear_probe needs training images of at least two classes, got "
                          f"{len(present)}; use head.init=class_mean (or text with a CLIP backbone).")
    if (y < 0).any() or (y >= num_classes).any():
        raise ConfigError(f"head.init=linear_probe got labels outside 0..{num_classes - 1}; "
                          "check the dataset's labels against its class names.")
    need, have = probe_memory(len(y), x.shape[1], len(present)), available_memory()
    if need > have:
        raise ConfigError(f"head.init=linear_probe on {len(y):,} images of {len(present):,} classes needs about "
                          f"{need / 2**30:.1f} GiB for scikit-learn's solver, {have / 2**30:.1f} GiB is free; "
                          "use head.init=class_mean (or text with a CLIP backbone), or a machine with more memory.")
    clf = LogisticRegression(solver="lbfgs", C=PROBE_C, max_iter=max_iter, class_weight="balanced")
    with warnings.catch_warnings():
        # Like the reference's, the probe stops at max_iter: it gives the head a starting point.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = torch.zeros(num_classes, x.shape[1])
    bias = torch.zeros(num_classes)
    rows = torch.from_numpy(clf.classes_.astype(np.int64))
    weight[rows] = torch.from_numpy(coef).float()
    bias[rows] = torch.from_numpy(intercept).float()
    return weight, bias


@HEAD_INITS.register("linear_probe", help="rows of scikit-learn's class-balanced logistic regression on the raw "
                                          "frozen features, normalised")
def linear_probe_init(ctx: InitContext) -> torch.Tensor:
    """Normalised class rows of a balanced logistic regression on the raw frozen features."""
    feats, labels = ctx.train_features()
    weight, _ = fit_linear_probe(feats, labels, ctx.num_classes)
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
    if getattr(head, "self_initialised", None):  # the text classifier (models/text.py) reads its prompts itself
        return head.self_initialised
    name = resolve_init(ctx.cfg, ctx.backbone)
    weight = HEAD_INITS.get(name)(ctx)
    if weight is not None:
        if weight.shape != head.weight.shape:
            raise ConfigError(f"head.init={name} gave weights {tuple(weight.shape)}, "
                              f"the head needs {tuple(head.weight.shape)}.")
        head.weight.copy_(weight.to(head.weight))
    return name
