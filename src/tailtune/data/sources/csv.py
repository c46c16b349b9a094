"""The ``csv`` source: a file of ``path,label[,split]`` rows."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

from tailtune.config import DataConfig, options_of, setting
from tailtune.data.base import IMAGE_SUFFIXES
from tailtune.data.roots import root_folder
from tailtune.data.sources.base import SOURCES, reads
from tailtune.data.sources.own import own_data
from tailtune.data.splits import read_classnames, resolve_paths
from tailtune.errors import DataError

SPLITS = ("train", "val", "test")
HEADERS = (["path", "label"], ["path", "label", "split"])
# Header-like words of each column (lower case, spaces and dashes as underscores): a first row
# of them, whose path is no file, is a header (file,class / image,category,set ...).
PATH_WORDS = {"path", "paths", "file", "files", "filename", "file_name", "filepath", "file_path", "image", "images",
              "img", "image_path", "img_path", "image_file", "image_name", "img_name", "fname", "relpath",
              "relative_path", "name", "location", "url"}
LABEL_WORDS = {"label", "labels", "class", "classes", "class_name", "classname", "category", "categories", "target",
               "y", "species", "name", "tag", "annotation", "class_label", "label_name", "category_name"}
SPLIT_WORDS = {"split", "set", "subset", "fold", "partition", "phase", "stage", "usage", "split_name"}
SHOWN = 10  # rows quoted in an error
SPLIT_ORDER = {"test": 0, "val": 1, "train": 2}  # which row of a repeated file drop_duplicates keeps


@dataclass
class CsvOptions:
    """csv: the file listing your images."""

    # The flat keys data.csv (the file) and data.allow_absolute_paths of older versions; the old
    # data.csv shares its name with this section: a value that is not a mapping is the old key.
    MOVED: ClassVar[dict[str, str]] = {"csv": "file", "allow_absolute_paths": "allow_absolute_paths"}

    file: Optional[str] = setting(None, "csv source: file of path,label[,split] rows (relative: under data.root if there)")  # noqa: UP045  (OmegaConf reads it)
    allow_absolute_paths: bool = setting(False, "csv: accept absolute image paths (otherwise they must stay under data.root)")
    drop_duplicates: bool = setting(False, "csv: keep a file listed more than once (same label) once, in its test or "
                                    "val row if it has one (false: a repeated file is an error naming the rows)")


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


def _word(cell: str) -> str:
    return cell.strip().lower().replace(" ", "_").replace("-", "_")


def _is_header(cells: list[str], root: Path | None) -> bool:
    """Whether a first row is a header: a file name that is no file, beside header-like words."""
    if [c.lower() for c in cells] in HEADERS:
        return True
    if len(cells) not in (2, 3) or not cells[0]:
        return False
    if root is not None and (Path(cells[0]) if Path(cells[0]).is_absolute() else root / cells[0]).is_file():
        return False
    words = [_word(c) for c in cells]
    return (words[0] in PATH_WORDS or words[1] in LABEL_WORDS or (len(words) == 3 and words[2] in SPLIT_WORDS)
            or Path(cells[0]).suffix.lower() not in IMAGE_SUFFIXES)


def read_rows(path: Path, root: Path | None = None, notes: list[str] | None = None) -> list[tuple[int, str, str, str]]:
    """(line, path, label, split) of every row, cells stripped of surrounding spaces.

    A first row ``path,label[,split]``, or one of header-like words (``file,class``) whose path
    is no file under ``root``, is a header: skipped, and named in ``notes`` unless standard.
    A later row repeating the header is an error (files joined together?).
    """
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row in csv.reader(f):
                line = len(rows) + 1  # rows are counted after reading so that quoted newlines stay one row
                rows.append((line, row))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read CSV file {path}: {e}") from None
    out = []
    header = None
    for line, row in rows:
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if header is None and not out and _is_header(cells, root):
            header = [_word(c) for c in cells]
            if header[0] in LABEL_WORDS - PATH_WORDS and header[1] in PATH_WORDS - LABEL_WORDS:
                raise DataError(f"{path} row {line}: the header {','.join(cells)!r} puts the label first; tailtune "
                                "reads path,label[,split]: swap the first two columns.")
            if [c.lower() for c in cells] not in HEADERS and notes is not None:
                notes.append(f"row {line} of {path} ({','.join(cells)}) read as a header (columns: path, label"
                             f"{', split' if len(cells) == 3 else ''}).")
            continue
        if header is not None and [_word(c) for c in cells] == header or [c.lower() for c in cells] in HEADERS:
            raise DataError(f"{path} row {line} repeats the header ({','.join(cells)}): were CSV files joined? "
                            "Remove the row.")
        if len(cells) not in (2, 3) or not cells[0] or not cells[1]:
            raise DataError(f"{path} row {line}: expected path,label[,split], got {row!r}.")
        split = cells[2].lower() if len(cells) == 3 and cells[2] else "train"
        if split not in SPLITS:
            raise DataError(f"{path} row {line}: split {cells[2]!r} is not one of {', '.join(SPLITS)}.")
        out.append((line, cells[0], cells[1], split))
    if not out:
        raise DataError(f"CSV file {path} has no rows.")
    return out


def _more(items: list, shown: int = SHOWN) -> str:
    return f" and {len(items) - shown} more" if len(items) > shown else ""


def _repeated(path: Path, rows, resolved: list[str], drop: bool, notes: list[str]):
    """``rows`` with each file once: a file with two labels is an error; one listed twice is an
    error too, or (``drop``) kept once, in its test or val row if it has one (no leakage)."""
    by_file: dict[str, list[int]] = {}
    for i, full in enumerate(resolved):
        by_file.setdefault(full, []).append(i)
    groups = [ix for ix in by_file.values() if len(ix) > 1]
    if not groups:
        return rows, resolved

    def rows_of(ix, labels=False):
        return ", ".join(f"row {rows[i][0]} ({rows[i][3]}{', ' + repr(rows[i][2]) if labels else ''})" for i in ix)

    conflicts = [ix for ix in groups if len({rows[i][2] for i in ix}) > 1]
    if conflicts:
        eg = "; ".join(f"{rows[ix[0]][1]}: {rows_of(ix, True)}" for ix in conflicts[:SHOWN])
        raise DataError(f"{path} gives {len(conflicts)} file{'s' * (len(conflicts) != 1)} more than one label "
                        f"({eg}{_more(conflicts)}): an image has one class; correct or remove the wrong rows.")
    across = [ix for ix in groups if len({rows[i][3] for i in ix}) > 1]
    eg = "; ".join(f"{rows[ix[0]][1]}: {rows_of(ix)}" for ix in groups[:SHOWN]) + _more(groups)
    if not drop:
        leak = (f"; {len(across)} of them in more than one split, which puts the same image in training and in "
                "evaluation" if across else "")
        raise DataError(f"{path} lists {len(groups)} file{'s' * (len(groups) != 1)} more than once ({eg}){leak}. "
                        "Remove the repeated rows, or set data.csv.drop_duplicates=true to keep each file once "
                        "(in its test or val row where it has one).")
    dropped = set()
    for ix in groups:
        keep = min(ix, key=lambda i: (SPLIT_ORDER[rows[i][3]], i))
        dropped |= set(ix) - {keep}
    notes.append(f"data.csv.drop_duplicates: {len(dropped)} repeated row{'s' * (len(dropped) != 1)} of {path} dropped "
                 f"({len(groups)} file{'s' * (len(groups) != 1)} listed more than once, {len(across)} of them in "
                 f"more than one split, kept in test or val only): {eg}.")
    kept = [i for i in range(len(rows)) if i not in dropped]
    return [rows[i] for i in kept], [resolved[i] for i in kept]


def _near_duplicates(path: Path, rows) -> None:
    """Labels that differ only in case or spaces (``Bag`` / ``bag``): a typo, named as such."""
    seen: dict[str, dict[str, list[int]]] = {}
    for line, _, label, _ in rows:
        seen.setdefault("".join(label.split()).casefold(), {}).setdefault(label, []).append(line)
    alike = [v for v in seen.values() if len(v) > 1]
    if alike:
        eg = "; ".join(" and ".join(f"{name!r} ({len(lines)} row{'s' * (len(lines) != 1)}, e.g. row {lines[0]})"
                                    for name, lines in v.items()) for v in alike[:SHOWN])
        raise DataError(f"{path}: labels that differ only in case or spaces ({eg}{_more(alike)}) would be separate "
                        "classes: likely a typo; use one spelling for each class.")


def _class_splits(path: Path, rows, targets: list[int], names, notes: list[str]) -> None:
    """A class in val/test rows but not in training is an error; one trained but never tested, a note."""
    where: dict[int, dict[str, list[int]]] = {}
    for (line, _, _, split), y in zip(rows, targets):
        where.setdefault(y, {}).setdefault(split, []).append(line)
    untrained = [y for y, s in sorted(where.items()) if "train" not in s]
    if untrained:
        eg = ", ".join(f"{names[y]!r} (" + ", ".join(f"{s} rows {', '.join(map(str, ls[:3]))}"
                                                      for s, ls in where[y].items()) + ")" for y in untrained[:SHOWN])
        raise DataError(f"{path}: {len(untrained)} class{'es' * (len(untrained) != 1)} in val or test rows but in no "
                        f"training row: {eg}{_more(untrained)}. Nothing can learn to predict such a class: correct "
                        "the label if it is a typo of a trained class, or add training rows.")
    if any("test" in s for s in where.values()):
        untested = [y for y, s in sorted(where.items()) if "test" not in s]
        if untested:
            eg = ", ".join(f"{names[y]!r} ({len(where[y]['train'])} training row"
                           f"{'s' * (len(where[y]['train']) != 1)}, e.g. row {where[y]['train'][0]})"
                           for y in untested[:SHOWN])
            notes.append(f"{len(untested)} class{'es' * (len(untested) != 1)} of {path} with training rows but no "
                         f"test row: {eg}{_more(untested)}. They are trained and can be predicted, but have no "
                         "accuracy of their own (left out of the balanced and group means); a class of one or two "
                         "images is often a typo'd label.")


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
@reads("root")
def csv_source(cfg: DataConfig):
    """Your own images listed in a CSV: path,label[,split] (split train / val / test; missing splits held out).

    Paths are relative to ``data.root`` (default: the CSV's folder) and may not leave it
    unless ``data.csv.allow_absolute_paths``. Labels are class names (classes sorted by name),
    or names / indices of ``data.classnames_file``.
    """
    opts = options_of(cfg, "csv", CsvOptions)
    path = _csv_path(cfg, opts)
    root = root_folder(cfg.root, "the images the CSV lists (its paths start there)") if cfg.root else path.parent
    notes: list[str] = []
    rows = read_rows(path, root, notes)
    resolved = [resolve_paths(root, [rel], f"{path} row {line}", opts.allow_absolute_paths,
                              "data.csv.allow_absolute_paths")[0] for line, rel, _, _ in rows]
    rows, resolved = _repeated(path, rows, resolved, opts.drop_duplicates, notes)
    if not cfg.classnames_file:
        _near_duplicates(path, rows)
    names, lookup = _labeller(path, [r[2] for r in rows], cfg.classnames_file)
    targets = [lookup(label, line) for line, _, label, _ in rows]
    if "train" not in {r[3] for r in rows}:
        raise DataError(f"{path} has no training rows (split column empty or 'train').")
    _class_splits(path, rows, targets, names, notes)
    splits: dict[str, tuple[list[str], list[int]]] = {}
    for (_, _, _, split), full, y in zip(rows, resolved, targets):
        files, labels = splits.setdefault(split, ([], []))
        files.append(full)
        labels.append(y)
    data = own_data(cfg, splits["train"], splits.get("val"), splits.get("test"), names, str(path))
    data.notes[:0] = notes
    return data
