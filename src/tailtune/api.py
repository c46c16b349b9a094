"""The library's entry points: build a model and data from a config, train, evaluate.

Flow: config -> data + backbone -> PEFT injected -> head initialised -> engine trains ->
metrics -> run folder. The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import config as C
from .accel import apply_model_options
from .checkpoint import assign_trainable, load_checkpoint, save_checkpoint
from .data.datasets import SeededTransformed, Subset, Transformed
from .data.samplers import SAMPLERS
from .data.sources import SOURCES, LTData, build_data
from .data.store import use_store
from .data.transforms import (
    AUGMENTATIONS,
    TTE_MODES,
    TTEOptions,
    default_expand,
    eval_transform,
    train_transform,
    with_interpolation,
)
from .data.validate import check_image_files
from .distributed import (
    DistInfo,
    barrier,
    env_info,
    gather_ordered,
    local_device,
    on_main,
    shard_indices,
)
from .distributed import setup as dist_setup
from .engine import (
    Trainer,
    TrainingInterrupted,
    default_workers,
    make_loader,
    precision_name,
    predict_logits,
    resolve_device,
    resolve_eval_precision,
    resolve_precision,
    tune_cpu_allocator,
)
from .errors import ConfigError, TailtuneError
from .features import cached_training
from .losses import LOSSES, build_loss
from .metrics import compute_metrics
from .models.backbones import PROVIDERS, Backbone, build_backbone
from .models.heads import (
    HEAD_INITS,
    HEADS,
    InitContext,
    build_head,
    check_head,
    init_transform,
    initialise_head,
)
from .models.model import TailModel
from .models.peft import (
    PEFT_METHODS,
    apply_peft,
    check_peft,
    method_names,
    peft_off,
    trains_bn_stats,
)
from .models.prompts import PROMPT_MODES, class_prompts, class_text_features, describe
from .rng import kept_rng, seeded_rng
from .rundir import STATE, NullRun, RunDir
from .selection import VAL_TTE, Selector
from .selection import describe as describe_selection
from .training_state import load_state, save_state, set_rng_state

_log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.safetensors"


def validate(cfg: C.Config) -> None:
    """Check every registry name in the config before anything is loaded."""
    SOURCES.get(cfg.data.name)
    PROVIDERS.get(cfg.model.provider)
    for name in method_names(cfg.peft):
        PEFT_METHODS.get(name)
    LOSSES.get(cfg.loss.name)
    HEADS.get(cfg.head.type)
    if cfg.head.init != "auto":
        HEAD_INITS.get(cfg.head.init)
    PROMPT_MODES.get(cfg.head.prompt_mode)
    SAMPLERS.get(cfg.train.sampler)
    AUGMENTATIONS.get(cfg.train.augment)
    TTE_MODES.get(cfg.eval.tte)
    if cfg.loss.drw_epoch is not None and cfg.loss.drw_epoch >= cfg.train.epochs:
        raise ConfigError(f"loss.drw_epoch={cfg.loss.drw_epoch} never starts in train.epochs={cfg.train.epochs}; "
                          "use an epoch below train.epochs (epochs count from 0).")


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
        """Training's autocast dtype (``train.precision``; None = fp32)."""
        return resolve_precision(self.cfg.train.precision, self.device, self.backbone.kind)

    @property
    def eval_dtype(self):
        """Every evaluation's autocast dtype (``eval.precision``; None = fp32)."""
        return resolve_eval_precision(self.cfg.eval.precision, self.cfg.train.precision, self.device,
                                      self.backbone.kind)

    @property
    def workers(self) -> int:
        w = self.cfg.data.num_workers
        return default_workers(self.device) if w < 0 else w

    @property
    def channels_last(self) -> bool:
        return self.cfg.train.channels_last and self.backbone.kind == "cnn"


def build(cfg: C.Config, data: LTData | None = None) -> Experiment:
    """Backbone, data, PEFT modules and head for ``cfg`` (the head is not initialised yet).

    Their random parts (a randomly initialised backbone, the PEFT modules, the head) are drawn
    from ``cfg.train.seed`` on forked generators: the same model whenever a run is rebuilt from
    its folder, and the caller's RNG states left as they were.
    """
    return _build(cfg, data, keep_rng=True)


