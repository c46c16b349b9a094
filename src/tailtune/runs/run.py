"""A run from start to end: open its folder, build, initialise the head, train (resumably),
select, save, evaluate, write the metrics and the report. ``fit`` starts one, ``resume``
continues one from its folder."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from tailtune import config as C
from tailtune.config.changes import (
    EXTENSION_KEY,
    HARMLESS_ON_RESUME,
    changes_result,
    config_changes,
)
from tailtune.data.base import SeededTransformed
from tailtune.data.gpu_decode import DeviceViews, PlannedView, check_decode, encoded
from tailtune.data.transforms import (
    train_transform,
)
from tailtune.errors import ConfigError, DataError, TailtuneError, WriteError
from tailtune.evaluation.calibration import check_calibration, temperature_record
from tailtune.evaluation.evaluate import (
    evaluate_model,
    evaluate_with_logits,
    metrics_of,
    split_logits,
    train_features,
)
from tailtune.evaluation.gap import measure_gap
from tailtune.evaluation.logits import (
    RunLogits,
    SplitLogits,
    logits_nbytes,
    run_logits,
    save_decision,
    save_logits,
)
from tailtune.experiment import Experiment, _build, data_summary, load_run, param_summary, validate
from tailtune.losses import build_loss
from tailtune.models.heads import (
    InitContext,
    initialise_head,
)
from tailtune.report.html import write_report
from tailtune.report.record import save_predictions
from tailtune.report.text import format_results
from tailtune.runs.decoupled import check_source, init_decoupled_head, load_source
from tailtune.runtime.checkpoint import assign_trainable, save_checkpoint, stored_sha256
from tailtune.runtime.device import resolve_device, tune_cpu_allocator
from tailtune.runtime.distributed import (
    DistInfo,
    barrier,
    env_info,
    local_device,
    on_main,
)
from tailtune.runtime.distributed import setup as dist_setup
from tailtune.runtime.files import write_text
from tailtune.runtime.precision import precision_name
from tailtune.runtime.rng import kept_rng
from tailtune.runtime.rundir import (
    CHECKPOINT,
    CONFIG,
    FIGURES,
    LOCK,
    LOG,
    LOGITS,
    METRICS,
    PREDICTIONS,
    REPORT,
    SPLITS,
    STATE,
    NullRun,
    RunDir,
    RunLock,
    read_config,
    read_metrics,
    run_path,
)
from tailtune.training.feature_cache import cached_training
from tailtune.training.mixing import check_mixing
from tailtune.training.selection import VAL_TTE, Selector
from tailtune.training.signals import SignalStop, StopNow
from tailtune.training.state import load_state, save_state, saved_config, set_rng_state
from tailtune.training.trainer import Trainer, TrainingInterrupted

_log = logging.getLogger(__name__)


def init_head(exp: Experiment, quiet: bool = True) -> str:
    ctx = InitContext(exp.backbone, exp.data.classnames, exp.cfg.head,
                      lambda indices=None: train_features(exp, quiet, indices), exp.data.train.targets)
    return initialise_head(exp.model.head, ctx)


def fit(cfg: C.Config, run_dir: str | Path | None = None, break_lock: bool = False) -> dict:
    """Train and evaluate one run; writes the run folder and returns its metrics.

    Under torchrun every process calls this; rank 0 alone writes the folder, holding its lock
    (``run.lock``: another process writing it is refused; ``break_lock``: see RunLock.take).
    Relative file and folder settings are saved absolute (config.with_absolute_paths).
    """
    cfg = C.with_absolute_paths(cfg)
    path = run_path(cfg, run_dir)
    with _locked(path, break_lock):
        return _as_run(cfg, path, resume=False)


def resume(run_dir: str | Path, extend_epochs: int = 0, break_lock: bool = False) -> dict:
    """Continue an interrupted run from its folder's saved training state, where it stopped.

    The folder's config.yaml must still say what the state was trained with (changed keys that
    change the result are refused by name, see :func:`resumed_config`). ``extend_epochs``: train
    that many epochs more than planned, the learning-rate schedule restarted from train.lr over
    them (recorded as train.extra_epochs in config.yaml).
    """
    path = Path(run_dir)
    with _locked(path, break_lock, new=False):
        return _as_run(resumed_config(path, extend_epochs), path, resume=True)


@contextlib.contextmanager
def _locked(path: Path, break_lock: bool, new: bool = True):
    """Rank 0 holds the run folder's lock for the whole run, released on every way out (errors,
    Ctrl-C, a signal that stops training); the other ranks under torchrun hold none."""
    if not env_info().is_main:
        yield
        return
    if not new and not (path / CONFIG).is_file():
        read_config(path)  # the error for a folder that is no run folder, before any lock is written in it
    lock = RunLock.take(path, break_lock, way_out=f"delete {path / LOCK} (or pass --break-lock)")
    if lock.note and (path / LOG).is_file():  # a resumed run's log keeps it too
        with open(path / LOG, "a", encoding="utf-8") as f:
            f.write(lock.note + "\n")
    try:
        yield
    finally:
        lock.release()


def resumed_config(run_dir: str | Path, extend_epochs: int = 0, log=None) -> C.Config:
    """The config a run folder continues with: its config.yaml, checked against the config its
    training state was saved with.

    A changed key that changes what the run computes (config/changes.py) is refused, naming
    every such key with its saved and new value and the way out; a harmless one (``quiet``, the
    loader workers, ...) is taken, with a note. ``train.extra_epochs`` may only grow: by
    ``extend_epochs`` (added here) or an extension config.yaml records that the state does not
    yet (a run stopped before its first save after ``--extend-epochs``).
    """
    run_dir = Path(run_dir)
    log = log or (_note_in(run_dir) if env_info().is_main else (lambda _: None))
    folder = read_config(run_dir)
    if extend_epochs < 0 or isinstance(extend_epochs, bool) or not isinstance(extend_epochs, int):
        raise ConfigError(f"--extend-epochs {extend_epochs!r}: give a whole number of epochs >= 1.")
    if extend_epochs and (run_dir / METRICS).exists():
        raise ConfigError(f"{run_dir} holds a finished run: its training state was removed when it finished, so "
                          f"it cannot be extended. Train a new run in another folder (name=...) with "
                          f"train.epochs={C.total_epochs(folder.train) + extend_epochs}.")
    if not (run_dir / STATE).is_file() or (run_dir / METRICS).exists():
        return folder  # RunDir.open says why it cannot be resumed
    text = saved_config(run_dir / STATE)
    if text is None:
        log(f"note: the training state {run_dir / STATE} carries no config (written by an older tailtune): "
            f"changes to {run_dir / CONFIG} since it was saved cannot be checked.")
        saved = folder
    else:
        saved = C.from_yaml_text(text, f"the config saved in {run_dir / STATE}")
    refused, allowed = [], []
    for key, old, new in config_changes(saved, folder):
        if key == EXTENSION_KEY and isinstance(old, list) and isinstance(new, list) and new[:len(old)] == old \
                and len(new) > len(old):
            log(f"note: {run_dir / CONFIG} extends the run by {new[len(old):]} epochs (train.extra_epochs "
                f"{old} -> {new}, an extension not yet in the saved state): continuing with it.")
        elif changes_result(key):
            refused.append((key, old, new))
        else:
            allowed.append((key, old, new))
    if refused:
        raise ConfigError(_refusal(run_dir, refused))
    for key, old, new in allowed:
        log(f"note: {run_dir / CONFIG} changes {key} {old!r} -> {new!r} since the state was saved: taken "
            f"({HARMLESS_ON_RESUME[key]}).")
    if not extend_epochs:
        return folder
    extra = [*folder.train.extra_epochs, extend_epochs]
    log(f"note: extending the run by {extend_epochs} epochs (train.extra_epochs={extra}): after epoch "
        f"{C.total_epochs(folder.train)} the learning-rate schedule ({folder.train.scheduler}) starts again from "
        f"train.lr={folder.train.lr:g} over {extend_epochs} epochs.")
    return replace(folder, train=replace(folder.train, extra_epochs=extra))


def _note_in(run_dir: Path):
    """A note on the console and in the run's log.txt (before the run folder is opened)."""
    def note(msg: str) -> None:
        _log.warning(msg)
        if (run_dir / LOG).is_file():
            with open(run_dir / LOG, "a", encoding="utf-8") as f:
                f.write(msg + "\n")
    return note


