"""CLIP zero-shot classification of a dataset's test split (no training)."""

from __future__ import annotations

from tailtune import config as C
from tailtune.data.base import Transformed
from tailtune.data.sources.base import build_data
from tailtune.data.transforms import (
    eval_transform,
    with_interpolation,
)
from tailtune.errors import ConfigError
from tailtune.evaluation.metrics import compute_metrics
from tailtune.experiment import data_summary, tte_options, validate
from tailtune.models.backbones.base import build_backbone
from tailtune.models.prompts import class_prompts, class_text_features, describe
from tailtune.runtime.device import default_workers, resolve_device
from tailtune.runtime.loader import make_loader, predict_logits
from tailtune.runtime.precision import precision_name, resolve_eval_precision


def zeroshot(cfg: C.Config) -> dict:
    """CLIP zero-shot: exp(logit_scale) * cos(image, text) with the prompts of head.prompt_mode.

    A class's text embedding is the normalised mean of its prompts' normalised embeddings
    (one prompt: default, classname; 80 templates: ensemble; its descriptions: descriptors).
    """
    validate(cfg)
    device = resolve_device(cfg.train.device)
    resolve_eval_precision(cfg.eval.precision, cfg.train.precision, device)  # before any loading
    backbone = build_backbone(cfg.model).to(device)
    backbone.preprocess = with_interpolation(backbone.preprocess, cfg.data.interpolation)
    if not backbone.has_text:
        raise ConfigError(f"zero-shot needs a CLIP model with a text tower; {cfg.model.name!r} has none.")
    data = build_data(cfg.data)
    text = class_text_features(backbone.text_embeddings, class_prompts(data.classnames, cfg.head))
    view = eval_transform(backbone.preprocess, cfg.eval.tte, tte_options(cfg))
    ds = Transformed(data.test, view)
    workers = default_workers(device) if cfg.data.num_workers < 0 else cfg.data.num_workers
    loader = make_loader(ds, cfg.eval.batch_size, False, workers, device)
    dtype = resolve_eval_precision(cfg.eval.precision, cfg.train.precision, device, backbone.kind)
    logits, labels = predict_logits(lambda x: backbone.zeroshot_logits(x, text), loader, device, dtype, cfg.quiet,
                                    "zero-shot")
    out = compute_metrics(logits.argmax(1).numpy(), labels.numpy(), data.groups, data.group_names, data.num_classes,
                          logits=logits.numpy())
    out["tte"] = cfg.eval.tte
    out["views_per_image"] = view.views
    out["precision"] = precision_name(dtype)
    return {"dataset": cfg.data.name, "data": data_summary(data), "notes": list(data.notes) + list(backbone.notes),
            "backbone": backbone.info,
            "prompt": describe(cfg.head), "prompt_mode": cfg.head.prompt_mode, "test": out}
