"""``data.root``: what a folder holds, which data preset reads it, and the errors that say so.

A root that the chosen source cannot read is an error naming what it is (missing, a file, a
broken or looping link) and, from a glance at its contents, which preset reads such a folder
(``-d folder`` for class folders, ``-d csv`` for a CSV file, a benchmark's preset for its lists).
"""

from __future__ import annotations

import os
from pathlib import Path

from tailtune.data.base import IMAGE_SUFFIXES
from tailtune.errors import DataError

SHOWN = 5  # names quoted
LOOKED_AT = 20  # sub-folders looked into for images (a glance, not a scan)

# Files that mark a dataset, and the preset that reads a folder holding them.
MARKERS = (
    (("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "FashionMNIST"), "-d fashion_mnist_ir100"),
    (("cifar-100-python",), "-d cifar100_ir100"),
    (("ImageNet_LT_train.txt", "ImageNet_LT_train.txt.gz"), "-d imagenet_lt"),
    (("Places_LT_train.txt", "Places_LT_train.txt.gz"), "-d places_lt"),
    (("train2018.json", "iNaturalist18_train.txt", "iNaturalist18_train.txt.gz"), "-d inat2018"),
)


def link_problem(path: str | Path) -> str | None:
    """Why a path that is a symbolic link leads nowhere: 'a.jpg -> b.jpg -> a.jpg (a loop)' or
    'x.jpg -> gone.jpg (which does not exist)'; None when it is no link or leads to something."""
    path = Path(path)
    if not path.is_symlink() or path.exists():
        return None
    chain, seen, here = [str(path)], {os.path.abspath(path)}, path
    while here.is_symlink() and len(chain) < 40:
        target = os.readlink(here)
        here = here.parent / target if not os.path.isabs(target) else Path(target)
        chain.append(target)
        key = os.path.abspath(here)
        if key in seen:
            return " -> ".join(chain) + " (a loop of symbolic links)"
        seen.add(key)
    if len(chain) >= 40:
        return " -> ".join(chain[:SHOWN]) + " -> ... (too many levels of symbolic links)"
    return " -> ".join(chain) + " (which does not exist)"


def _has_images(folder: Path) -> bool:
    try:
        return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
    except OSError:
        return False


def reader_of(root: Path) -> str:
    """Which data preset reads the folder ``root``, from a glance at what it holds (a sentence)."""
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError as e:
        return f"it cannot be listed ({e.strerror})."
    names = {p.name for p in entries}
    for markers, preset in MARKERS:
        found = [m for m in markers if m in names]
        if found:
            return f"it holds {found[0]}: that is read by {preset} data.root={root}."
    csvs = [p.name for p in entries if p.suffix.lower() == ".csv" and p.is_file()]
    if csvs:
        return f"it holds {csvs[0]}: a CSV of path,label[,split] rows is read by -d csv data.root={root} data.csv.file={csvs[0]}."
    dirs = [p for p in entries if p.is_dir()]
    if "train" in names and (root / "train").is_dir():
        return f"it holds train/: your own images in train/<class>/ (val/, test/) are read by -d folder data.root={root}."
    with_images = [d.name for d in dirs[:LOOKED_AT] if _has_images(d)]
    if with_images:
        shown = ", ".join(f"{n}/" for n in with_images[:SHOWN])
        return (f"it holds folders of images ({shown}{', ...' if len(with_images) > SHOWN else ''}): one folder "
                f"per class is read by -d folder data.root={root}.")
    if _has_images(root):
        return ("it holds images but no class folders: -d folder reads one sub-folder per class "
                "(root/<class>/*.jpg), -d csv a CSV listing path,label.")
    return ("it holds none of the files a source reads: class folders (-d folder), a CSV (-d csv), or a benchmark's "
            "files (`tailtune list datasets`).")


def root_folder(root: str | Path, what: str) -> Path:
    """``data.root`` as a folder; missing, a file, or a broken link is an error saying which and
    what the root should be (``what`` it should hold)."""
    path = Path(root).expanduser()
    problem = link_problem(path)
    if problem:
        raise DataError(f"data.root={root} is a symbolic link that leads nowhere: {problem}; data.root should be "
                        f"the folder holding {what}.")
    if path.is_file():
        hint = (f" For a CSV file of images, use -d csv data.csv.file={root} (data.root: the folder its paths "
                "start from)." if path.suffix.lower() == ".csv" else
                " If it is an archive, extract it and point data.root to the folder." if
                path.suffix.lower() in (".gz", ".tgz", ".tar", ".zip") else "")
        raise DataError(f"data.root={root} is a file, not a folder: data.root is the folder holding {what}.{hint}")
    if not path.exists():
        raise DataError(f"data.root={root} does not exist; it should be the folder holding {what}.")
    if not path.is_dir():
        raise DataError(f"data.root={root} is not a folder (a device or pipe); it should hold {what}.")
    return path


def unread_root(root: str | Path, source: str, what: str, looked: str) -> DataError:
    """The error for a root that the source ``source`` cannot read: what it lacks, and who reads it."""
    path = Path(root).expanduser()
    return DataError(f"data.root={root} holds no {what}, which data.name={source} reads ({looked}); "
                     f"{reader_of(path)}")
