"""Dataclass configs: the schema of every run, with the value checks of each section.

Each section (data, model, peft, head, loss, train, eval, log) is a dataclass whose
``__post_init__`` checks its values; every field's help text (and its allowed values, where
fixed) is in its metadata (:func:`setting`); OmegaConf reads the annotations for typing and merging
(config/load.py composes the layers). The resolved config is saved next to every run.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import MISSING, dataclass, field
from typing import Any, Optional, Union

from tailtune.errors import ConfigError
from tailtune.registry import filling

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
EVAL_PRECISIONS = ("train", *PRECISIONS)  # eval.precision: train = whatever train.precision resolves to
DEFAULT_PROMPT = "a photo of a {}."
BN_MODES = ("auto", "eval", "train")
CALIBRATIONS = ("none", "temperature")  # eval.calibrate (evaluation/calibration.py)
VAL_MODES = ("auto", "split", "holdout", "none")
HOLDOUT_POLICIES = ("balanced", "proportional")  # data.holdout_policy (data/holdout.py)
ON_NAN_MODES = ("stop", "skip")
DECODERS = ("cpu", "gpu")  # data.decode (data/gpu_decode.py)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # train.compile_mode: torch.compile's modes
DECOUPLED_MODES = ("none", "crt", "lws")  # train.decoupled: Kang et al.'s decoupled classifier stage (runs/decoupled.py)
CACHE_MODES = ("auto", "always", "never")  # = training.feature_cache.CACHE_MODES; not on/off: YAML reads those as booleans
_BLOCKS_HELP = "all, 'first N', 'last N', 'S:E' or [S, E] (blocks S..E-1, counted from 0)"


def setting(default: Any = MISSING, help: str = "", *, factory: Any = MISSING,
            choices: tuple | None = None, registry: str | None = None) -> Any:
    """A dataclass field with its help text, and its allowed values if they are fixed, in the
    field's metadata (``help``, ``choices``): docs/CONFIG.md and the error texts read them there.

    ``choices`` are checked by ``__post_init__`` with :func:`_check_choice` (OmegaConf >= 2.1,
    the floor, does not validate ``Literal`` annotations; 2.4 would, with its own error text).
    ``registry``: the field's config key (``eval.tte``) when its allowed values are the names of the
    registry that fills it (``Registry(..., fills="eval.tte")``, in a layer above): they are looked up
    when checked (:func:`_check_registered`) and when documented, so the config keeps no copy of them.
    """
    meta = {"help": help, **({"choices": choices} if choices is not None else {}),
            **({"registry": registry} if registry is not None else {})}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _check_choice(section: str, key: str, value: Any, choices: tuple | list) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(f"{section}.{key}={value!r} is not valid; choose one of {', '.join(map(str, choices))}.{hint}")


def registered_choices(key: str) -> list[str]:
    """The allowed values of config key ``key`` (``eval.tte``): the names of the registry that fills it,
    in the order they were registered. ``import tailtune`` (which any ``import tailtune.config`` runs
    first) has registered them all by the time a config is made."""
    return filling(key).in_order()


def _check_registered(section: str, key: str, value: Any) -> None:
    _check_choice(section, key, value, registered_choices(f"{section}.{key}"))


def _check_positive(section: str, key: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{section}.{key}={value!r} must be {bound}.")


@dataclass
class DataConfig:
    """Which dataset, where its files are, and how it is made long-tailed."""

    name: str = setting("fashion_mnist_lt", "a registered source: `tailtune list datasets`")
    root: Optional[str] = setting(None, "folder holding the dataset's files (source-specific default if unset)")
    imb_ratio: float = setting(100.0, "imbalance ratio n_max / n_min of the exponential profile (1 = no subsampling)")
    group_imb_ratio: Optional[float] = setting(None, "counts used for many/medium/few groups (CIFAR IR50/10 use 100)")
    download: bool = setting(False, "download missing files when online (torchvision's downloader)")
    num_workers: int = setting(-1, "DataLoader workers; -1 = by core count")
    subset_seed: int = setting(0, "seed of the long-tail subsampling (the benchmark uses 0)")
    # List-based benchmarks (imagenet_lt, places_lt, inat2018) and your own data (folder, csv):
    splits_dir: Optional[str] = setting(None, "folder of the split lists / annotation files; default: data.root")
    path_map: list[str] = setting(help='rewrite listed paths: "OLD=NEW" prefixes, or places365_original', factory=list)
    classnames_file: Optional[str] = setting(None, "one class name per line, in label order (count checked); folder / csv: the classes' names (csv: also the labels); any other source: replaces its names, i.e. the prompts (e.g. the reference's Places-LT names, see places_lt)")
    holdout_per_class: Optional[int] = setting(None, "images per class held out for a missing test / val split (folder / csv; any source with data.val=holdout): balanced policy: exactly this many from every class (default: a quarter of the smallest class, at most 20); proportional: at most this many (default 20)")
    holdout_policy: str = setting("balanced", "how a missing test / val split is held out of the training images: balanced (the same number from every class; refused when the smallest class has fewer than 4 images) | proportional (a quarter of each class's own images, at most data.holdout_per_class or 20: every class keeps at least 3/4 for training, but a class of fewer than 4 images gets no test image and rare classes are tested on 1-2 images, so few-shot accuracy is noisier)", choices=HOLDOUT_POLICIES)
    val: str = setting("auto", "validation split: auto (the dataset's own; own data: a held-out slice of train) | split | holdout | none", choices=VAL_MODES)
    verify_images: bool = setting(True, "decode every listed image at start-up (a corrupt file stops the run, named); with data.store only if data.skip_corrupt")
    skip_corrupt: bool = setting(False, "drop images that cannot be read (corrupt, a refused mode or size; the notes name them) instead of stopping")
    store: Optional[str] = setting(None, "folder written by `tailtune data cache`: decoded, resized pixels (no JPEG decoding)")
    interpolation: str = setting("auto", "resize filter of every view (training crops, test view, five/ten crops, head init)", registry="data.interpolation")
    decode: str = setting("cpu", "where training JPEGs are decoded: cpu (PIL, in the loader's workers) | gpu (the loader reads the bytes and draws the same crops; the batch is decoded on train.device with torchvision's decode_jpeg, nvJPEG on CUDA, libjpeg on a CPU device; JPEG files with the standard augmentation only; evaluation decodes on the CPU)", choices=DECODERS)

    def __post_init__(self) -> None:
        _check_choice("data", "val", self.val, VAL_MODES)
        _check_choice("data", "holdout_policy", self.holdout_policy, HOLDOUT_POLICIES)
        _check_registered("data", "interpolation", self.interpolation)
        _check_choice("data", "decode", self.decode, DECODERS)
        if self.decode == "gpu" and self.store:
            raise ConfigError("data.decode=gpu decodes JPEG files, but data.store reads decoded pixels from the "
                              "store (no decoding left); drop one of them.")
        _check_positive("data", "holdout_per_class", self.holdout_per_class)
        if self.imb_ratio < 1:
            raise ConfigError(f"data.imb_ratio={self.imb_ratio} must be >= 1 (n_max / n_min).")
        if self.group_imb_ratio is not None and self.group_imb_ratio < 1:
            raise ConfigError(f"data.group_imb_ratio={self.group_imb_ratio} must be >= 1.")
        if self.num_workers < -1:
            raise ConfigError("data.num_workers must be -1 (auto) or >= 0.")


@dataclass
class ModelConfig:
    """The frozen backbone."""

    provider: str = setting("open_clip", "open_clip | timm | packaged (`tailtune list models`)")
    name: str = setting("ViT-B-16", "model name within the provider")
    pretrained: str = setting("openai", "pretrained tag, 'none' for random init, or a local checkpoint path")
    resolution: Optional[int] = setting(None, "input size; default: the backbone's own")
    cache_dir: Optional[str] = setting(None, "where open_clip / timm keep downloaded weights")
    quick_gelu: Optional[Union[bool, str]] = setting("auto", "open_clip: QuickGELU activations (OpenAI's CLIP was trained with them): true | false | auto = the pretrained tag's (openai: yes) or, for a local file, yes if it shows OpenAI's training: a TorchScript archive whose modules include QuickGELU, OpenAI's input_resolution / context_length / vocab_size entries, or a file in the Hugging Face cache of open_clip's openai weights (a plain state dict cannot be told apart: set true for OpenAI's); the log says which and why")

    def __post_init__(self) -> None:
        _check_positive("model", "resolution", self.resolution)
        if self.quick_gelu is None:  # configs saved before 'auto' existed wrote null for it
            self.quick_gelu = "auto"
        if self.quick_gelu not in (True, False, "auto"):
            raise ConfigError(f"model.quick_gelu={self.quick_gelu!r} is not valid; choose true, false or auto.")
        if not self.name:
            raise ConfigError("model.name must not be empty.")


@dataclass
class PeftConfig:
    """The parameter-efficient module added to the frozen backbone."""

    method: str = setting("adaptformer", "`tailtune list peft`; 'none' = classifier only, 'full' = full fine-tuning")
    r: Optional[int] = setting(None, "bottleneck / rank; default 2^max(0, floor(log2(C / 2L)))")
    bn_mode: str = setting("auto", "BatchNorm statistics: auto (frozen unless full fine-tuning), eval, train", choices=BN_MODES)
    lr: Optional[float] = setting(None, "learning rate of the backbone's tuned parameters (default: train.lr)")
    blocks: Any = setting("all", "Transformer blocks the method applies to: all | first N | last N | S:E or [S, E] ([S, E), from 0)")

    def __post_init__(self) -> None:
        _check_positive("peft", "r", self.r)
        _check_positive("peft", "lr", self.lr)
        _check_choice("peft", "bn_mode", self.bn_mode, BN_MODES)
        parse_blocks(self.blocks)


def parse_blocks(spec: Any) -> tuple[slice, int]:
    """``peft.blocks`` as a slice over a ViT's blocks, and how many blocks it needs to exist.

    Accepts 'all', 'first N', 'last N' (also 'last_N'), 'S:E' and a two-item list [S, E].
    """
    if isinstance(spec, (list, tuple)) and len(spec) == 2 and all(isinstance(v, int) for v in spec):
        start, stop = spec
    elif isinstance(spec, str) and spec.strip() == "all":
        return slice(None), 0
    elif isinstance(spec, str) and (m := re.fullmatch(r"\s*(first|last)[\s_]*(\d+)\s*", spec)):
        n = int(m.group(2))
        if n < 1:
            raise ConfigError(f"peft.blocks={spec!r} selects no block; N must be >= 1.")
        return (slice(0, n) if m.group(1) == "first" else slice(-n, None)), n
    elif isinstance(spec, str) and (m := re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", spec)):
        start, stop = int(m.group(1)), int(m.group(2))
    else:
        # YAML reads an unquoted 6:12 as the base-60 number 372: say so rather than only "invalid".
        hint = (" (an unquoted S:E with S >= 1 is read by YAML as a base-60 number: write [S, E] or quote it)"
                if isinstance(spec, int) else "")
        raise ConfigError(f"peft.blocks={spec!r} is not valid{hint}; use {_BLOCKS_HELP}.")
    if not 0 <= start < stop:
        raise ConfigError(f"peft.blocks={spec!r} selects no block; need 0 <= S < E in [S, E).")
    return slice(start, stop), stop


@dataclass
class HeadConfig:
    """The classifier on top of the image features and its initialisation."""

    type: str = setting("cosine", "`tailtune list heads`")
    scale: float = setting(25.0, "logit scale of the cosine classifier")
    init: str = setting("auto", "`tailtune list inits`; auto = text when the backbone has a text tower, else class_mean")
    prompt: str = setting(DEFAULT_PROMPT, "template of prompt_mode=default (text init and zero-shot)")
    prompt_mode: str = setting("default", "`tailtune list prompts`: default | classname | ensemble | descriptors")
    descriptors: Optional[str] = setting(None, "prompt_mode=descriptors: JSON file {class name: [description, ...]}")

    def __post_init__(self) -> None:
        _check_positive("head", "scale", self.scale)
        if "{}" not in self.prompt:
            raise ConfigError(f"head.prompt={self.prompt!r} must contain '{{}}' where the class name goes.")
        if self.prompt != DEFAULT_PROMPT and self.prompt_mode != "default":
            raise ConfigError(f"head.prompt is only read with head.prompt_mode=default, not {self.prompt_mode!r}; "
                              "drop head.prompt or set head.prompt_mode=default.")
        if (self.prompt_mode == "descriptors") != (self.descriptors is not None):
            raise ConfigError("head.prompt_mode=descriptors and head.descriptors=FILE.json go together "
                              f"(got prompt_mode={self.prompt_mode!r}, descriptors={self.descriptors!r}).")


@dataclass
class LossConfig:
    """The training loss."""

    name: str = setting("la", "`tailtune list losses`")
    label_smoothing: float = setting(0.0, "label smoothing eps: targets (1 - eps) q + eps / C, also of mixed targets (train.mixup.*); every loss that takes soft targets (not lade); 0 = off")

    def __post_init__(self) -> None:
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"loss.label_smoothing={self.label_smoothing!r} must be in [0, 1) (0.1 is usual).")


@dataclass
class TrainConfig:
    """Optimisation."""

    epochs: int = 10
    batch_size: int = setting(128, "images per optimizer step")
    micro_batch_size: Optional[int] = setting(None, "images per forward pass; accumulation fills the batch")
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = setting("cosine", "learning-rate schedule, stepped after every optimizer step", registry="train.scheduler")
    precision: str = setting("auto", "auto (CUDA: bf16, else fp16; CPU: bf16 for ViTs if the CPU has native bf16, else fp32) | bf16 | fp16 | fp32", choices=PRECISIONS)
    seed: int = 0
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    deterministic: bool = setting(False, "torch deterministic algorithms (slower)")
    log_every: int = setting(20, "steps between log / TensorBoard lines")
    channels_last: bool = setting(True, "CNN backbones: channels_last memory format")
    select_by_val: bool = setting(False, "keep the epoch with the best validation accuracy (the test set is never used)")
    sampler: str = setting("instance", "`tailtune list samplers`: instance | class_balanced | square_root | class_aware")
    augment: str = setting("standard", "`tailtune list augmentations`: standard | minimal (LIFT+'s MDA: square crops, no flips, area curriculum, train.minimal.schedule)")
    save_every: int = setting(0, "also save the resumable training state every N optimizer steps (0: epoch ends only)")
    on_nan: str = setting("stop", "a NaN/inf loss: stop (keeping the last good state) | skip the step (counted in the log)", choices=ON_NAN_MODES)
    compile: bool = setting(False, "torch.compile the model (the first steps compile it: minutes on CPU)")
    compile_mode: str = setting("default", "with train.compile: torch.compile's mode: default | reduce-overhead (CUDA graphs: less per-step launch overhead) | max-autotune (also searches kernels: a longer compile)", choices=COMPILE_MODES)
    grad_checkpointing: bool = setting(False, "recompute block activations in the backward pass: less memory, one more forward of the blocks")
    cache_features: str = setting("auto", "frozen-prefix feature cache: auto (when it saves work) | always | never", choices=CACHE_MODES)
    cache_views: Optional[int] = setting(None, "augmented views cached per image; null = train.epochs; 0 = one un-augmented view")
    cache_dir: Optional[str] = setting(None, "keep the feature cache in a disk memmap here (reused by later runs); null = memory")
    decoupled: str = setting("none", "decoupled classifier stage (Kang et al. 2020) on the trained backbone of train.from_run: none | crt (re-initialise and train the classifier alone) | lws (keep the run's classifier, learn one scale per class); the recipes crt and lws set it with class-balanced sampling: `tailtune train -r crt --from RUN`", choices=DECOUPLED_MODES)
    from_run: Optional[str] = setting(None, "with train.decoupled: the finished run folder whose trained backbone (with its PEFT modules, loaded strictly from its checkpoint) is frozen; the new run keeps that run's data, model, peft and head sections and holds its backbone tensors in its own checkpoint")
    extra_epochs: list[int] = setting(help="epochs trained after train.epochs, in blocks; each block starts the learning-rate schedule again from train.lr (peft.lr) and runs it over the block's epochs (a warm restart); the augmentation and the feature cache keep their last epoch's settings. Added by `tailtune train --resume RUN --extend-epochs N`", factory=list)

    def __post_init__(self) -> None:
        _check_positive("train", "epochs", self.epochs)
        for n in self.extra_epochs:
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ConfigError(f"train.extra_epochs={list(self.extra_epochs)} must hold whole numbers >= 1 "
                                  "(epochs per block after train.epochs).")
        _check_positive("train", "save_every", self.save_every, allow_zero=True)
        _check_choice("train", "on_nan", self.on_nan, ON_NAN_MODES)
        _check_choice("train", "compile_mode", self.compile_mode, COMPILE_MODES)
        _check_choice("train", "cache_features", self.cache_features, CACHE_MODES)
        _check_choice("train", "decoupled", self.decoupled, DECOUPLED_MODES)
        _check_positive("train", "cache_views", self.cache_views, allow_zero=True)
        _check_positive("train", "batch_size", self.batch_size)
        _check_positive("train", "micro_batch_size", self.micro_batch_size)
        _check_positive("train", "lr", self.lr)
        _check_positive("train", "momentum", self.momentum, allow_zero=True)
        _check_positive("train", "weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("train", "log_every", self.log_every)
        _check_registered("train", "scheduler", self.scheduler)
        _check_choice("train", "precision", self.precision, PRECISIONS)
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by train.micro_batch_size="
                f"{self.micro_batch_size}; pick a micro-batch that divides the batch "
                f"(e.g. {_largest_divisor(self.batch_size, self.micro_batch_size)})."
            )


def total_epochs(train: TrainConfig) -> int:
    """Every epoch a run trains: train.epochs and its extensions (train.extra_epochs)."""
    return train.epochs + sum(train.extra_epochs)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if n % d == 0)


@dataclass
class EvalConfig:
    """Evaluation and test-time ensembling."""

    tte: str = setting("fivecrop", "test-time ensemble (`tailtune list tte`)", registry="eval.tte")
    expand: Optional[int] = setting(None, "fivecrop/tencrop: resize to resolution + expand; null = the backbone's: 21 for ViT-L/14 (224 and 336 px), else 24 (the reference's values)")
    randaug_views: int = setting(10, "randaug: draws of the training augmentation per image")
    batch_size: int = 128
    precision: str = setting("train", "every evaluation of the run (test, val, train-vs-test gap, head-init features, `tailtune eval`, predict, zero-shot): train (as train.precision resolves) | auto (the rule of train.precision=auto) | bf16 | fp16 | fp32 (the reference code's)", choices=EVAL_PRECISIONS)
    gap_per_class: int = setting(100, "train-vs-test gap: train images per class evaluated (stratified, seeded); 0 = skip")
    report: bool = setting(True, "write report.html (+ PNGs) at the end of the run; later: `tailtune report RUN_DIR`")
    calibrate: str = setting("none", "after training: none | temperature (temperature scaling: T fitted on the validation split's logits by NLL, needs a validation split, e.g. data.val=holdout; metrics.json \"calibration\" holds T and the test ECE / NLL / Brier after it; the test metrics themselves stay unscaled, accuracy is unchanged); later: `tailtune eval RUN --calibrate temperature`", choices=CALIBRATIONS)
    save_logits: Union[bool, str] = setting("auto", "after training, the (N, C) float32 logits of the test split (each test-time-ensemble mode evaluated) and of the validation split (eval.tte) into logits.safetensors, tied to the checkpoint's sha256 and each split's labels: `tailtune eval RUN --posthoc` / `--calibrate` read them instead of running the model again; true | false | auto = when the file holds at most 512 MiB (about (test images x modes + val images) x classes x 4 bytes; ImageNet-LT at fivecrop: ~480 MB, written; iNaturalist 2018: ~1.6 GB, not written)")

    def __post_init__(self) -> None:
        _check_registered("eval", "tte", self.tte)
        _check_positive("eval", "expand", self.expand, allow_zero=True)
        _check_positive("eval", "randaug_views", self.randaug_views)
        _check_positive("eval", "batch_size", self.batch_size)
        _check_choice("eval", "precision", self.precision, EVAL_PRECISIONS)
        _check_positive("eval", "gap_per_class", self.gap_per_class, allow_zero=True)
        _check_choice("eval", "calibrate", self.calibrate, CALIBRATIONS)
        if self.save_logits not in (True, False, "auto"):
            raise ConfigError(f"eval.save_logits={self.save_logits!r} is not valid; choose true, false or auto.")


@dataclass
class LogConfig:
    """Where a run's scalars go besides its TensorBoard folder: an experiment tracker."""

    tracker: str = setting("none", "experiment tracker beside TensorBoard (`tailtune list trackers`): none | mlflow (`pip install tailtune[mlflow]`) | wandb (`pip install tailtune[wandb]`); it gets the TensorBoard scalars, the config as parameters, the final metrics and the run's files (report, checkpoint); only rank 0 logs, and a resumed run continues its tracker run (tracker.json in the run folder)", registry="log.tracker")
    checkpoint: bool = setting(True, "also give the tracker checkpoint.safetensors (the trainable weights: with peft.method=full, the whole model's size)")

    def __post_init__(self) -> None:
        _check_registered("log", "tracker", self.tracker)


