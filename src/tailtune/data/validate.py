"""Start-up checks of image files: every listed file exists and decodes.

Run by ``build_data`` before any model is built, so a missing or corrupt file stops a
run in seconds with its name rather than hours into training.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from PIL import Image, UnidentifiedImageError

from tailtune.data.base import FileDataset
from tailtune.errors import DataError

SHOWN = 5  # paths quoted in an error


def decode_error(path: str) -> str | None:
    """Why ``path`` does not decode as an image, or None if it does."""
    try:
        with Image.open(path) as img:
            # JPEG: decode at reduced scale; every byte is still read, so truncation shows.
            img.draft("RGB", (64, 64))
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as e:  # PIL's ways of saying "corrupt" (or absurdly large)
        return f"{type(e).__name__}: {e}"
    return None


def _file_splits(data) -> dict[str, FileDataset]:
    return {k: v for k, v in data.splits().items() if isinstance(v, FileDataset)}


def missing_files(data) -> dict[str, list[str]]:
    """Listed files that do not exist, by split."""
    return {k: [p for p in ds.paths if not os.path.isfile(p)] for k, ds in _file_splits(data).items()}


def corrupt_files(paths: list[str], workers: int | None = None) -> dict[str, str]:
    """{path: reason} of the files that do not decode (decoded on threads: PIL releases the GIL)."""
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
        raise DataError(f"{n_missing} listed image files are missing ({per_split}), e.g. {', '.join(shown)}. "
                        "Check data.root (and data.path_map when the lists use another folder layout).")
    if not verify:
        return data
    changes, notes = {}, []
    for split, ds in _file_splits(data).items():
        bad = corrupt_files(ds.paths)
        if not bad:
            continue
        if not skip_corrupt:
            first = next(iter(bad))
            more = f" ({len(bad) - 1} more {split} files do not decode either)" if len(bad) > 1 else ""
            raise DataError(f"image file {first} is corrupt or not an image ({bad[first]}){more}; replace or "
                            "remove it, or set data.skip_corrupt=true to leave such files out.")
        keep = [i for i, p in enumerate(ds.paths) if p not in bad]
        changes[split] = FileDataset([ds.paths[i] for i in keep], [ds.targets[i] for i in keep])
        shown = ", ".join(list(bad)[:SHOWN])
        notes.append(f"skipped {len(bad)} corrupt {split} images of {len(ds)} (data.skip_corrupt=true), e.g. {shown}.")
    if not changes:
        return data
    return replace(data, **changes, notes=[*data.notes, *notes])
