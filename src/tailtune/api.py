"""The library's entry points: build a model and data from a config, train, evaluate.

Flow: config -> data + backbone -> PEFT injected -> head initialised -> engine trains ->
metrics -> run folder. The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import config as C
from .checkpoint import load_checkpoint, save_checkpoint
from .data.datasets import Transformed
from .data.sources import SOURCES, LTData, build_data
from .data.transforms import eval_transform, test_transform, train_transform, views_per_image
from .engine import (
    Trainer,
    default_workers,
    make_loader,
    predict_logits,
    resolve_device,
    resolve_precision,
    tune_cpu_allocator,
)
from .errors import ConfigError, TailtuneError
from .losses import LOSSES, build_loss
from .metrics import compute_metrics
from .models.backbones import PROVIDERS, Backbone, build_backbone
from .models.heads import HEADS, InitContext, build_head, check_head, initialise_head
from .models.model import TailModel
from .models.peft import PEFT_METHODS, apply_peft, check_peft, method_names, trains_bn_stats
from .models.prompts import make_prompts
from .rundir import RunDir

CHECKPOINT = "checkpoint.safetensors"


def validate(cfg: C.Config) -> None:
    """Check every registry name in the config before anything is loaded."""
    SOURCES.get(cfg.data.name)
    PROVIDERS.get(cfg.model.provider)
    for name in method_names(cfg.peft):
        PEFT_METHODS.get(name)
    LOSSES.get(cfg.loss.name)
    HEADS.get(cfg.head.type)


@dataclass
class Experiment:
    """Everything a run works on."""

    cfg: C.Config
    data: LTData
    backbone: Backbone
    model: TailModel
    device: torch.device
    notes: list[str] = field(default_factory=list)

    @property
    def dtype(self):
        return resolve_precision(self.cfg.train.precision, self.device, self.backbone.kind)

    @property
    def workers(self) -> int:
        w = self.cfg.data.num_workers
        return default_workers(self.device) if w < 0 else w

    @property
    def channels_last(self) -> bool:
        return self.cfg.train.channels_last and self.backbone.kind == "cnn"


def build(cfg: C.Config, data: LTData | None = None) -> Experiment:
    """Backbone, data, PEFT modules and head for ``cfg`` (the head is not initialised yet)."""
    validate(cfg)
    device = resolve_device(cfg.train.device)
    resolve_precision(cfg.train.precision, device)
    if device.type == "cpu":
        tune_cpu_allocator()
    # Seed before anything random is created: a randomly initialised backbone (tests) and the
    # PEFT modules must come out the same when a run is rebuilt from its folder.
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    backbone = build_backbone(cfg.model)
    base_params = backbone.encoder_param_count()
    check_peft(backbone, cfg.peft)
    check_head(cfg.head, backbone)
    data = data if data is not None else build_data(cfg.data)
    apply_peft(backbone, cfg.peft, data.num_classes)
    head = build_head(cfg.head, backbone.feature_dim, data.num_classes)
    model = TailModel(backbone, head, bn_train=trains_bn_stats(cfg.peft))
    model.backbone_params = base_params
    model.to(device)
    if cfg.train.channels_last and backbone.kind == "cnn":
        model.to(memory_format=torch.channels_last)
    return Experiment(cfg, data, backbone, model, device, list(data.notes))


def param_summary(model: TailModel) -> dict:
    counts = model.param_counts()
    counts["backbone_total"] = getattr(model, "backbone_params", counts["backbone_total"])
    counts["trainable_backbone_share"] = counts["trainable_backbone"] / max(counts["backbone_total"], 1)
    return counts


def train_features(exp: Experiment, quiet: bool = True):
    """Frozen features of the training set under the test transform (for class-mean init)."""
    ds = Transformed(exp.data.train, test_transform(exp.backbone.preprocess))
    loader = make_loader(ds, exp.cfg.eval.batch_size, False, exp.workers, exp.device)
    exp.backbone.eval()
    return predict_logits(exp.backbone, loader, exp.device, exp.dtype, quiet, "features", exp.channels_last)


def init_head(exp: Experiment, quiet: bool = True) -> str:
    ctx = InitContext(exp.backbone, exp.data.classnames, exp.cfg.head, lambda: train_features(exp, quiet))
    return initialise_head(exp.model.head, ctx)


def evaluate_model(exp: Experiment, tte: str | None = None, split: str = "test", quiet: bool = True) -> dict:
    """Metrics of the model on a split ('test' or 'train'), with a test-time-ensemble mode."""
    tte = tte or exp.cfg.eval.tte
    if split not in ("test", "train"):
        raise ConfigError(f"split {split!r} is not available; choose test or train.")
    dataset = getattr(exp.data, split)
    ds = Transformed(dataset, eval_transform(exp.backbone.preprocess, tte, exp.cfg.eval.expand))
    loader = make_loader(ds, exp.cfg.eval.batch_size, False, exp.workers, exp.device)
    exp.model.eval()
    logits, labels = predict_logits(exp.model, loader, exp.device, exp.dtype, quiet, f"eval ({tte})",
                                    exp.channels_last)
    out = compute_metrics(logits.argmax(1).numpy(), labels.numpy(), exp.data.groups,
                          exp.data.group_names, exp.data.num_classes)
    out["tte"] = tte
    out["views_per_image"] = views_per_image(tte)
    return out


def data_summary(data: LTData) -> dict:
    counts = data.train_counts
    return {
        "num_classes": data.num_classes,
        "train_images": int(counts.sum()),
        "test_images": len(data.test),
        "imbalance_ratio": float(counts.max() / max(counts.min(), 1)),
        "group_names": list(data.group_names),
        "classes_per_group": [int((np.asarray(data.groups) == g).sum()) for g in range(len(data.group_names))],
        "train_counts": [int(c) for c in counts],
        "classnames": list(data.classnames),
    }


def fit(cfg: C.Config, run_dir: str | Path | None = None) -> dict:
    """Train and evaluate one run; writes the run folder and returns its metrics."""
    start = time.perf_counter()
    validate(cfg)
    run = RunDir.create(cfg, run_dir)
    log = run.log
    log(f"run folder: {run.path}")
    try:
        exp = build(cfg)
    except TailtuneError:
        run.discard()  # a run that never started leaves no folder behind
        raise
    for note in exp.notes:
        log(f"note: {note}")
    params = param_summary(exp.model)
    log(f"data: {cfg.data.name}, {len(exp.data.train)} training / {len(exp.data.test)} test images, "
        f"{exp.data.num_classes} classes")
    log(f"model: {exp.backbone.info['provider']} {exp.backbone.info['name']} ({exp.backbone.info['pretrained']}), "
        f"peft {cfg.peft.method}: {params['trainable_backbone']:,} trainable backbone parameters "
        f"({100 * params['trainable_backbone_share']:.3f}% of {params['backbone_total']:,}), "
        f"head {params['trainable_head']:,}")
    t0 = time.perf_counter()
    head_init = init_head(exp, cfg.quiet)
    log(f"head: {cfg.head.type}, initialised by {head_init} ({time.perf_counter() - t0:.1f}s)")

    train_set = Transformed(exp.data.train, train_transform(exp.backbone.preprocess))
    loss_fn = build_loss(cfg.loss, exp.data.train_counts).to(exp.device)
    trainer = Trainer(exp.model, loss_fn, train_set, cfg.train, exp.device, exp.dtype, exp.workers,
                      backbone_lr=cfg.peft.lr, quiet=cfg.quiet, log=log,
                      on_step=lambda step, s: run.scalars(step, {f"train/{k}": v for k, v in s.items()}))

    def on_epoch(epoch, stats):
        run.scalars(trainer.step, {"epoch/loss": stats.loss, "epoch/train_acc": stats.accuracy,
                                   "epoch/lr": stats.lr})

    t_train = time.perf_counter()
    history = trainer.fit(on_epoch)
    train_s = time.perf_counter() - t_train
    save_checkpoint(run.path / CHECKPOINT, exp.model.trainable_state_dict(), C.to_yaml(cfg),
                    exp.backbone.info, exp.data.num_classes)

    t_eval = time.perf_counter()
    test = evaluate_model(exp, quiet=cfg.quiet)
    eval_s = time.perf_counter() - t_eval
    metrics = {
        "dataset": cfg.data.name,
        "data": data_summary(exp.data),
        "notes": exp.notes,
        "backbone": exp.backbone.info,
        "peft": cfg.peft.method,
        "params": params,
        "head_init": head_init,
        "test": test,
        "history": history,
        "time": {"train_s": train_s, "eval_s": eval_s, "total_s": time.perf_counter() - start},
    }
    run.write_metrics(metrics)
    run.scalars(trainer.step, {"test/overall": test["overall"]})
    log(format_results(metrics))
    run.close()
    return metrics


def load_run(run_dir: str | Path, data: LTData | None = None) -> Experiment:
    """Rebuild a finished run's model from its folder (config + checkpoint)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise ConfigError(f"{run_dir} is not a tailtune run folder (no config.yaml).")
    cfg = C.from_yaml_text(cfg_path.read_text(), str(cfg_path))
    exp = build(cfg, data)
    load_checkpoint(run_dir / CHECKPOINT, exp.model, exp.backbone.info, exp.data.num_classes)
    return exp