def _refusal(run_dir: Path, refused: list[tuple]) -> str:
    shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in refused)
    text = (f"{run_dir / CONFIG} was changed since the run's training state was saved: {shown}. The resumed run "
            "would continue the saved training, not what these values say, and its record (config.yaml, "
            "report.html) would not be what it did. Put the saved values back in config.yaml to resume, or start "
            "a new run with the new values in another folder (name=...).")
    if any(k in ("train.epochs", EXTENSION_KEY) for k, _, _ in refused):
        text += (" To train longer, put train.epochs back and run `tailtune train --resume "
                 f"{run_dir} --extend-epochs N` (the learning-rate schedule restarts from train.lr over the N "
                 "extra epochs).")
    return text


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
        if not resume:
            return RunDir.create(cfg, run_dir)
        run = RunDir.open(run_dir, cfg.quiet)
        _record_extension(run, cfg)
        return run

    run = on_main(make, info)
    if not info.enabled:
        return run
    box = [str(run.path) if info.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return run if info.is_main else NullRun(Path(box[0]))


def _train_run(cfg: C.Config, run_dir, resume: bool) -> dict:
    """The run in its folder. Whatever ends it early (an error, a signal, a bug) is written to
    log.txt too, with what is kept and the command that continues (see :func:`_failed`)."""
    start = time.perf_counter()
    validate(cfg)
    info = dist_setup(resolve_device(cfg.train.device))
    run = _open_run(cfg, run_dir, resume, info)
    try:
        return _stages(cfg, run, info, resume, start)
    except BaseException as e:  # re-raised (as the error with the way out, for a file not written)
        failure = _failed(run, cfg, e)
        if failure is e:
            raise
        raise failure from e


def _stages(cfg: C.Config, run: RunDir | NullRun, info: DistInfo, resume: bool, start: float) -> dict:
    """The stages of a run, each a function below, in an order that matters: the build seeds
    the global RNG streams that the later stages draw from (the head's initialisation, then
    training's dropout), and a resumed run sets the saved streams back only once the trainer
    is made, just before training continues. Moving a stage changes the run's numbers."""
    run.log(f"run folder: {run.path}" + (f" ({info.world_size} processes)" if info.enabled else ""))
    exp, selector = _build_run(cfg, run, resume)
    params = _describe(exp, run.log)
    _save_splits(exp, run, resume)
    saved = load_state(run.path / STATE, exp.data.classnames, _whose(exp, run), run.log) if resume else None
    head_init = _restore_or_init_head(exp, saved, run)
    trainer = _make_trainer(exp, _training_inputs(exp, run.log), run, info, selector, head_init)
    if saved:
        _restore_training(trainer, selector, saved, run.log)
    history = _train(trainer, selector, run)
    stage = ["selecting the epoch to keep"]  # what a signal interrupts from here on (StopNow's message)
    with StopNow(lambda signum: f"stopped by signal {signum} while {stage[0]}. {kept(run.path, cfg)}"):
        validation = selector.finish()  # restores the selected epoch before it is saved and tested
        stage[0] = "saving the checkpoint"
        _save_result(exp, run, info)
        stage[0] = "in the final evaluation"
        result = _evaluate(exp)
        metrics = _metrics(exp, params, head_init, result, validation, history, info, start)
        stage[0] = "writing the results"
        if info.is_main:
            _write_outputs(exp, run, metrics, result, trainer.step, stage)
    barrier()
    return metrics


def kept(path: Path, cfg: C.Config) -> str:
    """What a run folder keeps of a run that stopped early, and the command that continues it."""
    if (path / METRICS).is_file():
        return (f"The run is complete ({METRICS}, {CHECKPOINT} and {PREDICTIONS} are written); "
                f"write its report with `tailtune report {path}`.")
    if not (path / STATE).is_file():
        return (f"No training state was saved yet (the folder holds {CONFIG} and {LOG}); once the cause is "
                "fixed, the same command starts the run again in it.")
    try:
        with safe_open(str(path / STATE), framework="pt", backend="pread") as f:
            counters = json.loads((f.metadata() or {})["counters"])
        epoch, within = counters["epoch"], counters["epoch_step"]
    except (OSError, SafetensorError, KeyError, ValueError) as e:
        return f"Its training state {path / STATE} is unreadable ({e}); train the run again."
    epochs = C.total_epochs(cfg.train)
    if epoch >= epochs:
        done = (f"; {CHECKPOINT} is complete" if (path / CHECKPOINT).is_file() else "")
        return (f"Training finished: its state (epoch {epoch} of {epochs}) is saved{done}. "
                f"`tailtune train --resume {path}` evaluates it and writes the results.")
    where = f"after epoch {epoch} of {epochs}" if not within else f"at step {within} of epoch {epoch + 1} ({epochs} in all)"
    return f"The training state {where} is saved; continue with `tailtune train --resume {path}`."


def _failed(run: RunDir | NullRun, cfg: C.Config, e: BaseException) -> BaseException:
    """``e``, which ends the run, written to log.txt as the console shows it (the CLI: one line;
    an unexpected exception's traceback goes to log.txt only). A file that could not be written
    becomes the same error, with what is kept and the command that continues."""
    if isinstance(e, WriteError):
        e = WriteError(f"{e} {kept(run.path, cfg)}", e.path)
    if isinstance(e, TrainingInterrupted):
        run.log_error(str(e))
    elif isinstance(e, TailtuneError):
        run.log_error(f"error: {e}")
    elif isinstance(e, KeyboardInterrupt):
        e = KeyboardInterrupt(f"interrupted. {kept(run.path, cfg)}")
        run.log_error(str(e))
    elif isinstance(e, Exception):
        run.log_error(f"error: unexpected {type(e).__name__}: {e}\n"
                      + "".join(traceback.format_exception(e)).rstrip())
        e.tailtune_log = str(run.path / LOG)  # the CLI names it instead of printing the traceback
    with contextlib.suppress(WriteError):  # the error is already the way out
        run.close()
    return e


def _record_extension(run: RunDir, cfg: C.Config) -> None:
    """config.yaml says an extension (--extend-epochs) before the run trains it."""
    if read_config(run.path).train.extra_epochs != cfg.train.extra_epochs:
        run.rewrite_config(cfg)
        run.log(f"extended: train.extra_epochs={cfg.train.extra_epochs} ({C.total_epochs(cfg.train)} epochs in all; "
                "the schedule restarts from train.lr at each extension)")


def _build_run(cfg: C.Config, run: RunDir | NullRun, resume: bool) -> tuple[Experiment, Selector]:
    """The experiment (data, backbone with PEFT, head) and the selector of the epoch to keep."""
    try:
        source = check_source(cfg)  # a decoupled run (train.decoupled): its source run, before the build
        run.track(cfg, resume)  # log.tracker (rank 0 only), first: a missing package fails before the build
        exp = _build(cfg, None, keep_rng=False)  # seeds the global streams training continues
        check_calibration(cfg.eval.calibrate, exp.data.val is not None)
        if source is not None:
            load_source(exp, source, run.log)
        selector = Selector(exp.model, exp.data, cfg.train.select_by_val,
                            lambda: evaluate_model(exp, VAL_TTE, "val", cfg.quiet), run.log)
    except TailtuneError:
        if not resume:
            run.discard()  # a run that never started leaves no folder behind
        raise
    return exp, selector


def _describe(exp: Experiment, log) -> dict:
    """Log what is trained on what, at which precision; returns the parameter counts."""
    cfg = exp.cfg
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
        + (f", text side {params['trainable_text']:,}" if params.get("trainable_text") else "")
        + f", head {params['trainable_head']:,}")
    return params


