"""Split lists of the long-tail benchmarks: ``relative/path label`` per line.

Reading (plain or gzipped), locating, checksumming, rewriting path prefixes and
resolving the listed paths under the data root. Shared by imagenet_lt, places_lt and
inat2018.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from tailtune.config import DataConfig
from tailtune.errors import ConfigError, DataError
from tailtune.registry import Registry


def open_text(path: Path):
    """Open a text file, transparently gunzipping ``*.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_list(path: str | Path) -> tuple[list[str], list[int]]:
    """Paths and labels of a split list; a malformed line is an error naming file and line."""
    path = Path(path)
    paths, labels = [], []
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                # rsplit: the label is the last field, so a path may contain spaces.
                parts = line.rsplit(None, 1)
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise DataError(f"{path}:{lineno}: expected 'relative/path label', got {line!r}.")
                paths.append(parts[0])
                labels.append(int(parts[1]))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split list {path}: {e}") from None
    if not paths:
        raise DataError(f"split list {path} is empty.")
    return paths, labels


def find_list(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists."""
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def splits_dir(cfg: DataConfig) -> Path:
    """Where a source looks for its lists: ``data.splits_dir``, else ``data.root``."""
    return Path(cfg.splits_dir or cfg.root or ".").expanduser()


def require_list(cfg: DataConfig, name: str, fetch_name: str) -> Path:
    """The path of a required list, or an error saying where to put it and how to get it."""
    folder = splits_dir(cfg)
    found = find_list(folder, name)
    if found is None:
        raise DataError(f"split list {name} not found in {folder} (nor {name}.gz). Get it with "
                        f"`tailtune data fetch-splits {fetch_name} --root {folder}` (it says where to "
                        "download what it cannot), or set data.splits_dir to the folder holding it.")
    return found


def sha256_of(path: str | Path) -> str:
    """sha256 of a file's uncompressed contents (a ``.gz`` file is hashed after gunzip)."""
    path = Path(path)
    h = hashlib.sha256()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------ path rewriting

PATH_MAPS: Registry = Registry("path map")


@PATH_MAPS.register("places365_original")
def places365_original(path: str) -> str:
    """Places365 lists in the easy format (train/<class>/f, val/<class>/f) -> data_256/<l>/<class>/f, val_256/f."""
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "train":
        # easy-format folder "apartment_building-outdoor" is "a/apartment_building/outdoor" originally
        cls = parts[1]
        return "/".join(["data_256", cls[0], *cls.split("-"), parts[2]])
    if len(parts) == 3 and parts[0] == "val":
        return f"val_256/{parts[2]}"
    return path


def path_mapper(rules: Sequence[str]) -> Callable[[str], str]:
    """A function rewriting listed paths by ``data.path_map`` rules.

    Each rule is ``OLD=NEW`` (a path starting with OLD gets NEW instead; the first matching
    rule wins) or the name of a known layout conversion (``places365_original``).
    """
    steps: list[Callable[[str], str]] = []
    prefixes: list[tuple[str, str]] = []
    for rule in rules:
        if "=" in rule:
            old, new = rule.split("=", 1)
            if not old:
                raise ConfigError(f"data.path_map rule {rule!r} has an empty prefix; write OLD=NEW.")
            prefixes.append((old, new))
        elif rule in PATH_MAPS:
            steps.append(PATH_MAPS.get(rule))
        else:
            raise ConfigError(f"data.path_map rule {rule!r} is neither OLD=NEW nor a known layout "
                              f"({', '.join(PATH_MAPS.names())}).")

    def apply(path: str) -> str:
        for step in steps:
            path = step(path)
        for old, new in prefixes:
            if path.startswith(old):
                return new + path[len(old):]
        return path

    return apply


def resolve_paths(root: Path, paths: Sequence[str], where: str, allow_absolute: bool = False,
                  absolute_key: str | None = None) -> list[str]:
    """Listed paths joined to ``root``; a path leaving the root is an error naming it.

    ``absolute_key``: the config key that would accept absolute paths, named in the error.

    Pure string work (no file system calls): benchmark lists have hundreds of thousands of lines.
    """
    root_s = os.path.abspath(str(root))
    inside = root_s.rstrip(os.sep) + os.sep
    out = []
    for p in paths:
        if os.path.isabs(p):
            if not allow_absolute:
                hint = f" (set {absolute_key}=true to accept absolute paths)" if absolute_key else ""
                raise DataError(f"{where}: absolute path {p!r}; paths must be relative to the data root "
                                f"{root_s}{hint}.")
            out.append(os.path.normpath(p))
        elif ".." in p or "./" in p or "//" in p or "\\" in p:
            full = os.path.normpath(os.path.join(root_s, p))
            if not full.startswith(inside):
                raise DataError(f"{where}: path {p!r} leads outside the data root {root_s}; "
                                "listed paths must stay under data.root.")
            out.append(full)
        else:  # the common case, kept to string concatenation: lists have up to 460k lines
            out.append(inside + p)
    return out


def read_classnames(path: str | Path, expected: int | None = None, what: str = "classes") -> list[str]:
    """One class name per line (blank lines ignored); ``expected`` checks the count."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"class-names file {path} does not exist (data.classnames_file).")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class-names file {path}: {e}") from None
    if len(names) > 1 and any(all(p.match(n) for n in names) for p in _TWO_COLUMN):
        raise DataError(f"class-names file {path} holds two columns, folder and name (line 1: {names[0]!r}); "
                        "give one name per line, e.g. its second column: "
                        f"cut -d' ' -f2- {path} > names.txt")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"class-names file {path} repeats {', '.join(map(repr, dup[:5]))}; names must be unique.")
    if expected is not None and len(names) != expected:
        raise DataError(f"class-names file {path} has {len(names)} names for {expected} {what}; "
                        "give exactly one name per class, in label order.")
    return names


# Two-column "folder name" lists (LIFT's datasets/*/classnames.txt: "airfield airfield",
# "n01440764 tench"): every line matching one of these is not a file of names.
_TWO_COLUMN = (re.compile(r"^(\S+)\s+\1$"), re.compile(r"^n\d{8}\s+\S"))
