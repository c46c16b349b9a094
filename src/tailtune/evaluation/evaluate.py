"""Evaluating an experiment's model on a split: logits over the (test-time-ensembled) views,
shared out among torchrun ranks and gathered in order, then the metrics."""

from __future__ import annotations

import numpy as np

from tailtune.data.base import Subset, Transformed
from tailtune.data.transforms import (
    eval_transform,
)
from tailtune.errors import ConfigError
from tailtune.evaluation.metrics import compute_metrics
from tailtune.experiment import Experiment, tte_options
from tailtune.models.heads import (
    init_transform,
)
from tailtune.models.peft.base import peft_off
from tailtune.runtime.distributed import (
    env_info,
    gather_ordered,
    shard_indices,
)
from tailtune.runtime.loader import make_loader, predict_logits
from tailtune.runtime.precision import precision_name


def predict_split(exp: Experiment, fn, dataset, quiet: bool, desc: str):
    """(outputs, labels) of ``fn`` over a transformed dataset, shared out among torchrun ranks,
    computed in the evaluation precision (``eval.precision``).

    Each rank predicts every world_size-th sample; the outputs are gathered back into the
    original order on every rank, so metrics count each sample exactly once.
    """
    info = env_info()
    part = Subset(dataset, shard_indices(len(dataset), info)) if info.enabled else dataset
    loader = make_loader(part, exp.cfg.eval.batch_size, False, exp.workers, exp.device)
    out, labels = predict_logits(fn, loader, exp.device, exp.eval_dtype, quiet or not info.is_main, desc,
                                 exp.channels_last)
    return gather_ordered(out, len(dataset), info), gather_ordered(labels, len(dataset), info)


def train_features(exp: Experiment, quiet: bool = True, indices=None):
    """Features of the training set (or its images at ``indices``) for the head's initialisation:
    the frozen backbone alone (PEFT modules off) in the init view (heads.init_transform)."""
    base = exp.data.train if indices is None else Subset(exp.data.train, indices)
    exp.backbone.eval()
    with peft_off(exp.backbone):
        return predict_split(exp, exp.backbone, Transformed(base, init_transform(exp.backbone.preprocess)), quiet,
                             "features")


def evaluate_model(exp: Experiment, tte: str | None = None, split: str = "test", quiet: bool = True) -> dict:
    """Metrics of the model on a split ('test' or 'train'), with a test-time-ensemble mode."""
    return evaluate_with_predictions(exp, tte, split, quiet)[0]


def evaluate_with_predictions(exp: Experiment, tte: str | None = None, split: str = "test",
                              quiet: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    """:func:`evaluate_model`'s metrics, the predicted classes and the labels (for the report)."""
    out, logits, labels = evaluate_with_logits(exp, tte, split, quiet)
    return out, logits.argmax(1), labels


def evaluate_with_logits(exp: Experiment, tte: str | None = None, split: str = "test",
                         quiet: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    """:func:`evaluate_model`'s metrics, the (N, C) logits (float32; the mean over the views of a
    test-time ensemble, whose softmax the probability metrics take) and the labels."""
    logits, labels, views, tte = split_logits(exp, tte, split, quiet)
    return metrics_of(exp, logits, labels, views, tte), logits, labels


def metrics_of(exp: Experiment, logits: np.ndarray, labels: np.ndarray, views: int, tte: str) -> dict:
    """The evaluation's metrics of a split's (N, C) logits (taken with ``tte``, ``views`` per image)."""
    out = compute_metrics(logits.argmax(1), labels, exp.data.groups, exp.data.group_names, exp.data.num_classes,
                          logits=logits)
    out["tte"] = tte
    out["views_per_image"] = views
    out["precision"] = precision_name(exp.eval_dtype)
    return out


def split_logits(exp: Experiment, tte: str | None = None, split: str = "test",
                 quiet: bool = True) -> tuple[np.ndarray, np.ndarray, int, str]:
    """(logits, labels, views per image, tte) of the model on a split ('test', 'val' or 'train');
    the logits are the mean over the test-time ensemble's views."""
    tte = tte or exp.cfg.eval.tte
    if split not in ("test", "train", "val") or getattr(exp.data, split) is None:
        raise ConfigError(f"split {split!r} is not available; choose "
                          f"{', '.join(exp.data.splits())}.")
    dataset = getattr(exp.data, split)
    view = eval_transform(exp.backbone.preprocess, tte, tte_options(exp.cfg))
    exp.model.eval()
    logits, labels = predict_split(exp, exp.model, Transformed(dataset, view), quiet, f"eval ({tte})")
    return logits.numpy(), labels.numpy(), view.views, tte
