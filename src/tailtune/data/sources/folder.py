"""The ``folder`` source: one sub-folder of images per class."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tailtune.config import DataConfig, _check_choice, options_of, setting
from tailtune.data.base import IMAGE_SUFFIXES
from tailtune.data.roots import link_problem, root_folder
from tailtune.data.sources.base import SOURCES, reads
from tailtune.data.sources.own import own_data
from tailtune.data.splits import read_classnames
from tailtune.errors import DataError

SPLIT_FOLDERS = ("train", "val", "test")
LAYOUTS = ("auto", "classes", "splits")
# Folder names that read as a split: a class folder so named makes the layout ambiguous.
SPLIT_LIKE = ("train", "training", "val", "valid", "validation", "test", "testing")
SHOWN = 5  # file and folder names quoted in a note or an error


@dataclass
class FolderOptions:
    """folder: how the image folder is laid out."""

    layout: str = setting("auto", "folder layout: auto (train/ present: splits, else classes; a folder that could be "
                          "either is an error) | classes (root/<class>/..., even a class named train) | splits "
                          "(root/train/<class>/... and optionally val/, test/)", choices=LAYOUTS)

    def __post_init__(self) -> None:
        _check_choice("data.folder", "layout", self.layout, LAYOUTS)


def _visible(entries) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def scan_folder(folder: Path, classnames: list[str] | None = None, ignored: list[Path] | None = None):
    """(paths, labels, class folder names) of a one-folder-per-class tree (sorted, so stable).

    ``ignored`` collects the files that are not read: files beside the class folders and files
    without an image extension (:data:`IMAGE_SUFFIXES`); hidden files are left out.
    """
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist.")
    entries = _visible(folder.iterdir())
    class_dirs = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if ignored is not None:
        ignored += [p for p in entries if p.is_file()]
    if classnames is not None:
        missing = [c for c in classnames if c not in class_dirs]
        extra = [c for c in class_dirs if c not in classnames]
        if missing or extra:
            raise DataError(f"the class folders of {folder} differ from the training classes: "
                            f"missing {missing[:5]}, unknown {extra[:5]}.")
        class_dirs = classnames
    if not class_dirs:
        raise DataError(f"{folder} has no class sub-folders (expected one folder per class).")
    paths, labels = [], []
    for label, name in enumerate(class_dirs):
        files, other = [], []
        for p in (folder / name).rglob("*"):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(p))
            elif not p.name.startswith(".") and p.is_file():
                other.append(p)
        files.sort()
        dangling = [(f, why) for f in files if (why := link_problem(f))]
        if dangling:
            eg = "; ".join(f"{why}" for _, why in dangling[:SHOWN])
            more = f" and {len(dangling) - SHOWN} more" if len(dangling) > SHOWN else ""
            raise DataError(f"{len(dangling)} image name{'s' * (len(dangling) != 1)} in {folder / name} "
                            f"{'are symbolic links' if len(dangling) != 1 else 'is a symbolic link'} leading to no "
                            f"file: {eg}{more}. Fix or remove the links.")
        paths += files
        labels += [label] * len(files)
        if ignored is not None:
            ignored += sorted(other)
    return paths, labels, class_dirs


def _listing(names, what: str = "") -> str:
    shown = ", ".join(f"{n}{what}" for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def split_layout(root: Path, layout: str) -> bool:
    """Whether ``root`` is read as train/ (val/, test/) folders; an ambiguous tree is an error saying why."""
    if layout != "auto":
        if layout == "splits" and not (root / "train").is_dir():
            raise DataError(f"data.folder.layout=splits but {root} has no train/ folder; put the training images "
                            "in train/<class>/ (and optionally val/<class>/, test/<class>/), or set "
                            "data.folder.layout=classes for one folder per class.")
        return layout == "splits"
    dirs = [d.name for d in _visible(root.iterdir()) if d.is_dir()]
    if "train" not in dirs:
        split_named = [d for d in dirs if d.lower() in SPLIT_LIKE]
        if split_named:
            raise DataError(f"{root} has no train/ folder but class folders named like splits "
                            f"({_listing(split_named, '/')}): read as one folder per class, they would be classes. "
                            "For the train/val/test layout put the training images in train/<class>/ (then val/, "
                            "test/ likewise); if they really are classes, set data.folder.layout=classes.")
        return False
    others = [d for d in dirs if d not in SPLIT_FOLDERS]
    if others:
        raise DataError(f"{root} holds train/ beside other folders ({_listing(others, '/')}): train/ could be the "
                        "training split (the other folders would then be ignored) or a class named 'train'. If it "
                        "is a class, set data.folder.layout=classes; if it is the training split, move the other "
                        "folders out of (or into) it, or set data.folder.layout=splits to ignore them.")
    direct = [p.name for p in _visible((root / "train").iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if direct:
        raise DataError(f"{root / 'train'} holds images itself ({len(direct)}, e.g. {_listing(direct)}), not one "
                        "folder per class: if 'train' is a class, set data.folder.layout=classes; if it is the "
                        "training split, sort its images into one sub-folder per class.")
    return True


def ignored_note(root: Path, ignored: list[Path], split: bool) -> str | None:
    """The start-up note naming the files under ``root`` that are not read (count + the first few)."""
    if not ignored:
        return None
    outside = [p for p in ignored if p.suffix.lower() in IMAGE_SUFFIXES]
    other = Counter(p.suffix.lower() or "(no extension)" for p in ignored if p.suffix.lower() not in IMAGE_SUFFIXES)
    kinds = []
    if outside:
        kinds.append(f"{len(outside)} image{'s' * (len(outside) != 1)} outside the class folders")
    if other:
        kinds.append(f"{sum(other.values())} with an extension not read as an image ("
                     + ", ".join(f"{ext} {n}" for ext, n in other.most_common()) + ")")
    where = "root/<split>/<class>/" if split else "root/<class>/"
    rel = [str(p.relative_to(root)) for p in ignored]
    return (f"{len(ignored)} file{'s' * (len(ignored) != 1)} under {root} not read: {'; '.join(kinds)}; e.g. "
            f"{_listing(rel)}. Images are read from {where} with the extensions {' '.join(IMAGE_SUFFIXES)}.")


@SOURCES.register("folder", options=FolderOptions)
@reads("root")
def image_folder(cfg: DataConfig):
    """Your own images: root/<class>/*.jpg, or root/{train,val,test}/<class>/*.jpg; missing splits held out.

    Class names are the folder names (underscores to spaces) or, with
    ``data.classnames_file``, its lines in sorted folder order. With ``data.imb_ratio`` > 1
    the training set is subsampled to an exponential profile (head = the first class).
    ``data.folder.layout`` settles a tree that could be read either way (a class named train).
    Files that are not read (beside the class folders, other extensions) are named in the notes.
    """
    if not cfg.root:
        raise DataError("data.root must point to your image folder: one sub-folder per class, or train/ "
                        "(and optionally val/ and test/) sub-folders holding one folder per class.")
    root = root_folder(cfg.root, "your images: one sub-folder per class, or train/ (val/, test/) holding one "
                                 "folder per class")
    opts = options_of(cfg, "folder", FolderOptions)
    split = split_layout(root, opts.layout)
    ignored: list[Path] = []
    if split:
        ignored += [p for p in _visible(root.iterdir()) if p.is_file()]
    tr_paths, tr_labels, folders = scan_folder(root / "train" if split else root, ignored=ignored)
    splits = {}
    for name in ("val", "test"):
        if split and (root / name).is_dir():
            p, y, _ = scan_folder(root / name, folders, ignored)
            splits[name] = (p, y)
    if cfg.classnames_file:
        names = read_classnames(cfg.classnames_file, len(folders), f"class folders in {root}")
    else:
        names = [f.replace("_", " ") for f in folders]
    data = own_data(cfg, (tr_paths, tr_labels), splits.get("val"), splits.get("test"), names, str(root))
    note = ignored_note(root, ignored, split)
    if note:
        data.notes.insert(0, note)
    if split and opts.layout == "splits":
        skipped = [d.name for d in _visible(root.iterdir()) if d.is_dir() and d.name not in SPLIT_FOLDERS]
        if skipped:
            data.notes.insert(0, f"data.folder.layout=splits: folders beside train/ not read: {_listing(skipped, '/')}.")
    return data
