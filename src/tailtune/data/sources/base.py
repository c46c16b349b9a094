"""Registry of dataset sources, the long-tailed dataset (:class:`LTData`) and :func:`build_data`.

Each source (one module in this package) turns a :class:`DataConfig` into :class:`LTData`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields, replace

import numpy as np

from tailtune.config import DataConfig, list_presets
from tailtune.data.holdout import HOLDOUT_KEYS, with_val
from tailtune.data.longtail import (
    GROUPS,
    class_counts,
    exp_profile,
    shot_groups,
)
from tailtune.data.roots import reader_of, root_folder
from tailtune.data.splits import read_classnames
from tailtune.data.validate import check_image_files
from tailtune.errors import ConfigError, DataError
from tailtune.registry import Choice, Registry

SOURCES: Registry = Registry("dataset", section="data", chosen_by=Choice(
    "data.name", hint=lambda name: f" (its data preset: -d {name})" if name in list_presets("data") else ""))  # options: data.<name>.*
# Sources that read data.classnames_file themselves (their labels may come from it); for every
# other source the file replaces the source's class names after it is built (build_data).
NAMES_FROM_FILE = ("folder", "csv")
# Core data keys that only some sources read: each source names the ones it reads (@reads). Set
# to anything but its default for a source that does not read it, a key would do nothing: an
# error naming the sources that read it (and data.<name>.* options likewise:
# check_source_options). The hold-out keys depend on the data: see holdout_unused.
SOURCE_KEYS = ("root", "download", "splits_dir", "path_map", "group_imb_ratio")
WHAT = {"root": "a folder of files", "download": "it downloads missing files",
        "splits_dir": "it is the folder of the split lists", "path_map": "it rewrites the split lists' paths",
        "group_imb_ratio": "it sets the many/medium/few groups by another imbalance ratio"}


def reads(*keys: str):
    """Decorator: the :data:`SOURCE_KEYS` a source reads (a source without it may read any)."""
    unknown = set(keys) - set(SOURCE_KEYS)
    if unknown:
        raise ValueError(f"not a source-specific data key: {sorted(unknown)}")

    def deco(fn):
        fn.reads = frozenset(keys)
        return fn

    return deco


def readers(key: str) -> list[str]:
    """The registered sources that read ``key``."""
    return [n for n in SOURCES.in_order() if key in getattr(SOURCES.get(n), "reads", SOURCE_KEYS)]


def check_settings(cfg: DataConfig) -> None:
    """ConfigError for a core data key set for a source that does not read it (the run would ignore it)."""
    read = getattr(SOURCES.get(cfg.name), "reads", None)
    if read is None:
        return
    defaults = {f.name: getattr(DataConfig(), f.name) for f in fields(DataConfig)}
    for key in SOURCE_KEYS:
        value = getattr(cfg, key)
        if key in read or value == defaults[key]:
            continue
        if key == "root":
            folder = root_folder(cfg.root, "files")
            raise ConfigError(f"data.root={cfg.root} is not read by data.name={cfg.name}, which needs no files: "
                              f"{reader_of(folder)}")
        users = ", ".join(readers(key)) or "no source"
        raise ConfigError(f"data.{key}={value!r} is not read by data.name={cfg.name}, so the run would ignore it; "
                          f"only {users} read it ({WHAT[key]}). Drop it, or choose one of those sources (its data "
                          "preset: -d NAME, `tailtune list datasets`).")


def check_source_options(cfg: DataConfig) -> None:
    """ConfigError for options of another source (``data.<name>.*`` of a source not chosen) set to
    anything but their defaults: the run would ignore them.

    Checked when the data are built, not when a config is read: a saved config.yaml of an older run
    still loads.
    """
    for name in SOURCES.in_order():
        cls = SOURCES.options(name)
        key = getattr(cls, "KEY", name) if cls is not None else None
        if name == cfg.name or cls is None or getattr(cfg, key, None) is None:
            continue
        if SOURCES.options(cfg.name) is cls:  # shared by the chosen source
            continue
        options, default = getattr(cfg, key), cls()
        changed = [f"data.{key}.{f.name}={getattr(options, f.name)!r}" for f in fields(cls)
                   if getattr(options, f.name) != getattr(default, f.name)]
        if changed:
            one = len(changed) == 1
            preset = f" (its data preset: -d {name})" if name in list_presets("data") else ""
            raise ConfigError(f"{', '.join(changed)} {'applies' if one else 'apply'} to data.name={name} only, not to "
                              f"data.name={cfg.name}: the run would ignore {'it' if one else 'them'}. Drop "
                              f"{'it' if one else 'them'}, or use data.name={name}{preset}.")


def holdout_unused(data: LTData, cfg: DataConfig) -> str | None:
    """A note when data.holdout_per_class / data.holdout_policy are set but nothing was held out."""
    defaults = DataConfig()
    set_ = [f"data.{k}={getattr(cfg, k)}" for k in HOLDOUT_KEYS if getattr(cfg, k) != getattr(defaults, k)]
    if not set_ or data.record:
        return None
    why = ("the dataset has its own test and val splits" if data.val_source == "val split" else
           "the dataset has its own test split and data.val is not holdout")
    return (f"{' and '.join(set_)} not used: nothing was held out ({why}); they apply to a missing test or val "
            "split (own data) and to data.val=holdout.")


@dataclass
class LTData:
    """A long-tailed dataset ready for training and evaluation."""

    train: object  # Dataset of (PIL image or (3, H, W) uint8 tensor, label) with .targets
    test: object
    classnames: list[str]
    groups: np.ndarray  # group index per class (into group_names)
    group_names: tuple[str, ...] = GROUPS
    notes: list[str] = field(default_factory=list)  # shown to the user and saved in metrics.json
    val: object | None = None  # validation split (model selection), never the test set
    val_source: str | None = None  # "val split" (the dataset's own) or "held-out slice of train"
    record: dict = field(default_factory=dict)  # how held-out splits were made (saved as splits.json)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def train_counts(self) -> np.ndarray:
        return class_counts(self.train.targets, self.num_classes)

    def splits(self) -> dict:
        """The splits that exist, by name: train, val (if any), test."""
        out = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in out.items() if v is not None}

    def check(self) -> None:
        """Start-up checks: labels in range, every class has training images, names match."""
        if not self.classnames:
            raise DataError("the dataset has no class names.")
        for split, ds in self.splits().items():
            t = np.asarray(ds.targets)
            if len(t) == 0:
                raise DataError(f"the {split} split is empty.")
            if t.min() < 0 or t.max() >= self.num_classes:
                bad = int(t.max() if t.max() >= self.num_classes else t.min())
                raise DataError(f"{split} label {bad} is out of range for {self.num_classes} classes "
                                f"({self.num_classes} class names: labels must be 0..{self.num_classes - 1}); "
                                "check the labels or the class-name list.")
        empty = np.where(self.train_counts == 0)[0]
        if len(empty):
            names = ", ".join(self.classnames[i] for i in empty[:5])
            raise DataError(f"{len(empty)} classes have no training image (e.g. {names}); "
                            "remove them or add images.")
        if len(self.groups) != self.num_classes:
            raise DataError(f"{len(self.groups)} group entries for {self.num_classes} classes.")


def build_data(cfg: DataConfig, check_files: bool = True) -> LTData:
    """Build the dataset named by ``cfg.name``, settle its validation split and check it.

    The checks run before any model is touched: labels in range, no empty class, class
    names matching, and (``check_files``) every listed image present and, with
    ``data.verify_images``, decodable (``data.skip_corrupt`` drops the ones that are not).
    """
    check_settings(cfg)
    check_source_options(cfg)
    data = SOURCES.get(cfg.name)(cfg)
    if cfg.classnames_file and cfg.name not in NAMES_FROM_FILE:
        data = renamed(data, cfg)
    data = with_val(data, cfg)
    unused = holdout_unused(data, cfg)
    if unused:
        data = replace(data, notes=[*data.notes, unused])
    data.check()
    if check_files:
        data = check_image_files(data, cfg.verify_images, cfg.skip_corrupt)
        data.check()  # again: dropping corrupt images can empty a class
    return data


def renamed(data: LTData, cfg: DataConfig) -> LTData:
    """``data`` with the class names of ``data.classnames_file`` (one per line, in label order).

    Only the names change (what the text prompts say); images, labels and groups stay the
    source's. The run's notes say how many names differ from the source's own.
    """

    names = read_classnames(cfg.classnames_file, data.num_classes, f"classes of {cfg.name}")

    def spoken(name: str) -> str:  # as the prompts read a name (models.prompts.clean_classname)
        return name.replace("_", " ").strip()

    changed = [i for i, (a, b) in enumerate(zip(data.classnames, names)) if spoken(a) != spoken(b)]
    note = (f"class names from {cfg.classnames_file} (data.classnames_file): {len(changed)} of {len(names)} "
            f"prompts differ from {cfg.name}'s own names")
    if changed:
        note += f" (e.g. class {changed[0]}: {names[changed[0]]!r}, not {data.classnames[changed[0]]!r})"
    return replace(data, classnames=names, notes=[*data.notes, note + "."])


def groups_for(counts, cfg: DataConfig, n_max: int, notes: list[str]) -> np.ndarray:
    if cfg.group_imb_ratio is not None and cfg.group_imb_ratio != cfg.imb_ratio:
        ref = exp_profile(n_max, len(counts), cfg.group_imb_ratio)
        notes.append(f"many/medium/few groups use the class counts of imbalance ratio "
                     f"{cfg.group_imb_ratio:g} (the benchmark's convention), not {cfg.imb_ratio:g}.")
        return shot_groups(ref)
    return shot_groups(counts)


def head_count(targets, num_classes: int, standard: int, name: str) -> int:
    """Images per class of a balanced source (the head of the profile); says so if not standard."""
    per_class = class_counts(targets, num_classes)
    if per_class.min() != per_class.max() or per_class.min() == 0:
        raise DataError(f"the {name} training files are not balanced ({per_class.min()} to {per_class.max()} "
                        "images per class); the long-tail protocol starts from the full training set.")
    if per_class[0] != standard:
        warnings.warn(f"{name} training files hold {per_class[0]} images per class, not the standard "
                      f"{standard}: the long-tailed profile starts from {per_class[0]}.", stacklevel=3)
    return int(per_class[0])


__all__ = ["SOURCES", "LTData", "build_data", "check_source_options", "groups_for", "head_count", "reads"]
