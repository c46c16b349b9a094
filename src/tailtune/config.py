"""Dataclass configs: the schema of every run.

Configs are composed as: schema defaults <- recipe YAML <- data preset YAML <- user YAML
files <- ``key=value`` overrides. Merging, typing and override parsing are OmegaConf's
(structured configs); tailtune only adds value checks in ``__post_init__`` and a
friendlier error text. The resolved config is saved next to every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TTE_MODES = ("none", "fivecrop")
BN_MODES = ("auto", "eval", "train")


def _check_choice(section: str, key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{key}={value!r} is not valid; choose one of {', '.join(map(str, choices))}.")


def _check_positive(section: str, key: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{section}.{key}={value!r} must be {bound}.")


@dataclass
class DataConfig:
    """Which dataset, where its files are, and how it is made long-tailed."""

    name: str = "fashion_mnist_lt"  # a registered source: `tailtune list datasets`
    root: Optional[str] = None  # folder holding the dataset's files (source-specific default if unset)
    imb_ratio: float = 100.0  # imbalance ratio n_max / n_min of the exponential profile (1 = no subsampling)
    group_imb_ratio: Optional[float] = None  # counts used for many/medium/few groups (CIFAR IR50/10 use 100)
    download: bool = False  # download missing files when online (torchvision's downloader)
    num_classes: Optional[int] = None  # synthetic source only
    train_per_class: int = 40  # synthetic source: images of the head class
    test_per_class: int = 10  # synthetic source: test images per class
    image_size: int = 32  # synthetic source: side of the generated images
    num_workers: int = -1  # DataLoader workers; -1 = by core count
    subset_seed: int = 0  # seed of the long-tail subsampling (the benchmark uses 0)

    def __post_init__(self) -> None:
        if self.imb_ratio < 1:
            raise ConfigError(f"data.imb_ratio={self.imb_ratio} must be >= 1 (n_max / n_min).")
        if self.group_imb_ratio is not None and self.group_imb_ratio < 1:
            raise ConfigError(f"data.group_imb_ratio={self.group_imb_ratio} must be >= 1.")
        _check_positive("data", "num_classes", self.num_classes)
        _check_positive("data", "train_per_class", self.train_per_class)
        _check_positive("data", "test_per_class", self.test_per_class)
        _check_positive("data", "image_size", self.image_size)
        if self.num_workers < -1:
            raise ConfigError("data.num_workers must be -1 (auto) or >= 0.")


@dataclass
class ModelConfig:
    """The frozen backbone."""

    provider: str = "open_clip"  # open_clip | timm | efficientnet_lite0 (`tailtune list models`)
    name: str = "ViT-B-16"  # model name within the provider
    pretrained: str = "openai"  # pretrained tag, 'none' for random init, or a local checkpoint path
    resolution: Optional[int] = None  # input size; default: the backbone's own
    cache_dir: Optional[str] = None  # where open_clip / timm keep downloaded weights

    def __post_init__(self) -> None:
        _check_positive("model", "resolution", self.resolution)
        if not self.name:
            raise ConfigError("model.name must not be empty.")


@dataclass
class PeftConfig:
    """The parameter-efficient module added to the frozen backbone."""

    method: str = "adaptformer"  # `tailtune list peft`; 'none' = classifier only, 'full' = full fine-tuning
    r: Optional[int] = None  # bottleneck / rank; default 2^max(0, floor(log2(C / 2L)))
    bn_mode: str = "auto"  # BatchNorm statistics: auto (frozen unless full fine-tuning), eval, train
    lr: Optional[float] = None  # learning rate of the backbone's tuned parameters (default: train.lr)

    def __post_init__(self) -> None:
        _check_positive("peft", "r", self.r)
        _check_positive("peft", "lr", self.lr)
        _check_choice("peft", "bn_mode", self.bn_mode, BN_MODES)


@dataclass
class HeadConfig:
    """The classifier on top of the image features and its initialisation."""

    type: str = "cosine"  # `tailtune list heads`
    scale: float = 25.0  # logit scale of the cosine classifier
    init: str = "auto"  # text | class_mean | random; auto = text when the backbone has a text tower
    prompt: str = "a photo of a {}."  # template for text initialisation

    def __post_init__(self) -> None:
        _check_positive("head", "scale", self.scale)
        if "{}" not in self.prompt:
            raise ConfigError(f"head.prompt={self.prompt!r} must contain '{{}}' where the class name goes.")


@dataclass
class LossConfig:
    """The training loss."""

    name: str = "la"  # `tailtune list losses`
    tau: float = 1.0  # logit adjustment strength (la)

    def __post_init__(self) -> None:
        _check_positive("loss", "tau", self.tau, allow_zero=True)


@dataclass
class TrainConfig:
    """Optimisation."""

    epochs: int = 10
    batch_size: int = 128  # images per optimizer step
    micro_batch_size: Optional[int] = None  # images per forward pass; accumulation fills the batch
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    scheduler: str = "cosine"  # cosine | constant
    precision: str = "auto"  # auto (bf16 on CPU, fp16 on CUDA) | bf16 | fp16 | fp32
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # torch deterministic algorithms (slower)
    log_every: int = 20  # steps between log / TensorBoard lines
    channels_last: bool = True  # CNN backbones: channels_last memory format

    def __post_init__(self) -> None:
        _check_positive("train", "epochs", self.epochs)
        _check_positive("train", "batch_size", self.batch_size)
        _check_positive("train", "micro_batch_size", self.micro_batch_size)
        _check_positive("train", "lr", self.lr)
        _check_positive("train", "momentum", self.momentum, allow_zero=True)
        _check_positive("train", "weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("train", "log_every", self.log_every)
        _check_choice("train", "scheduler", self.scheduler, ("cosine", "constant"))
        _check_choice("train", "precision", self.precision, PRECISIONS)
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train.batch_size={self.batch_size} is not divisible by train.micro_batch_size="
                f"{self.micro_batch_size}; pick a micro-batch that divides the batch "
                f"(e.g. {_largest_divisor(self.batch_size, self.micro_batch_size)})."
            )


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if n % d == 0)


@dataclass
class EvalConfig:
    """Evaluation and test-time ensembling."""

    tte: str = "fivecrop"  # none | fivecrop
    expand: int = 24  # fivecrop: resize to resolution + expand before cropping
    batch_size: int = 128

    def __post_init__(self) -> None:
        _check_choice("eval", "tte", self.tte, TTE_MODES)
        _check_positive("eval", "expand", self.expand, allow_zero=True)
        _check_positive("eval", "batch_size", self.batch_size)


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
    output_dir: str = "runs"  # parent folder of run folders
    name: Optional[str] = None  # run folder name; default: <data>_<model>_<peft>_<time>
    overwrite: bool = False  # allow reusing a run folder that holds another run
    quiet: bool = False  # no progress bars


def _preset_path(kind: str, name: str) -> Path:
    """Path of a packaged preset (`recipes/NAME.yaml` or `data/NAME.yaml`), or NAME itself if a file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    root = resources.files("tailtune") / "configs" / kind
    candidate = Path(str(root)) / f"{name}.yaml"
    if not candidate.exists():
        import difflib

        known = list_presets(kind)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown {kind[:-1] if kind.endswith('s') else kind} preset {name!r}.{hint} "
                          f"Known: {', '.join(known)} (or give a path to a .yaml file).")
    return candidate


