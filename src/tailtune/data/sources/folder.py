"""The ``folder`` source: one sub-folder of images per class."""

from __future__ import annotations

from pathlib import Path

from tailtune.config import DataConfig
from tailtune.data.sources.base import SOURCES
from tailtune.data.sources.own import own_data
from tailtune.data.splits import read_classnames
from tailtune.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
SPLIT_FOLDERS = ("train", "val", "test")


def scan_folder(folder: Path, classnames: list[str] | None = None):
    """(paths, labels, class folder names) of a one-folder-per-class tree (sorted, so stable)."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist.")
    class_dirs = sorted(d.name for d in folder.iterdir() if d.is_dir())
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
        files = sorted(str(p) for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    return paths, labels, class_dirs


@SOURCES.register("folder")
def image_folder(cfg: DataConfig):
    """Your own images: root/<class>/*.jpg, or root/{train,val,test}/<class>/*.jpg; missing splits held out.

    Class names are the folder names (underscores to spaces) or, with
    ``data.classnames_file``, its lines in sorted folder order. With ``data.imb_ratio`` > 1
    the training set is subsampled to an exponential profile (head = the first class).
    """
    if not cfg.root:
        raise DataError("data.root must point to your image folder: one sub-folder per class, or train/ "
                        "(and optionally val/ and test/) sub-folders holding one folder per class.")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist (data.root).")
    split_layout = (root / "train").is_dir()
    tr_paths, tr_labels, folders = scan_folder(root / "train" if split_layout else root)
    splits = {}
    for split in ("val", "test"):
        if split_layout and (root / split).is_dir():
            p, y, _ = scan_folder(root / split, folders)
            splits[split] = (p, y)
    if cfg.classnames_file:
        names = read_classnames(cfg.classnames_file, len(folders), f"class folders in {root}")
    else:
        names = [f.replace("_", " ") for f in folders]
    return own_data(cfg, (tr_paths, tr_labels), splits.get("val"), splits.get("test"), names, str(root))