def _restore_or_init_head(exp: Experiment, saved: dict | None, run: RunDir | NullRun) -> str:
    """On resume the saved trainable weights; otherwise the head's initialisation. Returns how
    the head was initialised (kept in the saved state, so a resumed run reports it too)."""
    if saved:
        assign_trainable(exp.model, saved["model"], str(run.path / STATE))
        return saved["extra"]["head_init"]
    t0 = time.perf_counter()
    head_init = init_decoupled_head(exp) if exp.source else init_head(exp, exp.cfg.quiet)
    run.log(f"head: {exp.cfg.head.type}, initialised by {head_init} ({time.perf_counter() - t0:.1f}s)")
    return head_init


@dataclass
class _TrainingInputs:
    """What the trainer trains: the model and its images (or, with a feature cache, the model's
    trainable rest and the cached outputs of its frozen front), the loss, the loader's workers."""

    model: torch.nn.Module
    dataset: object
    loss_fn: torch.nn.Module
    workers: int
    device_views: object = None  # data.decode=gpu: decodes the loader's JPEG bytes on the device


def _training_inputs(exp: Experiment, log) -> _TrainingInputs:
    cfg = exp.cfg
    augment = train_transform(exp.backbone.preprocess, cfg.train.augment, cfg.train.epochs, cfg.train)
    # Augmentation seeded per (seed, epoch, image): the same views whatever the workers,
    # ranks or resume point.
    train_set = SeededTransformed(exp.data.train, augment, cfg.train.seed)
    check_decode(cfg.data.decode, cfg.train.augment)
    check_mixing(cfg.train, cfg.loss.name)  # before the cache: a hard-label loss refuses train.mixup.*
    loss_fn = build_loss(cfg.loss, exp.data.train_counts).to(exp.device)
    # With a frozen front (classifier only, PEFT in the last blocks) train on its cached outputs.
    cached = cached_training(exp, cfg.quiet, log)
    if cached:
        if cfg.data.decode == "gpu":
            log("data.decode=gpu: unused, training reads the feature cache (its images were decoded on the CPU)")
        return _TrainingInputs(cached.model, cached.dataset, loss_fn, 0)
    if cfg.data.decode == "gpu":
        log(f"data.decode=gpu: training JPEGs are decoded in batches on {exp.device}"
            + (" (a CPU device: libjpeg, on the CPU)" if exp.device.type == "cpu" else " (nvJPEG)")
            + "; evaluation decodes on the CPU")
        train_set = SeededTransformed(encoded(exp.data.train), PlannedView(), cfg.train.seed)
        return _TrainingInputs(exp.model, train_set, loss_fn, exp.workers, DeviceViews(exp.backbone.preprocess))
    return _TrainingInputs(exp.model, train_set, loss_fn, exp.workers)


