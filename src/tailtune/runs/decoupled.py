"""Decoupled classifier baselines (Kang et al. 2020, "Decoupling representation and classifier").

A finished run's trained backbone (its PEFT modules, loaded strictly from its checkpoint) is
frozen, and only the classifier trains, with class-balanced sampling (the recipes crt and lws):

- ``crt``: classifier re-training; the head is re-initialised and trained alone.
- ``lws``: learnable weight scaling; the run's head stays, one scale per class trains
  (``head.lws_scale``, models/heads.py:add_class_scale).

With nothing in the backbone training, the feature cache (training/feature_cache.py) holds
the pooled features of the trained backbone: they are computed once and the epochs train the
classifier on them, in seconds. The cache's name includes the source checkpoint's sha256, so
features of another model are never reused.

The new run keeps the source run's data, model, peft and head sections (:func:`decoupled_config`
composes them; :func:`check_source` refuses a config that differs), and its checkpoint holds
every tensor the source trained (``TailModel.kept_frozen``) plus its own: it loads on its own
in ``tailtune eval``, ``predict`` and ``export`` without the source run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tailtune import config as C
from tailtune.config.changes import config_changes
from tailtune.errors import ConfigError
from tailtune.experiment import Experiment
from tailtune.models.heads import CLASS_SCALE, HEADS, LinearClassifier
from tailtune.models.text import TEXT_HEADS
from tailtune.runtime.checkpoint import CHECKSUM, load_checkpoint
from tailtune.runtime.rundir import CHECKPOINT, CONFIG, METRICS, check_run, read_config

# The sections a decoupled run takes from its source (what its backbone and classes are).
SOURCE_SECTIONS = ("data", "model", "peft", "head")
# Keys of those sections that do not change what the trained backbone computes.
FREE_KEYS = {"data.num_workers", "data.download", "data.verify_images"}
NAMES = {"crt": "cRT", "lws": "LWS"}


def decoupled_config(recipe: str | None, from_run: str | Path, data: str | None = None,
                     files=(), overrides=()) -> C.Config:
    """The config of a decoupled run of ``from_run``: ``recipe`` (crt / lws) with the source
    run's data, model, peft, head and eval sections, then ``files`` and ``overrides``; train.from_run set."""
    if data:
        raise ConfigError(f"--data {data} with --from {from_run}: a decoupled run trains on its source run's "
                          "data (its classes are the classifier's); drop --data.")
    source = _finished(from_run)
    # Its evaluation too (the same test-time ensemble, comparable numbers), which may be overridden.
    sections = {k: v for k, v in C.to_dict(read_config(source)).items() if k in (*SOURCE_SECTIONS, "eval")}
    return C.load_config(recipe, None, files, [*overrides, f"train.from_run={source}"],
                         run_layer=(f"run {source} (--from)", sections))


def _finished(from_run: str | Path) -> Path:
    """The source run folder, finished, with its checkpoint; otherwise an error naming the way out."""
    path = Path(from_run).expanduser()
    if not path.is_dir():
        raise ConfigError(f"train.from_run={from_run}: no such folder. Give the folder of a finished run "
                          "(tailtune train -r crt --from RUN_DIR).")
    try:
        check_run(path, finished=True)
    except ConfigError as e:
        raise ConfigError(f"train.from_run={from_run}: {e} A decoupled run needs its trained backbone: "
                          "let the run finish first.") from None
    if not (path / CHECKPOINT).is_file():
        raise ConfigError(f"train.from_run={from_run}: the run has no {CHECKPOINT}; train it again.")
    return path.resolve()