@dataclass
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    output_dir: str = setting("runs", "parent folder of run folders")
    name: Optional[str] = setting(None, "run folder name; default: <data>_<model>_<peft>_<time>")
    overwrite: bool = setting(False, "allow reusing a run folder that holds another run")
    quiet: bool = setting(False, "nothing on the console but the results table: no progress bars, no log lines (log.txt keeps them)")


# Settings that name files or folders; a run folder's config.yaml holds them absolute (and
# data.csv.file, the csv source's file, see with_absolute_paths).
PATH_KEYS = (("data", "root"), ("data", "store"), ("data", "splits_dir"), ("data", "classnames_file"),
             ("head", "descriptors"), ("train", "cache_dir"), ("model", "cache_dir"),
             ("train", "from_run"))


def with_absolute_paths(cfg: Config) -> Config:
    """A copy of ``cfg`` whose files and folders are absolute paths (relative ones count from the
    current folder), so that ``tailtune eval`` or ``--resume`` of its run work from any folder.

    ``data.csv.file`` is made absolute where it is found (under ``data.root`` first, as the csv
    source looks); ``model.pretrained`` only when it names an existing file (otherwise it is a tag).
    """
    out = copy.deepcopy(cfg)

    def absolute(v: str) -> str:
        return os.path.abspath(os.path.expanduser(v))

    for section, key in PATH_KEYS:
        node = getattr(out, section)
        if getattr(node, key):
            setattr(node, key, absolute(getattr(node, key)))
    opts = getattr(out.data, "csv", None)  # the csv source's options (data/sources/csv.py), once gathered
    csv = opts.file if opts is not None else None
    if csv and not os.path.isabs(os.path.expanduser(csv)):
        under_root = os.path.join(out.data.root, os.path.expanduser(csv)) if out.data.root else None
        if under_root and os.path.isfile(under_root):
            opts.file = under_root
        elif os.path.isfile(os.path.expanduser(csv)):
            opts.file = absolute(csv)
    if out.model.pretrained and os.path.isfile(os.path.expanduser(out.model.pretrained)):
        out.model.pretrained = absolute(out.model.pretrained)
    return out