def _make_trainer(exp: Experiment, inputs: _TrainingInputs, run: RunDir | NullRun, info: DistInfo,
                  selector: Selector, head_init: str) -> Trainer:
    """The trainer, saving the training state (for resume) into the run folder when it asks."""
    cfg = exp.cfg

    def save(trainer: Trainer) -> None:
        counters = trainer.state()  # collective under torchrun: every rank calls it
        if info.is_main:
            sel_meta, sel_tensors = selector.state()
            save_state(run.path / STATE, exp.model.trainable_state_dict(), trainer.optimizer, counters,
                       {"head_init": head_init, "selector": sel_meta}, sel_tensors,
                       classnames=exp.data.classnames, origin=_origin(exp, run), config=C.to_yaml(exp.cfg))

    return Trainer(inputs.model, inputs.loss_fn, inputs.dataset, cfg.train, exp.device, exp.dtype, inputs.workers,
                   backbone_lr=cfg.peft.lr, quiet=cfg.quiet or not info.is_main, log=run.log,
                   dist=info, save=save, channels_last=exp.channels_last, device_views=inputs.device_views,
                   on_step=lambda step, s: run.scalars(step, {f"train/{k}": v for k, v in s.items()}))


def _restore_training(trainer: Trainer, selector: Selector, saved: dict, log) -> None:
    """Where the interrupted run stopped: counters, optimizer, selector, and the RNG streams last."""
    trainer.load_state(saved["counters"], saved["optimizer"])
    selector.load_state(saved["extra"]["selector"], saved["extra_tensors"])
    set_rng_state(*saved["rng"])
    log(f"resumed from epoch {trainer.epoch + 1}, step {trainer.step} "
        f"({trainer.epoch_step} steps into the epoch)")