def _build(cfg: C.Config, data: LTData | None, keep_rng: bool) -> Experiment:
    """:func:`build`; a run (``keep_rng=False``) seeds the global streams instead, which its
    training then continues (inside the run's own :func:`kept_rng`)."""
    validate(cfg)
    device = local_device(resolve_device(cfg.train.device), env_info())
    resolve_precision(cfg.train.precision, device)
    resolve_eval_precision(cfg.eval.precision, cfg.train.precision, device)
    # Start-up checks in order of cost: the data's listing and its files' presence (seconds), then
    # the model (maybe a download) and what the config asks of it, then decoding every image.
    loaded = data is None
    data = _list_data(cfg.data) if loaded else data
    with seeded_rng(cfg.train.seed, keep=keep_rng):
        return _create(cfg, data, loaded, device)


def _create(cfg: C.Config, data: LTData, loaded: bool, device: torch.device) -> Experiment:
    """The model of ``cfg`` on ``device``, from the seeded streams; decodes the data if ``loaded``."""
    backbone = build_backbone(cfg.model)
    # data.interpolation sets the filter of every view built from backbone.preprocess (train, test, TTE, init).
    backbone.preprocess = with_interpolation(backbone.preprocess, cfg.data.interpolation)
    base_params = backbone.encoder_param_count()
    check_peft(backbone, cfg.peft)
    check_head(cfg.head, backbone)
    if loaded:
        data = _finish_data(cfg.data, data, backbone.preprocess)
    apply_peft(backbone, cfg.peft, data.num_classes)
    head = build_head(cfg.head, backbone.feature_dim, data.num_classes)
    model = TailModel(backbone, head, bn_train=trains_bn_stats(cfg.peft))
    model.backbone_params = base_params
    model.to(device)
    if cfg.train.channels_last and backbone.kind == "cnn":
        model.to(memory_format=torch.channels_last)
    exp = Experiment(cfg, data, backbone, model, device, list(data.notes) + list(backbone.notes))
    exp.notes += apply_model_options(model, backbone, cfg.train, device, exp.dtype)
    return exp


def param_summary(model: TailModel) -> dict:
    counts = model.param_counts()
    counts["backbone_total"] = getattr(model, "backbone_params", counts["backbone_total"])
    counts["trainable_backbone_share"] = counts["trainable_backbone"] / max(counts["backbone_total"], 1)
    return counts


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


def init_head(exp: Experiment, quiet: bool = True) -> str:
    ctx = InitContext(exp.backbone, exp.data.classnames, exp.cfg.head,
                      lambda indices=None: train_features(exp, quiet, indices), exp.data.train.targets)
    return initialise_head(exp.model.head, ctx)


def evaluate_model(exp: Experiment, tte: str | None = None, split: str = "test", quiet: bool = True) -> dict:
    """Metrics of the model on a split ('test' or 'train'), with a test-time-ensemble mode."""
    return evaluate_with_predictions(exp, tte, split, quiet)[0]


def evaluate_with_predictions(exp: Experiment, tte: str | None = None, split: str = "test",
                              quiet: bool = True) -> tuple[dict, np.ndarray, np.ndarray]:
    """:func:`evaluate_model`'s metrics, the predicted classes and the labels (for the report)."""
    tte = tte or exp.cfg.eval.tte
    if split not in ("test", "train", "val") or getattr(exp.data, split) is None:
        raise ConfigError(f"split {split!r} is not available; choose "
                          f"{', '.join(exp.data.splits())}.")
    dataset = getattr(exp.data, split)
    view = eval_transform(exp.backbone.preprocess, tte, tte_options(exp.cfg))
    exp.model.eval()
    logits, labels = predict_split(exp, exp.model, Transformed(dataset, view), quiet, f"eval ({tte})")
    preds, labels = logits.argmax(1).numpy(), labels.numpy()
    out = compute_metrics(preds, labels, exp.data.groups, exp.data.group_names, exp.data.num_classes)
    out["tte"] = tte
    out["views_per_image"] = view.views
    out["precision"] = precision_name(exp.eval_dtype)
    return out, preds, labels


def tte_options(cfg: C.Config) -> TTEOptions:
    """Test-time-ensemble settings of a run (randaug draws the run's own training augmentation;
    fivecrop/tencrop enlarge by eval.expand, by default the backbone's: transforms.default_expand)."""
    expand = default_expand(cfg.model.name) if cfg.eval.expand is None else cfg.eval.expand
    return TTEOptions(expand=expand, randaug_views=cfg.eval.randaug_views, augment=cfg.train.augment,
                      epochs=cfg.train.epochs, seed=cfg.train.seed)


