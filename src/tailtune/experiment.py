"""The library's entry points: build a model and data from a config, train, evaluate.

Flow: config -> data + backbone -> PEFT injected -> head initialised -> engine trains ->
metrics -> run folder. The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from tailtune import config as C
from tailtune.data.samplers import SAMPLERS
from tailtune.data.sources.base import SOURCES, LTData, build_data
from tailtune.data.store import use_store
from tailtune.data.transforms import (
    AUGMENTATIONS,
    TTE_MODES,
    TTEOptions,
    default_expand,
    with_interpolation,
)
from tailtune.data.validate import check_image_files
from tailtune.errors import ConfigError
from tailtune.losses import LOSSES, LdamOptions
from tailtune.models.accel import apply_model_options
from tailtune.models.backbones.base import PROVIDERS, Backbone, build_backbone
from tailtune.models.heads import (
    HEAD_INITS,
    HEADS,
    add_class_scale,
    build_head,
    check_head,
)
from tailtune.models.model import TailModel
from tailtune.models.peft.base import (
    PEFT_METHODS,
    apply_peft,
    check_peft,
    method_names,
    trains_bn_stats,
)
from tailtune.models.prompts import PROMPT_MODES
from tailtune.models.text import TEXT_HEADS, apply_text_peft, build_text_head, check_text
from tailtune.runtime.checkpoint import load_checkpoint
from tailtune.runtime.device import default_workers, resolve_device
from tailtune.runtime.distributed import (
    env_info,
    local_device,
)
from tailtune.runtime.precision import resolve_eval_precision, resolve_precision
from tailtune.runtime.rng import seeded_rng
from tailtune.runtime.rundir import CHECKPOINT, read_config

_log = logging.getLogger(__name__)


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
    drw_epoch = C.options_of(cfg.loss, "ldam", LdamOptions).drw_epoch
    if cfg.loss.name == "ldam" and drw_epoch is not None and drw_epoch >= cfg.train.epochs:
        raise ConfigError(f"loss.ldam.drw_epoch={drw_epoch} never starts in train.epochs={cfg.train.epochs}; "
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
    # A decoupled run's (train.decoupled) source: method, run folder, checkpoint sha256 (runs/decoupled.py).
    source: dict | None = None

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


def build(cfg: C.Config, data: LTData | None = None, *, train: bool = True) -> Experiment:
    """Backbone, data, PEFT modules and head for ``cfg`` (the head is not initialised yet).

    Their random parts (a randomly initialised backbone, the PEFT modules, the head) are drawn
    from ``cfg.train.seed`` on forked generators: the same model whenever a run is rebuilt from
    its folder, and the caller's RNG states left as they were. ``train=False``: the model is only
    evaluated (a finished run rebuilt, an export), so ``train.precision`` must work on this device
    only where ``eval.precision=train`` uses it (a run trained in fp16 on a GPU loads on a CPU).
    """
    return _build(cfg, data, keep_rng=True, train=train)


def check_eval_precision(cfg: C.Config, device: torch.device, where: str) -> None:
    """That ``cfg``'s evaluation precision runs on ``device``; else an error for the rebuilt run
    ``where`` naming the way out (a ``precision`` in place of the run's own, or another device)."""
    try:
        resolve_eval_precision(cfg.eval.precision, cfg.train.precision, device)
    except ConfigError:
        how = (f"eval.precision=train, train.precision={cfg.train.precision}" if cfg.eval.precision == "train"
               else f"eval.precision={cfg.eval.precision}")
        raise ConfigError(f"{where} evaluates in fp16 ({how} in its config), which is not supported on "
                          f"{device.type.upper()}; give another precision (fp32 or bf16: --precision fp32 on the "
                          "command line, precision='fp32' in Python) or a CUDA device.") from None


def inference_config(cfg: C.Config, device: str | None, precision: str | None, where: str) -> C.Config:
    """``cfg`` of a finished run or export set to compute on ``device`` (None: its own
    ``train.device``) with ``precision`` (an ``eval.precision`` value; None: the run's own), both
    checked against this machine; the errors name ``device`` and ``precision`` (Python's keywords;
    the CLI checks its options first) or, for the run's own settings, the way to replace them."""
    if device is None:
        device = cfg.train.device
        try:
            resolve_device(device)
        except ConfigError as e:
            raise ConfigError(f"{where} computes on its config's {e}".rstrip(".")
                              + "; or give another device for this evaluation (--device cpu on the command "
                              "line, device='cpu' in Python).") from None
    torch_device = resolve_device(device, key="device")
    cfg = replace(cfg, train=replace(cfg.train, device=device))
    if precision is not None:
        cfg = replace(cfg, eval=replace(cfg.eval, precision=precision))  # checks the value
        if precision != "train":
            resolve_precision(precision, torch_device, key="precision")
    check_eval_precision(cfg, torch_device, where)
    return cfg


def _build(cfg: C.Config, data: LTData | None, keep_rng: bool, train: bool = True) -> Experiment:
    """:func:`build`; a run (``keep_rng=False``) seeds the global streams instead, which its
    training then continues (inside the run's own :func:`kept_rng`)."""
    validate(cfg)
    device = local_device(resolve_device(cfg.train.device), env_info())
    if train:
        resolve_precision(cfg.train.precision, device)
    resolve_eval_precision(cfg.eval.precision, cfg.train.precision, device)
    # Start-up checks in order of cost: the data's listing and its files' presence (seconds), then
    # the model (maybe a download) and what the config asks of it, then decoding every image.
    loaded = data is None
    data = _list_data(cfg.data) if loaded else data
    with seeded_rng(cfg.train.seed, keep=keep_rng):
        return _create(cfg, data, loaded, device, train)


def _create(cfg: C.Config, data: LTData, loaded: bool, device: torch.device, train: bool = True) -> Experiment:
    """The model of ``cfg`` on ``device``, from the seeded streams; decodes the data if ``loaded``."""
    backbone = build_backbone(cfg.model)
    # data.interpolation sets the filter of every view built from backbone.preprocess (train, test, TTE, init).
    backbone.preprocess = with_interpolation(backbone.preprocess, cfg.data.interpolation)
    base_params = backbone.encoder_param_count()
    check_peft(backbone, cfg.peft)
    check_head(cfg.head, backbone)
    check_text(cfg.peft, cfg.head, backbone)
    if loaded:
        data = _finish_data(cfg.data, data, backbone.preprocess)
    apply_peft(backbone, cfg.peft, data.num_classes)
    apply_text_peft(backbone, cfg.peft, data.num_classes)
    if cfg.head.type in (*TEXT_HEADS, "text_features"):
        head = build_text_head(cfg.head, backbone, list(data.classnames), train)
    else:
        head = build_head(cfg.head, backbone.feature_dim, data.num_classes)
    if cfg.train.decoupled == "lws":  # the scales LWS learns, in every model of such a run (eval, export)
        add_class_scale(head, data.num_classes)
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


def tte_options(cfg: C.Config) -> TTEOptions:
    """Test-time-ensemble settings of a run (randaug draws the run's own training augmentation;
    fivecrop/tencrop enlarge by eval.expand, by default the backbone's: transforms.default_expand)."""
    expand = default_expand(cfg.model.name) if cfg.eval.expand is None else cfg.eval.expand
    return TTEOptions(expand=expand, randaug_views=cfg.eval.randaug_views, augment=cfg.train.augment,
                      epochs=cfg.train.epochs, seed=cfg.train.seed, train=cfg.train)


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


def load_run(run_dir: str | Path, data: LTData | None = None, precision: str | None = None,
             device: str | None = None) -> Experiment:
    """Rebuild a finished run's model from its folder (config + checkpoint), to evaluate it;
    ``precision``: an ``eval.precision`` value in place of the run's own; ``device``: in place
    of the run's ``train.device``."""
    cfg = inference_config(read_config(run_dir), device, precision, f"run {run_dir}")
    exp = build(cfg, data, train=False)
    load_checkpoint(Path(run_dir) / CHECKPOINT, exp.model, exp.backbone.info, exp.data.classnames,
                    f"the dataset {exp.cfg.data.name} of run {run_dir}")
    return exp