def _train(trainer: Trainer, selector: Selector, run: RunDir | NullRun) -> list[dict]:
    """Train to the last epoch; a signal (SIGINT, SIGTERM) saves the state and stops at the next step."""
    def on_epoch(epoch, stats):
        run.scalars(trainer.step, {"epoch/loss": stats.loss, "epoch/train_acc": stats.accuracy,
                                   "epoch/lr": stats.lr})
        val_acc = selector.after_epoch(epoch)
        if val_acc is not None:
            run.scalars(trainer.step, {"epoch/val_acc": val_acc})

    try:
        with SignalStop(trainer):
            return trainer.fit(on_epoch)
    except TrainingInterrupted as e:  # logged by _failed; the caller says it (the CLI on stderr)
        raise TrainingInterrupted(f"{e}. Continue with: tailtune train --resume {run.path}", e.signum) from None


def _save_splits(exp: Experiment, run: RunDir | NullRun, resume: bool) -> None:
    """splits.json (how the held-out test / val splits were drawn, file by file), before training:
    the start-up notes point to it. A resumed run must draw the same splits as it did."""
    if not exp.data.record:
        return
    path = run.path / SPLITS
    if resume and path.is_file():
        drawn = json.loads(json.dumps(exp.data.record))
        if json.loads(path.read_text()) != drawn:
            raise DataError(f"the held-out splits drawn now differ from the run's {path}: the images under "
                            f"data.root={exp.cfg.data.root} changed since the run started, so resuming would "
                            "train and test on other images. Put the data back as it was, or train a new run.")
        return
    run.write_metrics(exp.data.record, SPLITS)


