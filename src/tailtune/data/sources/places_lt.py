"""The ``places_lt`` source: Places365-Standard images + the Places-LT split lists.

Class names come from the folders the training list names, so each label's name is its
images' class; hyphens and underscores read as spaces ("apartment_building-outdoor" ->
"apartment building outdoor").

The reference (LIFT) takes its prompts from its own ``datasets/Places_LT/classnames.txt``
(reference: datasets/places_lt.py:26 read_classnames, the second column of each line;
trainer.py:306 replaces only underscores). That file keeps the hyphens ("apartment
building-outdoor", which CLIP's tokeniser reads as "apartment building - outdoor") and
orders five names differently from its own split lists: labels 116-118 are desert_road,
desert-sand, desert-vegetation in Places_LT_{train,val,test}.txt but desert-sand,
desert-vegetation, desert_road in classnames.txt (lines 117-119), labels 141-142 are
field_road, field-wild but field-wild, field_road (lines 142-143). 77 of the 365 prompts
differ. To reproduce the reference's prompts exactly, give its names as a file:
``cut -d' ' -f2- LIFT/datasets/Places_LT/classnames.txt > names.txt`` and
``data.classnames_file=names.txt`` (the run's notes count the prompts that change).
"""

from __future__ import annotations

from collections.abc import Sequence

from tailtune.config import DataConfig
from tailtune.data.sources.base import SOURCES, reads
from tailtune.data.sources.benchmark import check_fixed_tail, list_data, read_splits, require_root
from tailtune.errors import DataError

LISTS = {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}
# Leading folders of the listed paths that are not part of the class: the easy format's
# train/ and val/, the original layout's data_256/ (data_large/) and its one-letter folders.
_NOT_CLASS = {"train", "val", "data_256", "data_large", "val_256", "val_large"}


def class_folder(path: str) -> str:
    """The class folder of a listed Places path: train/apartment_building-outdoor/x.jpg ->
    apartment_building-outdoor; data_256/a/apartment_building/outdoor/x.jpg -> apartment_building/outdoor."""
    parts = [p for p in path.split("/")[:-1] if p]
    while parts and parts[0] in _NOT_CLASS:
        parts = parts[1:]
    if len(parts) > 1 and len(parts[0]) == 1:
        parts = parts[1:]
    if not parts:
        raise DataError(f"cannot tell the class folder of the Places path {path!r}.")
    return "/".join(parts)


def folder_to_name(folder: str) -> str:
    """A readable class name: underscores, slashes and the easy format's hyphens become spaces."""
    return " ".join(folder.replace("_", " ").replace("/", " ").replace("-", " ").split())


def places_classnames(paths: Sequence[str], labels: Sequence[int]) -> list[str]:
    """Class names from the training list's folders; a label with two folders is an error."""
    folders: dict[int, str] = {}
    for p, y in zip(paths, labels):
        f = class_folder(p)
        if folders.setdefault(y, f) != f:
            raise DataError(f"Places-LT label {y} is listed under two folders, {folders[y]!r} and {f!r}.")
    num = max(folders) + 1
    missing = [y for y in range(num) if y not in folders]
    if missing:
        raise DataError(f"the Places-LT training list has no image of labels {missing[:5]}; every class "
                        "needs training images (and a name, taken from its folder).")
    return [folder_to_name(folders[y]) for y in range(num)]


@SOURCES.register("places_lt")
@reads("root", "splits_dir", "path_map", "group_imb_ratio")  # group_imb_ratio: to refuse it
def places_lt(cfg: DataConfig):
    """Places-LT: 62,500 training images over 365 classes (4980 to 5), val 20 / class, test 100 / class.

    ``data.root`` holds Places365-Standard as the lists name it (train/<class>/,
    val/<class>/); for the original layout (data_256/a/airfield/, val_256/) set
    ``data.path_map=[places365_original]``, for another prefix ``data.path_map=[OLD=NEW]``.
    """
    check_fixed_tail(cfg)
    root = require_root(cfg, "the Places365-Standard images (train/<class>/*.jpg, val/<class>/*.jpg)")
    splits, notes = read_splits(cfg, LISTS)
    return list_data(cfg, root, splits, places_classnames(*splits["train"]), notes)
