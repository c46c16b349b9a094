"""What the list-based benchmarks (imagenet_lt, places_lt, inat2018) share.

Their long tail is fixed by the published lists: the files are read as listed, the
many/medium/few groups come from the training list's class counts (> 100, 20..100, < 20),
and subsampling options do not apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tailtune.config import DataConfig
from tailtune.data.base import FileDataset
from tailtune.data.holdout import VAL_SPLIT
from tailtune.data.longtail import GROUPS, class_counts, shot_groups
from tailtune.data.roots import root_folder
from tailtune.data.sources.base import LTData
from tailtune.data.splits import (
    find_list,
    path_mapper,
    read_list,
    require_list,
    resolve_paths,
    splits_dir,
)
from tailtune.errors import ConfigError, DataError

Listed = tuple[list[str], list[int]]  # paths as listed (relative), labels


def require_root(cfg: DataConfig, what: str) -> Path:
    """``data.root``, which a benchmark needs; says what it should hold."""
    if not cfg.root:
        raise DataError(f"data.root must point to {what} (use the data preset, e.g. -d {cfg.name}, "
                        "and set data.root=DIR).")
    return root_folder(cfg.root, what)


def check_fixed_tail(cfg: DataConfig) -> None:
    """The lists fix the long tail: an imbalance ratio other than 1 would do nothing, so refuse it."""
    if cfg.imb_ratio != 1 or cfg.group_imb_ratio is not None:
        raise ConfigError(f"{cfg.name} is long-tailed by its split lists; data.imb_ratio={cfg.imb_ratio:g}"
                          f"{'' if cfg.group_imb_ratio is None else ' / data.group_imb_ratio'} would not apply. "
                          f"Use the preset (-d {cfg.name}) or set data.imb_ratio=1.")


def read_splits(cfg: DataConfig, lists: dict[str, str]) -> tuple[dict[str, Listed], list[str]]:
    """The train and test lists (required) and the val list (optional: a note when absent)."""
    splits = {s: read_list(require_list(cfg, lists[s], cfg.name)) for s in ("train", "test")}
    notes = []
    if "val" in lists:
        found = find_list(splits_dir(cfg), lists["val"])
        if found is not None:
            splits["val"] = read_list(found)
        else:
            notes.append(f"{lists['val']} not found in {splits_dir(cfg)}: no val split (get it with "
                         f"`tailtune data fetch-splits {cfg.name}`).")
    return splits, notes


def list_data(cfg: DataConfig, root: Path, splits: dict[str, Listed], classnames: Sequence[str],
              notes: Sequence[str] = ()):
    """An ``LTData`` of listed files: paths rewritten by ``data.path_map`` and joined to the root."""
    mapper = path_mapper(cfg.path_map)
    sets = {}
    for split, (paths, labels) in splits.items():
        bad = [y for y in labels if not 0 <= y < len(classnames)]
        if bad:
            raise DataError(f"the {cfg.name} {split} list has label {bad[0]}, out of range for "
                            f"{len(classnames)} class names (labels must be 0..{len(classnames) - 1}).")
        files = resolve_paths(root, [mapper(p) for p in paths], f"the {cfg.name} {split} list")
        sets[split] = FileDataset(files, labels)
    groups = shot_groups(class_counts(sets["train"].targets, len(classnames)))
    val = sets.get("val")
    return LTData(sets["train"], sets["test"], list(classnames), groups, GROUPS, list(notes),
                  val=val, val_source=VAL_SPLIT if val is not None else None)