def _save_result(exp: Experiment, run: RunDir | NullRun, info: DistInfo) -> None:
    """The trained weights (the selected epoch's)."""
    if info.is_main:
        save_checkpoint(run.path / CHECKPOINT, exp.model.trainable_state_dict(), C.to_yaml(exp.cfg),
                        exp.backbone.info, exp.data.classnames, _origin(exp, run))


def _origin(exp: Experiment, run: RunDir | NullRun) -> str:
    """Where a saved file's weights come from (kept in it, named when it is refused elsewhere)."""
    of = f", {exp.source['name']} of run {exp.source['from_run']}" if exp.source else ""
    return f"run {run.path} on dataset {exp.cfg.data.name}{of}"


def _whose(exp: Experiment, run: RunDir | NullRun) -> str:
    """Whose class names a loaded file must have (for its messages)."""
    return f"the dataset {exp.cfg.data.name} of run {run.path}"


@dataclass
class _Evaluation:
    test: dict
    no_tte: dict | None  # the test set without the test-time ensemble (None when there is none)
    gap: dict
    labels: object
    predictions: dict  # tte name -> predictions on the test set
    seconds: float  # of the test evaluations (not the gap's)
    calibration: dict | None = None  # eval.calibrate=temperature: metrics.json "calibration"
    logits: list[SplitLogits] | None = None  # what logits.safetensors holds (None: not written)
    logits_note: str | None = None  # why eval.save_logits=auto writes none