def check_source(cfg: C.Config) -> Path | None:
    """Before anything is built: train.decoupled and train.from_run go together, the source run is
    finished, is not itself decoupled, has a head that can retrain, and ``cfg`` keeps its data, model,
    peft and head. Returns the source folder (None: no decoupled run)."""
    method, from_run = cfg.train.decoupled, cfg.train.from_run
    if method == "none" and from_run is None:
        return None
    if method == "none":
        raise ConfigError(f"train.from_run={from_run} is set but train.decoupled=none: set train.decoupled=crt "
                          "or lws (the recipes: tailtune train -r crt --from RUN), or drop train.from_run.")
    if from_run is None:
        raise ConfigError(f"train.decoupled={method} retrains the classifier of a finished run: give it with "
                          f"--from RUN_DIR (tailtune train -r {method} --from RUN_DIR) or train.from_run=RUN_DIR.")
    source = _finished(from_run)
    scfg = read_config(source)
    if scfg.train.decoupled != "none":
        raise ConfigError(f"train.from_run={from_run} is itself a {NAMES[scfg.train.decoupled]} run (of "
                          f"{scfg.train.from_run}); give the run that trained the backbone.")
    if cfg.head.type in (*TEXT_HEADS, "text_features") or cfg.head.type not in HEADS.names():
        raise ConfigError(f"train.decoupled={method}: the run's head.type={cfg.head.type} computes its classes "
                          "from the text tower; cRT and LWS retrain a classifier of class weights (head.type="
                          f"{'|'.join(n for n in HEADS.names() if n != 'text_features')}).")
    differ = [(k, old, new) for k, old, new in config_changes(
        {s: C.to_dict(scfg)[s] for s in SOURCE_SECTIONS}, {s: C.to_dict(cfg)[s] for s in SOURCE_SECTIONS})
        if k not in FREE_KEYS]
    if differ:
        shown = ", ".join(f"{k}={new!r} (the run's: {old!r})" for k, old, new in differ[:5])
        raise ConfigError(f"train.from_run={from_run}: this config differs from the run's {source / CONFIG} in "
                          f"{shown}. A {NAMES[method]} run keeps its source's data, model, peft and head sections; "
                          "drop these keys (the CLI's --from takes them from the run).")
    return source


def load_source(exp: Experiment, source: Path, log) -> None:
    """Load the source run's trained tensors into ``exp.model`` strictly, freeze its backbone, and
    leave trainable what the method trains (crt: the head; lws: the per-class scales)."""
    model, method = exp.model, exp.cfg.train.decoupled
    scale = getattr(model.head, CLASS_SCALE, None)
    if scale is not None:
        scale.requires_grad_(False)  # not in the source checkpoint: loading must not expect it
    meta = load_checkpoint(source / CHECKPOINT, model, exp.backbone.info, exp.data.classnames,
                           f"the dataset {exp.cfg.data.name} of run {source}")
    kept = set(model.trainable_state_dict())
    model.requires_grad_(False)
    model.kept_frozen = kept
    model.bn_train = False  # the source's BatchNorm statistics are part of its frozen backbone
    if method == "crt":
        model.head.requires_grad_(True)
    else:
        scale.requires_grad_(True)
    sha = meta.get(CHECKSUM)
    if sha is None:
        raise ConfigError(f"train.from_run={source}: its checkpoint carries no sha256 (an older tailtune); the "
                          "decoupled run could not record which weights it used. Train the source run again.")
    source_metrics = json.loads((source / METRICS).read_text())
    exp.source = {"method": method, "name": NAMES[method], "from_run": str(source), "checkpoint_sha256": sha,
                  "source_test_overall": (source_metrics.get("test") or {}).get("overall")}
    log(f"{NAMES[method]} of run {source} (checkpoint sha256 {sha[:12]}...): its backbone is frozen, "
        + ("the classifier is re-initialised and trained" if method == "crt" else
           "its classifier is kept and one scale per class trains"))


@torch.no_grad()
def init_decoupled_head(exp: Experiment) -> str:
    """crt: the head's random initialisation drawn again (from the run's seeded streams); lws:
    the source's head kept, the scales at one. Returns how the head was initialised."""
    head = exp.model.head
    if exp.cfg.train.decoupled == "lws":
        getattr(head, CLASS_SCALE).fill_(1.0)
        return f"kept from {exp.source['from_run']} (LWS: scales at 1)"
    head.weight.normal_(0, 0.02)  # as models/heads.py:_Classifier draws it
    if isinstance(head, LinearClassifier):
        head.bias.zero_()
    else:  # heads that normalise their weights: unit rows, as every initialiser gives (small rows take huge steps)
        head.weight.copy_(torch.nn.functional.normalize(head.weight, dim=-1))
    return "random (cRT: re-initialised)"