def list_presets(kind: str) -> list[str]:
    """Names of the packaged presets of a kind ('recipes' or 'data')."""
    root = Path(str(resources.files("tailtune") / "configs" / kind))
    return sorted(p.stem for p in root.glob("*.yaml"))


def preset_comment(kind: str, name: str) -> str:
    """The first comment line of a preset file (its one-line description)."""
    for line in _preset_path(kind, name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def load_config(
    recipe: str | None = None,
    data: str | None = None,
    files: list[str] | tuple[str, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Compose and validate a config.

    Args:
        recipe: packaged recipe name (``tailtune list recipes``) or a YAML path.
        data: packaged data preset name (e.g. ``cifar100_ir100``) or a YAML path.
        files: further YAML files, merged in order.
        overrides: ``key=value`` strings (OmegaConf dotlist syntax), e.g. ``train.epochs=5``.
    """
    layers: list[tuple[str, Any]] = []
    if recipe:
        layers.append((f"recipe {recipe}", _load_yaml(_preset_path("recipes", recipe))))
    if data:
        layers.append((f"data preset {data}", {"data": _load_yaml(_preset_path("data", data))}))
    for f in files:
        path = Path(f)
        if not path.exists():
            raise ConfigError(f"config file {f} does not exist.")
        layers.append((f"config file {f}", _load_yaml(path)))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. train.epochs=5).")
    if overrides:
        layers.append(("command-line overrides", _dotlist(list(overrides))))
    return merge_layers(layers)


def _dotlist(overrides: list[str]) -> Any:
    try:
        return OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {overrides}: {e}") from None


def _load_yaml(path: Path) -> Any:
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and OSError carry the position of the problem
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    return loaded if loaded is not None else {}


def merge_layers(layers: list[tuple[str, Any]]) -> Config:
    """Merge config layers onto the schema, naming the layer at fault on error."""
    cfg = OmegaConf.structured(Config)
    for where, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise ConfigError(_explain(e, where)) from None
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e, "config")) from None


def _explain(e: OmegaConfBaseException, where: str) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        section, _, leaf = key.rpartition(".")
        node = _section_fields(section)
        import difflib

        close = difflib.get_close_matches(leaf, node, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join((section + '.' if section else '') + c for c in close)}?" if close else ""
        return f"unknown config key {key!r} in {where}.{hint} Valid keys{' of ' + section if section else ''}: {', '.join(node)}."
    return f"bad value for {key or 'config'} in {where}: {msg}"


def _section_fields(section: str) -> list[str]:
    from dataclasses import fields

    cls: Any = Config
    for part in [p for p in section.split(".") if p]:
        match = [f for f in fields(cls) if f.name == part]
        if not match:
            return []
        cls = match[0].default_factory  # type: ignore[assignment]
    return [f.name for f in fields(cls)]


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved in every run folder)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def from_yaml_text(text: str, where: str = "saved config") -> Config:
    """Rebuild a config from YAML text written by :func:`to_yaml`."""
    try:
        layer = OmegaConf.create(text)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse {where}: {e}") from None
    return merge_layers([(where, layer)])