def _evaluate(exp: Experiment) -> _Evaluation:
    """The test split with the run's test-time ensemble (and without it), the calibration, the
    train-vs-test gap; the logits post-hoc and calibration read later (eval.save_logits): the
    test split's per mode, the validation split's with the run's tte."""
    quiet, d = exp.cfg.quiet, exp.data
    tte = exp.cfg.eval.tte
    modes = [tte, *(["none"] if tte != "none" else [])]
    rows = [len(d.test)] * len(modes) + ([len(d.val)] if d.val is not None else [])
    keep, note = save_decision(exp.cfg.eval.save_logits, logits_nbytes(rows, d.num_classes))
    stored: list[SplitLogits] = []
    val = None
    t0 = time.perf_counter()
    test, logits, labels = evaluate_with_logits(exp, quiet=quiet)
    stored.append(SplitLogits("test", test["tte"], logits, labels, test["precision"], test["views_per_image"]))
    calibration = None
    if exp.cfg.eval.calibrate == "temperature":  # fitted on the val logits of the test's views
        check_calibration("temperature", d.val is not None)
        val = split_logits(exp, test["tte"], "val", quiet)
        calibration = temperature_record(val[0], val[1], logits, labels, d.groups, d.group_names, d.num_classes,
                                         test["tte"])
    seconds = time.perf_counter() - t0
    predictions, no_tte = {test["tte"]: logits.argmax(1)}, None
    if test["tte"] != "none":  # the report shows what the test-time ensemble adds
        no_tte, plain, _ = evaluate_with_logits(exp, "none", quiet=quiet)
        predictions["none"] = plain.argmax(1)
        stored.append(SplitLogits("test", "none", plain, labels, no_tte["precision"], no_tte["views_per_image"]))
    if keep and d.val is not None:
        val = val or split_logits(exp, test["tte"], "val", quiet)
        stored.append(SplitLogits("val", test["tte"], val[0], val[1], test["precision"], val[2]))

    # Train vs test accuracy per group, one view each (cheap): does the tuning overfit the tail?
    gap = measure_gap(exp, no_tte or test, quiet)
    return _Evaluation(test, no_tte, gap, labels, predictions, seconds, calibration, stored if keep else None, note)


def calibrate_run(exp: Experiment, logits: RunLogits, tte: str) -> dict:
    """metrics.json's "calibration": temperature scaling fitted on the validation split's logits
    (with the test's test-time ensemble ``tte``, so the scale fitted is the scale applied)."""
    check_calibration("temperature", exp.data.val is not None)
    val_logits, val_labels, _ = logits.get("val", tte)
    test_logits, test_labels, _ = logits.get("test", tte)
    return temperature_record(val_logits, val_labels, test_logits, test_labels, exp.data.groups,
                              exp.data.group_names, exp.data.num_classes, tte)


def _metrics(exp: Experiment, params: dict, head_init: str, result: _Evaluation, validation: dict,
             history: list[dict], info: DistInfo, start: float) -> dict:
    """metrics.json: what was trained, how, and how well."""
    return {
        "dataset": exp.cfg.data.name,
        "data": data_summary(exp.data),
        "notes": exp.notes,
        "backbone": exp.backbone.info,
        "peft": exp.cfg.peft.method,
        "params": params,
        "head_init": head_init,
        "test": result.test,
        "test_no_tte": result.no_tte,
        **({"calibration": result.calibration} if result.calibration else {}),
        "generalisation_gap": result.gap,
        **validation,
        "history": history,
        **({"decoupled": exp.source} if exp.source else {}),
        "distributed": {"world_size": info.world_size},
        "time": {"train_s": sum(h["seconds"] for h in history),  # across interruptions too
                 "eval_s": result.seconds, "total_s": time.perf_counter() - start},
    }


