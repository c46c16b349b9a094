"""Start-up checks of image files: every listed file exists and decodes.

Run by ``build_data`` before any model is built, so a missing or corrupt file stops a
run in seconds with its name rather than hours into training.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from tailtune.data.base import FileDataset
from tailtune.data.images import ImageFileError, decode, open_file
from tailtune.data.roots import link_problem
from tailtune.errors import DataError

SHOWN = 5  # missing paths quoted in an error
SHOWN_BAD = 10  # unreadable files quoted per split, each with its reason


def decode_error(path: str) -> ImageFileError | None:
    """What is wrong with ``path`` as an image, or None if it reads: the same reading as
    training's (data/images.py), so a file passed here never fails later."""
    try:
        with open_file(path) as img:
            # JPEG: decode at reduced scale; every byte is still read, so truncation shows.
            img.draft("RGB", (64, 64))
            decode(img, path)
    except ImageFileError as e:
        return e
    return None


def _file_splits(data) -> dict[str, FileDataset]:
    return {k: v for k, v in data.splits().items() if isinstance(v, FileDataset)}


def missing_files(data) -> dict[str, list[str]]:
    """Listed files that do not exist, by split."""
    return {k: [p for p in ds.paths if not os.path.isfile(p)] for k, ds in _file_splits(data).items()}


def corrupt_files(paths: list[str], workers: int | None = None) -> dict[str, ImageFileError]:
    """{path: what is wrong} of the files that do not read as images (decoded on threads: PIL releases the GIL)."""
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        reasons = pool.map(decode_error, paths, chunksize=64)
        return {p: r for p, r in zip(paths, reasons) if r is not None}


def check_image_files(data, verify: bool = True, skip_corrupt: bool = False):
    """Check the files of every file-backed split; returns the data (corrupt files dropped if asked).

    Missing files are always an error: their count per split and the first few paths.
    A file that does not decode is an error naming it, or, with ``skip_corrupt``, dropped
    and counted in the notes.
    """
    missing = missing_files(data)
    n_missing = sum(len(v) for v in missing.values())
    if n_missing:
        per_split = ", ".join(f"{k} {len(v)} of {len(data.splits()[k])}" for k, v in missing.items() if v)
        shown = [p for v in missing.values() for p in v][:SHOWN]
        links = [problem for p in shown if (problem := link_problem(p))]
        if links:  # a listed name that is a dangling or looping link is no missing file: say which
            raise DataError(f"{n_missing} listed image files cannot be opened ({per_split}); symbolic links that "
                            f"lead nowhere: {'; '.join(links)}. Point each link at its image file (or list the "
                            "image files themselves).")
        raise DataError(f"{n_missing} listed image files are missing ({per_split}), e.g. {', '.join(shown)}. "
                        "Check data.root (and data.path_map when the lists use another folder layout).")
    if not verify:
        return data
    splits = _file_splits(data)
    bad = {split: corrupt_files(ds.paths) for split, ds in splits.items()}
    bad = {split: b for split, b in bad.items() if b}
    if not bad:
        return data
    if not skip_corrupt:
        raise DataError(unreadable_message(bad, {k: len(v) for k, v in splits.items()}))
    changes, notes = {}, []
    for split, b in bad.items():
        ds = splits[split]
        keep = [i for i, p in enumerate(ds.paths) if p not in b]
        changes[split] = FileDataset([ds.paths[i] for i in keep], [ds.targets[i] for i in keep])
        notes.append(f"skipped {len(b)} corrupt or unreadable {split} images of {len(ds)} "
                     f"(data.skip_corrupt=true): {_listing(b)}.")
    return replace(data, **changes, notes=[*data.notes, *notes])


def _listing(bad: dict[str, ImageFileError]) -> str:
    shown = "; ".join(f"{p} {e.problem}" for p, e in list(bad.items())[:SHOWN_BAD])
    return shown + (f"; and {len(bad) - SHOWN_BAD} more" if len(bad) > SHOWN_BAD else "")


def unreadable_message(bad: dict[str, dict[str, ImageFileError]], sizes: dict[str, int]) -> str:
    """The error for the files of ``bad`` ({split: {path: what is wrong}}): one file in its own
    words, several as their count per split and the first ten of every split, each with its reason."""
    skip = "set data.skip_corrupt=true to leave such files out"
    errors = [e for b in bad.values() for e in b.values()]
    if len(errors) == 1:
        return f"{errors[0]}"[:-1] + f", or {skip}."
    kinds = {e.kind for e in errors}
    how = [text for kind, text in (("mode", "save an image of a mode named above as 8-bit RGB or grey, PNG or JPEG"),
                                   ("size", "resize an image over the size limit"),
                                   ("missing", "check the paths of missing files")) if kind in kinds]
    per_split = ", ".join(f"{k} {len(b)} of {sizes[k]}" for k, b in bad.items())
    listed = " ".join(f"{k}: {_listing(b)}." for k, b in bad.items())
    return (f"{len(errors)} image files cannot be read ({per_split}). {listed} Replace or remove them"
            f"{' (' + '; '.join(how) + ')' if how else ''}, or {skip}.")
