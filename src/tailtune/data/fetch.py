"""``tailtune data fetch-splits``: get the benchmarks' split lists, verify them, or say where they go.

The lists are public (the benchmark code of the field redistributes them); the images are
not downloadable here (ImageNet, Places365 and iNaturalist need their own licences).
Checksums are of the uncompressed files; a file with no known checksum is checked for
its line count when that is known.
"""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tailtune.data.splits import find_list, open_text, sha256_of
from tailtune.errors import DataError
from tailtune.registry import Registry

_log = logging.getLogger(__name__)
_CB = "https://raw.githubusercontent.com/facebookresearch/classifier-balancing/main/data"
_LIFT = "https://raw.githubusercontent.com/shijxcs/LIFT/main/datasets"
_OLTR = ("the OLTR authors' shared folder linked from https://github.com/zhmiao/OpenLongTailRecognition-OLTR "
         "(section Data Preparation)")
_INAT = "the iNaturalist 2018 competition page, https://github.com/visipedia/inat_comp/tree/master/2018"


@dataclass(frozen=True)
class ListFile:
    """One file of a benchmark's lists: where it comes from and how to check it."""

    name: str
    url: str | None  # direct download, if there is one
    by_hand: str  # where a person gets it
    sha256: str | None = None  # of the uncompressed file
    lines: int | None = None  # expected line count (checked when there is no checksum)
    optional: bool = False  # the source runs without it
    alternative: tuple[str, ...] = ()  # files that, all present, stand in for this one


SPLIT_LISTS: Registry = Registry("benchmark with split lists")
SPLIT_LISTS.register("imagenet_lt", help="ImageNet_LT_{train,val,test}.txt")((
    ListFile("ImageNet_LT_train.txt", f"{_CB}/ImageNet_LT/ImageNet_LT_train.txt", _OLTR, lines=115_846),
    ListFile("ImageNet_LT_val.txt", f"{_CB}/ImageNet_LT/ImageNet_LT_val.txt", _OLTR,
             "9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e", 20_000, optional=True),
    ListFile("ImageNet_LT_test.txt", f"{_CB}/ImageNet_LT/ImageNet_LT_test.txt", _OLTR,
             "d1590191cf8a71fada7b1aaedaa2d139a2aea93ff2f1b755319d0bd8dbaa55d5", 50_000),
))
SPLIT_LISTS.register("places_lt", help="Places_LT_{train,val,test}.txt")((
    ListFile("Places_LT_train.txt", f"{_CB}/Places_LT/Places_LT_train.txt", _OLTR,
             "726c4871dcbf07ce2f857703bfe32e9a83ffbf52d704239f6d95c4f4f4c247f7", 62_500),
    ListFile("Places_LT_val.txt", f"{_CB}/Places_LT/Places_LT_val.txt", _OLTR,
             "719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba", 7_300, optional=True),
    ListFile("Places_LT_test.txt", f"{_CB}/Places_LT/Places_LT_test.txt", _OLTR,
             "44eee8441c8098c59195465abede425721bc35525d75209f9433b161a6eb37bc", 36_500),
))
SPLIT_LISTS.register("inat2018", help="iNaturalist18_{train,val}.txt + categories.json")((
    ListFile("iNaturalist18_train.txt", None,
             f"{_INAT} (its train2018.json holds the same list)",
             lines=437_513, alternative=("train2018.json", "val2018.json")),
    ListFile("iNaturalist18_val.txt", f"{_CB}/iNaturalist18/iNaturalist18_val.txt", _INAT,
             "efaeff65f80641b60864470e6f255aa69453406ef5717eec8c6681748f3a61f3", 24_426,
             alternative=("train2018.json", "val2018.json")),
    ListFile("categories.json", f"{_LIFT}/iNaturalist18/categories.json",
             "https://github.com/shijxcs/LIFT (datasets/iNaturalist18/categories.json)",
             "9c7adca5cafad83bc015e21dc773580769ef641543c412708a08fd81ea99ceb0"),
))


def check_file(path: Path, spec: ListFile) -> str | None:
    """Why ``path`` is not the file ``spec`` describes, or None if it checks out."""
    if spec.sha256:
        got = sha256_of(path)
        return None if got == spec.sha256 else f"sha256 {got}, expected {spec.sha256}"
    if spec.lines is not None:
        with open_text(path) as f:
            n = sum(1 for line in f if line.strip())
        return None if n == spec.lines else f"{n} lines, expected {spec.lines}"
    return None


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` through a temporary file (no half-written list is left)."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            shutil.copyfileobj(response, f)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def fetch_splits(name: str, root: str | Path, offline: bool = False, log=_log.info) -> list[dict]:
    """Make sure the split lists of benchmark ``name`` are in ``root``; returns one status per file.

    A present file is verified (checksum, else line count); a missing one is downloaded
    when it has a URL (unless ``offline``) and verified. A file that fails verification,
    or a required file that could not be got, ends in a DataError listing exactly which
    files to place where.
    """
    specs = SPLIT_LISTS.get(name)
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    report, problems, absent = [], [], []
    for spec in specs:
        found = find_list(root, spec.name)
        if found is None and spec.alternative and all(find_list(root, a) for a in spec.alternative):
            status = f"not needed ({' + '.join(spec.alternative)} present)"
        elif found is not None:
            bad = check_file(found, spec)
            if bad:
                problems.append(f"{found} is not the standard {spec.name} ({bad}); delete it and run again, "
                                f"or get it from {spec.url or spec.by_hand}.")
            status = f"BAD ({bad})" if bad else ("verified" if spec.sha256 or spec.lines else "present")
        elif spec.url and not offline:
            status = _download_and_check(spec, root, problems, log)
        else:
            status = "not downloaded (offline)" if spec.url else "no direct download"
        if find_list(root, spec.name) is None and not status.startswith(("not needed", "BAD")):
            absent.append((spec, status))
        report.append({"file": spec.name, "path": str(root / spec.name), "status": status})
        log(f"{spec.name}: {status}")
    todo = []
    for spec, status in absent:
        how = (f"download {spec.url} or get it from {spec.by_hand}" if spec.url else f"get it from {spec.by_hand}")
        if spec.alternative:
            how += f", or place {' and '.join(spec.alternative)} there instead"
        line = f"{spec.name} ({status}{', optional' if spec.optional else ''}): {how}"
        if spec.optional:
            log(f"  optional, place in {root}: {line}")
        else:
            todo.append(line)
    if problems or todo:
        msg = problems + ([f"Place these files in {root}: " + "; ".join(todo) + "."] if todo else [])
        raise DataError(f"the split lists of {name} are incomplete. " + " ".join(msg))
    return report


def _download_and_check(spec: ListFile, root: Path, problems: list[str], log) -> str:
    try:
        log(f"downloading {spec.url}")
        download(spec.url, root / spec.name)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        return f"download failed: {getattr(e, 'reason', e)}"
    bad = check_file(root / spec.name, spec)
    if bad:
        (root / spec.name).unlink()
        problems.append(f"the download of {spec.url} is not the standard {spec.name} ({bad}) and was removed; "
                        f"get the file from {spec.by_hand}.")
        return f"BAD download ({bad})"
    return "downloaded and verified" if spec.sha256 or spec.lines else "downloaded"