def data_summary(data: LTData) -> dict:
    counts = data.train_counts
    return {
        "num_classes": data.num_classes,
        "train_images": int(counts.sum()),
        "test_images": len(data.test),
        "val_images": len(data.val) if data.val is not None else 0,
        "val_source": data.val_source or "none",
        "imbalance_ratio": float(counts.max() / max(counts.min(), 1)),
        "group_names": list(data.group_names),
        "classes_per_group": [int((np.asarray(data.groups) == g).sum()) for g in range(len(data.group_names))],
        "groups": [int(g) for g in data.groups],
        "train_counts": [int(c) for c in counts],
        "classnames": list(data.classnames),
    }


def fit(cfg: C.Config, run_dir: str | Path | None = None) -> dict:
    """Train and evaluate one run; writes the run folder and returns its metrics.

    Under torchrun every process calls this; rank 0 alone writes the folder. Relative file and
    folder settings are saved absolute (config.with_absolute_paths).
    """
    return _as_run(C.with_absolute_paths(cfg), run_dir, resume=False)


def resume(run_dir: str | Path) -> dict:
    """Continue an interrupted run from its folder's saved training state, where it stopped."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise ConfigError(f"{run_dir} is not a tailtune run folder (no config.yaml).")
    return _as_run(C.from_yaml_text(cfg_path.read_text(), str(cfg_path)), run_dir, resume=True)


def _as_run(cfg: C.Config, run_dir, resume: bool) -> dict:
    """The run, with what it asks of its process.

    On the CPU glibc's allocator is tuned for training (process-wide, and kept: see
    engine.tune_cpu_allocator). The run seeds the global RNG streams, so that its training's own
    draws (dropout) repeat with the seed; the caller's streams are given back when it ends.
    """
    device = local_device(resolve_device(cfg.train.device), env_info())
    if device.type == "cpu":
        tune_cpu_allocator()
    cuda = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    with kept_rng(cuda):
        return _train_run(cfg, run_dir, resume)


def _open_run(cfg: C.Config, run_dir, resume: bool, info: DistInfo):
    """Rank 0 creates (or reopens) the folder; the others learn its path and write nothing."""
    def make():
        return RunDir.open(run_dir, cfg.quiet) if resume else RunDir.create(cfg, run_dir)

    run = on_main(make, info)
    if not info.enabled:
        return run
    box = [str(run.path) if info.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return run if info.is_main else NullRun(Path(box[0]))


class _SignalStop:
    """SIGTERM / SIGINT ask the trainer to save and stop at the next step; a second SIGINT quits."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.trainer.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.trainer.stop_signal = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def _train_run(cfg: C.Config, run_dir, resume: bool) -> dict:
    start = time.perf_counter()
    validate(cfg)
    info = dist_setup(resolve_device(cfg.train.device))
    run = _open_run(cfg, run_dir, resume, info)
    log = run.log
    log(f"run folder: {run.path}" + (f" ({info.world_size} processes)" if info.enabled else ""))
    try:
        exp = _build(cfg, None, keep_rng=False)  # seeds the global streams training continues
        selector = Selector(exp.model, exp.data, cfg.train.select_by_val,
                            lambda: evaluate_model(exp, VAL_TTE, "val", cfg.quiet), log)
    except TailtuneError:
        if not resume:
            run.discard()  # a run that never started leaves no folder behind
        raise
    for note in exp.notes:
        log(f"note: {note}")
    log(f"precision: training {precision_name(exp.dtype)}, evaluation {precision_name(exp.eval_dtype)} "
        f"(train.precision={cfg.train.precision}, eval.precision={cfg.eval.precision})")
    params = param_summary(exp.model)
    log(f"data: {cfg.data.name}, {len(exp.data.train)} training / {len(exp.data.test)} test images, "
        f"{exp.data.num_classes} classes")
    log(f"model: {exp.backbone.info['provider']} {exp.backbone.info['name']} ({exp.backbone.info['pretrained']}), "
        f"peft {cfg.peft.method}: {params['trainable_backbone']:,} trainable backbone parameters "
        f"({100 * params['trainable_backbone_share']:.3f}% of {params['backbone_total']:,}), "
        f"head {params['trainable_head']:,}")
    saved = load_state(run.path / STATE) if resume else None
    if saved:
        assign_trainable(exp.model, saved["model"], str(run.path / STATE))
        head_init = saved["extra"]["head_init"]
    else:
        t0 = time.perf_counter()
        head_init = init_head(exp, cfg.quiet)
        log(f"head: {cfg.head.type}, initialised by {head_init} ({time.perf_counter() - t0:.1f}s)")

    augment = train_transform(exp.backbone.preprocess, cfg.train.augment, cfg.train.epochs)
    # Augmentation seeded per (seed, epoch, image): the same views whatever the workers,
    # ranks or resume point.
    train_set = SeededTransformed(exp.data.train, augment, cfg.train.seed)
    loss_fn = build_loss(cfg.loss, exp.data.train_counts).to(exp.device)
    # With a frozen front (classifier only, PEFT in the last blocks) train on its cached outputs.
    cached = cached_training(exp, cfg.quiet, log)
    train_model, workers = (cached.model, 0) if cached else (exp.model, exp.workers)
    if cached:
        train_set = cached.dataset

    def save(trainer: Trainer) -> None:
        counters = trainer.state()  # collective under torchrun: every rank calls it
        if info.is_main:
            sel_meta, sel_tensors = selector.state()
            save_state(run.path / STATE, exp.model.trainable_state_dict(), trainer.optimizer, counters,
                       {"head_init": head_init, "selector": sel_meta}, sel_tensors)

    trainer = Trainer(train_model, loss_fn, train_set, cfg.train, exp.device, exp.dtype, workers,
                      backbone_lr=cfg.peft.lr, quiet=cfg.quiet or not info.is_main, log=log,
                      dist=info, save=save,
                      on_step=lambda step, s: run.scalars(step, {f"train/{k}": v for k, v in s.items()}))
    if saved:
        trainer.load_state(saved["counters"], saved["optimizer"])
        selector.load_state(saved["extra"]["selector"], saved["extra_tensors"])
        set_rng_state(*saved["rng"])
        log(f"resumed from epoch {trainer.epoch + 1}, step {trainer.step} "
            f"({trainer.epoch_step} steps into the epoch)")

    def on_epoch(epoch, stats):
        run.scalars(trainer.step, {"epoch/loss": stats.loss, "epoch/train_acc": stats.accuracy,
                                   "epoch/lr": stats.lr})
        val_acc = selector.after_epoch(epoch)
        if val_acc is not None:
            run.scalars(trainer.step, {"epoch/val_acc": val_acc})

    try:
        with _SignalStop(trainer):
            history = trainer.fit(on_epoch)
    except TrainingInterrupted as e:
        message = f"{e}. Continue with: tailtune train --resume {run.path}"
        run.log(message, console=False)  # the caller says it (the CLI on stderr)
        run.close()
        raise TrainingInterrupted(message, e.signum) from None
    train_s = sum(h["seconds"] for h in history)  # across interruptions too
    validation = selector.finish()  # restores the selected epoch before it is saved and tested
    if exp.data.record:  # how held-out test / val splits were drawn, file by file
        run.write_metrics(exp.data.record, "splits.json")
    if info.is_main:
        save_checkpoint(run.path / CHECKPOINT, exp.model.trainable_state_dict(), C.to_yaml(cfg),
                        exp.backbone.info, exp.data.num_classes)

    t_eval = time.perf_counter()
    test, preds, labels = evaluate_with_predictions(exp, quiet=cfg.quiet)
    eval_s = time.perf_counter() - t_eval
    predictions, no_tte = {test["tte"]: preds}, None
    if test["tte"] != "none":  # the report shows what the test-time ensemble adds
        no_tte, predictions["none"], _ = evaluate_with_predictions(exp, "none", quiet=cfg.quiet)
    from .gap import measure_gap

    # Train vs test accuracy per group, one view each (cheap): does the tuning overfit the tail?
    gap = measure_gap(exp, no_tte or test, cfg.quiet)
    metrics = {
        "dataset": cfg.data.name,
        "data": data_summary(exp.data),
        "notes": exp.notes,
        "backbone": exp.backbone.info,
        "peft": cfg.peft.method,
        "params": params,
        "head_init": head_init,
        "test": test,
        "test_no_tte": no_tte,
        "generalisation_gap": gap,
        **validation,
        "history": history,
        "distributed": {"world_size": info.world_size},
        "time": {"train_s": train_s, "eval_s": eval_s, "total_s": time.perf_counter() - start},
    }
    if info.is_main:
        from .report import PREDICTIONS, save_predictions, write_report

        save_predictions(run.path / PREDICTIONS, labels, predictions)
        run.write_metrics(metrics)
        run.scalars(trainer.step, {"test/overall": test["overall"]})
        log(format_results(metrics))
        run.close()  # flushes the TensorBoard scalars the report reads
        (run.path / STATE).unlink(missing_ok=True)  # finished: the checkpoint holds the result
        if cfg.eval.report:
            report = write_report(run.path)
            if not cfg.quiet:
                _log.info(f"report: {report}")
    barrier()
    return metrics