def evaluate(run_dir: str | Path, tte: str | None = None, split: str = "test", quiet: bool = False) -> dict:
    """Evaluate a finished run (rebuilds it from its folder)."""
    exp = load_run(run_dir)
    return evaluate_model(exp, tte, split, quiet)


def zeroshot(cfg: C.Config) -> dict:
    """CLIP zero-shot: exp(logit_scale) * cos(image, text) with the configured prompt."""
    validate(cfg)
    device = resolve_device(cfg.train.device)
    if device.type == "cpu":
        tune_cpu_allocator()
    backbone = build_backbone(cfg.model).to(device)
    if not backbone.has_text:
        raise ConfigError(f"zero-shot needs a CLIP model with a text tower; {cfg.model.name!r} has none.")
    data = build_data(cfg.data)
    text = backbone.clip_text_embeddings(make_prompts(data.classnames, cfg.head.prompt))
    ds = Transformed(data.test, eval_transform(backbone.preprocess, cfg.eval.tte, cfg.eval.expand))
    workers = default_workers(device) if cfg.data.num_workers < 0 else cfg.data.num_workers
    loader = make_loader(ds, cfg.eval.batch_size, False, workers, device)
    logits, labels = predict_logits(lambda x: backbone.zeroshot_logits(x, text), loader, device,
                                    resolve_precision(cfg.train.precision, device, backbone.kind), cfg.quiet,
                                    "zero-shot")
    out = compute_metrics(logits.argmax(1).numpy(), labels.numpy(), data.groups, data.group_names, data.num_classes)
    out["tte"] = cfg.eval.tte
    return {"dataset": cfg.data.name, "data": data_summary(data), "notes": data.notes, "backbone": backbone.info,
            "prompt": cfg.head.prompt, "test": out}


def format_results(metrics: dict) -> str:
    """A plain-text results table of a run's metrics."""
    test = metrics["test"]
    groups = metrics["data"]["group_names"]
    head = ["overall", *groups, "macro-F1"]
    vals = [test["overall"], *[test.get(g) for g in groups], test["macro_f1"]]
    cells = ["-" if v is None else f"{v:.2f}" for v in vals]
    widths = [max(len(h), len(c)) for h, c in zip(head, cells)]
    line = "  ".join(h.rjust(w) for h, w in zip(head, widths))
    row = "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    lines = [f"results on {metrics['dataset']} test set (tte: {test['tte']}, {test['views_per_image']} view(s)/image):",
             line, row]
    if "params" in metrics:
        p = metrics["params"]
        lines.append(f"trainable: {p['trainable_backbone']:,} backbone ({100 * p['trainable_backbone_share']:.3f}%) "
                     f"+ {p['trainable_head']:,} head parameters")
    return "\n".join(lines)


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise ConfigError(f"{path} does not exist: the run did not finish.")
    return json.loads(path.read_text())
