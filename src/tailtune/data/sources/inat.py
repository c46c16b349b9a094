"""The ``inat2018`` source: iNaturalist 2018, at the species level or a coarser taxonomy level."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from tailtune.config import DataConfig, _check_choice, options_of, setting
from tailtune.data.sources.base import SOURCES, reads
from tailtune.data.sources.benchmark import Listed, check_fixed_tail, list_data, require_root
from tailtune.data.splits import find_list, open_text, read_list, require_list, splits_dir
from tailtune.errors import DataError

ANNOTATIONS = {"train": "train2018.json", "test": "val2018.json"}
LISTS = {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"}
CATEGORIES = "categories.json"
LEVELS = ("species", "genus", "family", "order", "class", "phylum", "kingdom", "supercategory")
LEVEL_KEYS = {"species": "name"}  # data.inat2018.taxonomy -> the categories' key (the others are named alike)


@dataclass
class InatOptions:
    """inat2018: the label level."""

    MOVED: ClassVar[dict[str, str]] = {"taxonomy": "taxonomy"}

    taxonomy: str = setting("species", "inat2018 label level: species | genus | family | order | class | phylum | "
                            "kingdom | supercategory", choices=LEVELS)

    def __post_init__(self) -> None:
        _check_choice("data.inat2018", "taxonomy", self.taxonomy, LEVELS)


def _load_json(path: Path):
    try:
        with open_text(path) as f:
            return json.load(f)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def read_annotations(path: Path) -> tuple[Listed, list[dict]]:
    """(file names, category ids) of an official iNaturalist annotation file, and its categories."""
    data = _load_json(path)
    try:
        files = {im["id"]: im["file_name"] for im in data["images"]}
        pairs = [(files[a["image_id"]], int(a["category_id"])) for a in data["annotations"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not an iNaturalist annotation file (images / annotations: {e!r}).") from None
    return ([p for p, _ in pairs], [c for _, c in pairs]), data.get("categories") or []


def check_categories(categories: list[dict], where: str) -> list[dict]:
    """Categories sorted by id; the ids must be 0..N-1 (they are the species labels)."""
    try:
        cats = sorted(categories, key=lambda c: int(c["id"]))
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: every category needs an integer 'id'.") from None
    if [int(c["id"]) for c in cats] != list(range(len(cats))):
        raise DataError(f"{where}: category ids must be 0..{len(cats) - 1} without gaps.")
    return cats


def taxonomy_labels(categories: Sequence[dict], level: str, where: str) -> tuple[list[str], list[int]]:
    """(class names, label of each category id) at a taxonomy level.

    Species keep the official category ids as labels (the split lists' labels); a coarser
    level's labels are the positions of its names in sorted order.
    """
    key = LEVEL_KEYS.get(level, level)
    missing = [c.get("id") for c in categories if key not in c]
    if missing:
        raise DataError(f"{where}: categories lack the {key!r} field (e.g. id {missing[0]}); the taxonomy levels are "
                        f"in {CATEGORIES} (`tailtune data fetch-splits inat2018`).")
    values = [str(c[key]) for c in categories]
    if level == "species":
        return values, list(range(len(values)))
    names = sorted(set(values))
    index = {n: i for i, n in enumerate(names)}
    return names, [index[v] for v in values]


def _read(cfg: DataConfig) -> tuple[dict[str, Listed], list[dict], str]:
    """The train and test files with category ids, the categories, and where they came from."""
    folder = splits_dir(cfg)
    found = {s: find_list(folder, n) for s, n in ANNOTATIONS.items()}
    cat_file = find_list(folder, CATEGORIES)
    if all(found.values()):
        splits, cats = {}, []
        for split, path in found.items():
            splits[split], cats = read_annotations(path)
        if cat_file is not None:
            cats = _load_json(cat_file)
        return splits, cats, str(cat_file or found["test"])
    splits = {s: read_list(require_list(cfg, n, "inat2018")) for s, n in LISTS.items()}
    if cat_file is None:
        raise DataError(f"{CATEGORIES} not found in {folder}: the iNaturalist18 lists carry category ids only, the "
                        "names come from it. Get it with `tailtune data fetch-splits inat2018`, or use the official "
                        f"{ANNOTATIONS['train']} and {ANNOTATIONS['test']}.")
    return splits, _load_json(cat_file), str(cat_file)


@SOURCES.register("inat2018", options=InatOptions)
@reads("root", "splits_dir", "path_map", "group_imb_ratio")  # group_imb_ratio: to refuse it
def inat2018(cfg: DataConfig):
    """iNaturalist 2018: 437,513 training images over 8142 species (test: the official 24,426 val images).

    Reads train2018.json / val2018.json, or iNaturalist18_{train,val}.txt with
    categories.json, from ``data.splits_dir`` (default: the root). ``data.inat2018.taxonomy`` picks
    the label level: species (8142 classes) or genus, family, order, class, phylum,
    kingdom, supercategory (labels: that level's names, sorted).
    """
    check_fixed_tail(cfg)
    taxonomy = options_of(cfg, "inat2018", InatOptions).taxonomy
    root = require_root(cfg, "the iNaturalist 2018 images (train_val2018/<supercategory>/<id>/*.jpg)")
    splits, categories, where = _read(cfg)
    if not isinstance(categories, list) or not categories:
        raise DataError(f"{where} holds no categories.")
    categories = check_categories(categories, where)
    names, label_of = taxonomy_labels(categories, taxonomy, where)
    relabelled = {}
    for split, (paths, ids) in splits.items():
        bad = [c for c in ids if not 0 <= c < len(label_of)]
        if bad:
            raise DataError(f"the iNaturalist {split} split has category id {bad[0]}, unknown to {where} "
                            f"({len(label_of)} categories).")
        relabelled[split] = (paths, [label_of[c] for c in ids])
    notes = ["test split: the official iNaturalist 2018 val set (the literature's convention); no val split of "
             "its own (data.val=holdout carves one out of the training images)."]
    if taxonomy != "species":
        notes.append(f"labels: the {len(names)} {taxonomy} names of the species, sorted.")
    return list_data(cfg, root, relabelled, names, notes)