def _list_data(cfg: C.DataConfig) -> LTData:
    """The dataset of ``cfg`` as listed: class names, labels, splits, and its files present.

    A store (``data.store``) holds pixels decoded when it was built, so the raw files are not
    checked (decoding a large dataset at every start-up is what the store saves); with
    ``data.skip_corrupt`` they are, to drop the same images the store left out.
    """
    data = build_data(cfg, check_files=False)
    if not cfg.store or cfg.skip_corrupt:
        data = check_image_files(data, verify=False)
    return data


def _finish_data(cfg: C.DataConfig, data: LTData, preprocess) -> LTData:
    """Decode every listed image (``data.verify_images``), then read the splits from the store if set."""
    if (not cfg.store or cfg.skip_corrupt) and cfg.verify_images:
        data = check_image_files(data, verify=True, skip_corrupt=cfg.skip_corrupt)
        data.check()  # again: dropping corrupt images can empty a class
    return use_store(data, cfg, preprocess.resolution, preprocess.interpolation)


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


def evaluate(run_dir: str | Path, tte: str | None = None, split: str = "test", quiet: bool = False,
             precision: str | None = None) -> dict:
    """Evaluate a finished run (rebuilds it from its folder); ``precision``: an ``eval.precision``
    value in place of the run's own."""
    exp = load_run(run_dir)
    if precision is not None:
        exp.cfg = replace(exp.cfg, eval=replace(exp.cfg.eval, precision=precision))  # checks the value
        resolve_eval_precision(precision, exp.cfg.train.precision, exp.device)
    return evaluate_model(exp, tte, split, quiet)


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
    out = compute_metrics(logits.argmax(1).numpy(), labels.numpy(), data.groups, data.group_names, data.num_classes)
    out["tte"] = cfg.eval.tte
    out["views_per_image"] = view.views
    out["precision"] = precision_name(dtype)
    return {"dataset": cfg.data.name, "data": data_summary(data), "notes": list(data.notes) + list(backbone.notes),
            "backbone": backbone.info,
            "prompt": describe(cfg.head), "prompt_mode": cfg.head.prompt_mode, "test": out}