def _write_outputs(exp: Experiment, run: RunDir, metrics: dict, result: _Evaluation, step: int,
                   stage: list[str]) -> None:
    """Rank 0: predictions, metrics, the results in the log, the report; the resume state goes.
    (``stage[0]``: what is being done, for the message of a signal.)"""
    save_predictions(run.path / PREDICTIONS, result.labels, result.predictions)
    if result.logits is not None:
        save_logits(run.path / LOGITS, result.logits, stored_sha256(run.path / CHECKPOINT, "checkpoint"))
        run.log(f"logits: {LOGITS} ({', '.join(f'{e.split} {e.tte}' for e in result.logits)}; "
                f"{logits_nbytes([len(e.labels) for e in result.logits], exp.data.num_classes) / 2 ** 20:.1f} MiB): "
                "`tailtune eval --posthoc` / `--calibrate` read them", console=False)
    else:
        (run.path / LOGITS).unlink(missing_ok=True)  # none left from an earlier attempt of this run
        if result.logits_note:
            run.log(f"note: {result.logits_note}")
    run.write_metrics(metrics, step=step)
    run.scalars(step, {"test/overall": result.test["overall"]})
    run.log(format_results(metrics))
    run.close(tracker=False)  # flushes the TensorBoard scalars the report reads
    (run.path / STATE).unlink(missing_ok=True)  # finished: the checkpoint holds the result
    if exp.cfg.eval.report:
        stage[0] = "writing the report"
        report = write_report(run.path)
        if not exp.cfg.quiet:
            _log.info(f"report: {report}")
    stage[0] = "giving the tracker the run's files"
    run.track_files([CONFIG, METRICS, REPORT, FIGURES, *([CHECKPOINT] if exp.cfg.log.checkpoint else [])])


def evaluate(run_dir: str | Path, tte: str | None = None, split: str = "test", quiet: bool = False,
             precision: str | None = None, device: str | None = None, calibrate: str = "none",
             recompute: bool = False) -> dict:
    """Evaluate a finished run (rebuilds it from its folder); ``precision``: an ``eval.precision``
    value in place of the run's own; ``device``: in place of the run's ``train.device``. The
    model is run: a plain evaluation is the check that the run reproduces.

    ``calibrate="temperature"`` (test split only): also temperature scaling fitted on the run's
    validation split, returned under "calibration" and recorded in its metrics.json (replacing
    an earlier one); the test metrics themselves stay unscaled. Its logits are the run's stored
    ones when they match (logits.safetensors; ``recompute``: the model's whatever is stored), and
    then so are the test metrics returned: "logits" says where they came from, "test_logits"
    is "stored" or "model"."""
    check_calibration(calibrate, True, "--calibrate")
    if calibrate == "none":
        return evaluate_model(load_run(run_dir, precision=precision, device=device), tte, split, quiet)
    if split != "test":
        raise ConfigError(f"--calibrate {calibrate} fits on the validation split and measures the test split; "
                          f"drop --split {split}.")
    folder = Path(run_dir)
    exp = load_run(folder, precision=precision, device=device)
    check_calibration(calibrate, exp.data.val is not None, "--calibrate")
    tte = tte or exp.cfg.eval.tte
    logits = run_logits(exp, folder / LOGITS, stored_sha256(folder / CHECKPOINT, "checkpoint"), quiet, recompute)
    test_logits, test_labels, views = logits.get("test", tte)
    out = metrics_of(exp, test_logits, test_labels, views, tte)
    record = calibrate_run(exp, logits, tte)
    if env_info().is_main:
        with RunLock.take(folder, way_out=f"delete {folder / LOCK}"):  # not while another process writes it
            metrics = read_metrics(folder)
            metrics["calibration"] = record
            write_text(folder / METRICS, json.dumps(metrics, indent=2))  # atomically
    return dict(out, calibration=record, logits=logits.line(),
                test_logits="model" if logits.sources[("test", tte)] else "stored")
