"""The ``csv`` source: a file of ``path,label[,split]`` rows."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from tailtune.config import DataConfig, options_of, setting
from tailtune.data.sources.base import SOURCES
from tailtune.data.sources.own import own_data
from tailtune.data.splits import read_classnames, resolve_paths
from tailtune.errors import DataError

SPLITS = ("train", "val", "test")
HEADERS = (["path", "label"], ["path", "label", "split"])


@dataclass
class CsvOptions:
    """csv: the file listing your images."""

    # The flat keys data.csv (the file) and data.allow_absolute_paths of older versions; the old
    # data.csv shares its name with this section: a value that is not a mapping is the old key.
    MOVED: ClassVar[dict[str, str]] = {"csv": "file", "allow_absolute_paths": "allow_absolute_paths"}

    file: Optional[str] = setting(None, "csv source: file of path,label[,split] rows (relative: under data.root if there)")  # noqa: UP045  (OmegaConf reads it)
    allow_absolute_paths: bool = setting(False, "csv: accept absolute image paths (otherwise they must stay under data.root)")


def _csv_path(cfg: DataConfig, opts: CsvOptions) -> Path:
    if not opts.file:
        raise DataError("data.csv.file must name the CSV file (rows path,label[,split]) for data.name=csv.")
    given = Path(opts.file).expanduser()
    tried = [given]
    if not given.is_absolute() and cfg.root:
        tried.insert(0, Path(cfg.root).expanduser() / given)
    for p in tried:
        if p.is_file():
            return p
    raise DataError(f"CSV file {opts.file} not found (looked at {', '.join(map(str, tried))}).")


def read_rows(path: Path) -> list[tuple[int, str, str, str]]:
    """(line, path, label, split) of every row; an optional header row ``path,label[,split]`` is skipped."""
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.reader(f):
                line = len(rows) + 1  # rows are counted after reading so that quoted newlines stay one row
                rows.append((line, row))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV file {path}: {e}") from None
    out = []
    for line, row in rows:
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if line == 1 and [c.lower() for c in cells] in HEADERS:
            continue
        if len(cells) not in (2, 3) or not cells[0] or not cells[1]:
            raise DataError(f"{path} row {line}: expected path,label[,split], got {row!r}.")
        split = cells[2].lower() if len(cells) == 3 and cells[2] else "train"
        if split not in SPLITS:
            raise DataError(f"{path} row {line}: split {cells[2]!r} is not one of {', '.join(SPLITS)}.")
        out.append((line, cells[0], cells[1], split))
    if not out:
        raise DataError(f"CSV file {path} has no rows.")
    return out


def _labeller(path: Path, labels: list[str], names_file: str | None):
    """(class names, label -> index): names from the file if given, else the sorted unique labels."""
    numeric = all(label.isdigit() for label in labels)
    if names_file:
        names = read_classnames(names_file)
        index = {n: i for i, n in enumerate(names)}

        def lookup(label: str, line: int) -> int:
            if label in index:
                return index[label]
            if numeric and int(label) < len(names):
                return int(label)
            raise DataError(f"{path} row {line}: label {label!r} is not a class of {names_file} "
                            f"({len(names)} names; numeric labels must be 0..{len(names) - 1}).")

        return names, lookup
    if numeric:
        raise DataError(f"the labels of {path} are numbers; give the class names with "
                        "data.classnames_file=FILE (one name per line, line i = label i) so that the "
                        "text-initialised classifier knows what the classes are.")
    names = sorted(set(labels))
    index = {n: i for i, n in enumerate(names)}
    return names, lambda label, line: index[label]


@SOURCES.register("csv", options=CsvOptions)
def csv_source(cfg: DataConfig):
    """Your own images listed in a CSV: path,label[,split] (split train / val / test; missing splits held out).

    Paths are relative to ``data.root`` (default: the CSV's folder) and may not leave it
    unless ``data.csv.allow_absolute_paths``. Labels are class names (classes sorted by name),
    or names / indices of ``data.classnames_file``.
    """
    opts = options_of(cfg, "csv", CsvOptions)
    path = _csv_path(cfg, opts)
    root = Path(cfg.root).expanduser() if cfg.root else path.parent
    rows = read_rows(path)
    names, lookup = _labeller(path, [r[2] for r in rows], cfg.classnames_file)
    splits: dict[str, tuple[list[str], list[int]]] = {}
    for line, rel, label, split in rows:
        files, labels = splits.setdefault(split, ([], []))
        files.append(resolve_paths(root, [rel], f"{path} row {line}", opts.allow_absolute_paths,
                                   "data.csv.allow_absolute_paths")[0])
        labels.append(lookup(label, line))
    if "train" not in splits:
        raise DataError(f"{path} has no training rows (split column empty or 'train').")
    return own_data(cfg, splits["train"], splits.get("val"), splits.get("test"), names, str(path))