def format_results(metrics: dict) -> str:
    """A plain-text results table of a run's metrics."""
    test = metrics["test"]
    groups = metrics["data"]["group_names"]
    # overall: image accuracy; balanced and the groups: means of per-class accuracies (metrics.py).
    # metrics.json of older runs has the same number as mean_class, or neither.
    head = ["overall", "balanced", *groups, "macro-F1"]
    vals = [test["overall"], test.get("balanced", test.get("mean_class")), *[test.get(g) for g in groups],
            test["macro_f1"]]
    cells = ["-" if v is None else f"{v:.2f}" for v in vals]
    widths = [max(len(h), len(c)) for h, c in zip(head, cells)]
    line = "  ".join(h.rjust(w) for h, w in zip(head, widths))
    row = "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    lines = [f"results on {metrics['dataset']} test set (tte: {test['tte']}, {test['views_per_image']} view(s)/image):",
             line, row]
    if "harmonic_mean" in test:  # metrics.json of older runs lacks the per-class summaries
        lines.append(f"per-class accuracy: worst {test['worst_class']:.2f}, harmonic {test['harmonic_mean']:.2f}, "
                     f"geometric {test['geometric_mean']:.2f} (balanced, groups: means over classes)")
    if "params" in metrics:
        p = metrics["params"]
        lines.append(f"trainable: {p['trainable_backbone']:,} backbone ({100 * p['trainable_backbone_share']:.3f}%) "
                     f"+ {p['trainable_head']:,} head parameters")
    selection = describe_selection(metrics)
    if selection:
        lines.append(selection)
    if metrics.get("generalisation_gap"):
        from .gap import format_gap

        lines.append(format_gap(metrics["generalisation_gap"], groups))
    return "\n".join(lines)


def read_metrics(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise ConfigError(f"{path} does not exist: the run did not finish.")
    return json.loads(path.read_text())
