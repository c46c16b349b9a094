"""``tailtune train --dry-run``: steps, trainable parameters and time per epoch, before a run.

The model and data are built as the run would build them; a few training steps then run
on real images (after one warm-up step that is not timed) and the time per image is scaled
to an epoch. When the run would train from a feature cache, the frozen prefix is timed
on the same images (the cache's build cost) and the steps run on their cached outputs.
Nothing is written: no run folder, no checkpoint; the head keeps its random init.

The estimate names the path it timed (precision, which attention kernel the training step
runs, how many frozen layers are cast once), the same names ``benchmarks/train_step.py``
prints for its ``tailtune fp32`` / ``tailtune bf16`` paths, so an estimate can be read against
the benchmark rows of the same path.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch

from tailtune.config import total_epochs
from tailtune.data.base import Subset, Transformed
from tailtune.data.transforms import train_transform
from tailtune.experiment import build, param_summary
from tailtune.losses import build_loss
from tailtune.models.attention import chosen_layers, unfused_backward
from tailtune.models.casts import CastOnceLinear
from tailtune.models.text import text_step_cost, time_text_pass
from tailtune.training.feature_cache import (
    CachedInputModel,
    CachedViews,
    FeatureStore,
    ViewPlan,
    fill,
    plan_cache,
    view_dataset,
)
from tailtune.training.trainer import Trainer

DEFAULT_TIMED_STEPS = 2


@dataclass
class DryRun:
    """What a dry run found and measured."""

    summary: dict
    lines: list[str]


def _timed_trainer(model, loss_fn, dataset, exp, images: int) -> float:
    """Seconds per image of training steps over the first ``images`` items of ``dataset``."""
    cfg = exp.cfg.train
    micro = min(cfg.micro_batch_size or cfg.batch_size, images)
    # One optimizer step per micro-batch, plain order: the step cost without the sampler's choice.
    step_cfg = replace(cfg, epochs=1, batch_size=micro, micro_batch_size=None, sampler="instance",
                       save_every=0, log_every=10**9)
    subset = Subset(dataset, range(min(images, len(dataset))))
    workers = 0 if isinstance(dataset, CachedViews) else exp.workers  # cached items are in memory
    trainer = Trainer(model, loss_fn, subset, step_cfg, exp.device, exp.dtype, workers, quiet=True,
                      log=lambda _: None, channels_last=exp.channels_last)
    stats = trainer.train_epoch()
    return stats.seconds / max(stats.images, 1)


def timed_path(model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict:
    """What the timed training step runs: precision, attention kernel, frozen layers cast once.

    The attention kernel is asked of ``attend``'s own rule (models/attention.py) for a
    tensor like the step's, so the answer follows that rule wherever it changes.
    """
    ours = chosen_layers(model)
    if ours:
        probe = torch.empty(0, device=device, dtype=dtype or torch.float32, requires_grad=True)
        with torch.enable_grad():
            kernel = "matmul + softmax" if unfused_backward(probe) else "fused SDPA"
        attention = f"tailtune's, {kernel} in training ({ours} layers)"
    else:
        attention = "the backbone's own"
    cast_once = sum(isinstance(m, CastOnceLinear) and not m.weight.requires_grad for m in model.modules())
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return {"precision": precision, "attention": attention, "frozen_linear_cast_once": cast_once,
            "benchmark_path": f"tailtune {precision}"}


def dry_run(cfg, timed_steps: int = DEFAULT_TIMED_STEPS) -> DryRun:
    """Build the run of ``cfg``, time ``timed_steps`` micro-batches and estimate an epoch."""
    exp = build(cfg)
    notes: list[str] = list(exp.notes)
    params = param_summary(exp.model)
    augment = train_transform(exp.backbone.preprocess, cfg.train.augment, cfg.train.epochs, cfg.train)
    train_set = Transformed(exp.data.train, augment)
    loss_fn = build_loss(cfg.loss, exp.data.train_counts).to(exp.device)
    full = Trainer(exp.model, loss_fn, train_set, cfg.train, exp.device, exp.dtype, exp.workers,
                   quiet=True, log=lambda _: None, channels_last=exp.channels_last)
    steps, epoch_images = full.steps_per_epoch, len(full.sampler)
    micro = full.micro
    timed_images = min(len(train_set), micro * timed_steps)
    warm_images = min(len(train_set), micro)

    plan = plan_cache(exp, notes.append)
    cache_s = 0.0
    if plan is None:
        _timed_trainer(exp.model, loss_fn, train_set, exp, warm_images)
        per_image = _timed_trainer(exp.model, loss_fn, train_set, exp, timed_images)
    else:
        # Cache the timed images only (one view): its cost scales to the whole cache.
        sample = Subset(exp.data.train, range(timed_images))
        views = ViewPlan(1, 1, plan.views.augmented)
        store = FeatureStore((1, timed_images, *plan.item_shape))
        ds = view_dataset(sample, views, 0, exp.backbone.preprocess, cfg.train.augment, cfg.train.seed,
                          cfg.train)
        exp.model.eval()
        t0 = time.perf_counter()
        fill(store, plan.point.split.prefix, [ds], cfg.eval.batch_size, exp.workers, exp.device, exp.dtype,
             True, exp.channels_last)
        cache_s = (time.perf_counter() - t0) / timed_images * plan.images * plan.views.views
        cached = CachedViews(store.tensor, sample.targets, views)
        model = CachedInputModel(exp.model, plan.point.split)
        _timed_trainer(model, loss_fn, cached, exp, warm_images)
        per_image = _timed_trainer(model, loss_fn, cached, exp, timed_images)
        notes.append(plan.describe())
    epoch_s = per_image * epoch_images
    total_s = epoch_s * total_epochs(cfg.train) + cache_s
    path = timed_path(exp.model, exp.device, exp.dtype)
    precision = path["precision"]
    text = text_step_cost(exp.model.head)
    if text is not None:
        exp.model.eval()
        text["pass_s"] = time_text_pass(exp.model.head)
        notes.append(_text_note(text))
    summary = {
        "train_images": len(exp.data.train), "images_per_epoch": epoch_images, "batch_size": cfg.train.batch_size,
        "micro_batch_size": micro, "steps_per_epoch": steps, "epochs": total_epochs(cfg.train),
        "total_steps": steps * total_epochs(cfg.train), "trainable_backbone": params["trainable_backbone"],
        "trainable_head": params["trainable_head"], "backbone_total": params["backbone_total"],
        "precision": precision, "device": str(exp.device), "feature_cache": plan is not None,
        "timed_images": timed_images, "seconds_per_image": per_image, "epoch_s": epoch_s,
        "cache_build_s": cache_s, "train_s": total_s, "trainable_text": params.get("trainable_text", 0),
        "text_encoder": text, "timed_path": path,
    }
    lines = [
        f"dry run: {cfg.data.name}, {exp.backbone.info['provider']} {exp.backbone.info['name']}, peft {cfg.peft.method}",
        f"  training images: {len(exp.data.train):,} ({epoch_images:,} per epoch with sampler {cfg.train.sampler})",
        f"  steps: {steps:,} per epoch (batch {cfg.train.batch_size}, micro-batch {micro}) x {total_epochs(cfg.train)} "
        f"epochs = {steps * total_epochs(cfg.train):,} optimizer steps",
        f"  trainable parameters: {params['trainable_backbone']:,} backbone "
        f"({100 * params['trainable_backbone_share']:.3f}% of {params['backbone_total']:,}) + "
        f"{params['trainable_head']:,} head" + (f" + {params['trainable_text']:,} text side"
                                                if params.get("trainable_text") else ""),
        f"  precision {precision} on {exp.device}, {exp.workers} loader workers",
        f"  timed path: {_describe_path(path)}",
        *(f"  note: {n}" for n in notes),
        f"  timed: {timed_images} images after a warm-up step: {per_image * 1000:.1f} ms per image",
        f"  estimated time per epoch: {_hms(epoch_s)}; training ({total_epochs(cfg.train)} epochs"
        f"{' + feature cache' if plan else ''}): {_hms(total_s)}"
        + (f" (cache build {_hms(cache_s)})" if plan else ""),
        "  (head initialisation and evaluation come on top; nothing was written)",
    ]
    return DryRun(summary, lines)


def _describe_path(path: dict) -> str:
    casts = ("no casts" if path["precision"] == "fp32"
             else f"{path['frozen_linear_cast_once']} frozen linear layers cast to {path['precision']} once")
    return (f"{path['precision']}{' autocast' if path['precision'] != 'fp32' else ''}; attention "
            f"{path['attention']}; {casts} (benchmarks/train_step.py's '{path['benchmark_path']}' path)")


def _text_note(text: dict) -> str:
    """What the text classifier costs: its prompts through the text encoder, per micro-batch or once."""
    what = (f"text classifier: {text['prompts']:,} prompts x {text['context_length']} tokens "
            f"({text['tokens']:,} tokens) through the text encoder")
    once = f"one pass (no gradients) {text['pass_s'] * 1000:.1f} ms"
    if text["every_step"]:
        return (f"{what}, forward and backward at every micro-batch ({text['text_trainable']:,} text-side "
                f"parameters train; included in the timing below; {once})")
    return f"{what} once, then cached (nothing on the text side trains; {once})"


def _hms(seconds: float) -> str:
    s = int(math.ceil(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
