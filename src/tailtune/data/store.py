"""A preprocessed image store: decoded, resized uint8 pixels read by memory mapping.

Decoding a JPEG costs more than everything else the training input pipeline does, and
a large run decodes every image once per epoch. ``tailtune data cache SOURCE --out DIR``
decodes each image of a dataset once, resizes its short side down to what the transforms
need (never up), and appends the pixels to one flat uint8 file per split; later runs
with ``data.store=DIR`` read the pixels through a memory map and decode nothing.

Layout of DIR: ``<split>.u8`` (H x W x 3 pixels of every image, concatenated),
``<split>.index.npy`` (N x 4 int64: byte offset, height, width, label), ``<split>.files.txt``
(for file-backed splits: each image's path relative to ``data.root``, in order) and
``meta.json`` (format version, short side, interpolation, class names, the data config it
was built from). A run refuses a store whose class names, labels or file list differ from
its dataset's; it trusts that a file with the same path holds the same pixels.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from tailtune.config import DataConfig, to_dict
from tailtune.config.options import migrate_saved, option_types
from tailtune.data.images import to_rgb
from tailtune.errors import DataError, WriteError
from tailtune.runtime.files import atomic, write_text, writing
from tailtune.runtime.progress import progress

META = "meta.json"  # the store's description, written last: a store without it is unfinished
STORE_VERSION = 2  # 2: class names and file lists, checked at use
DEFAULT_SHORT_SIDE = 256  # int(224 * 8 / 7): the test view's resize at 224 px, above five-crop's 248
# Data keys that do not change which images a split holds (paths may move, workers vary).
# data.interpolation is the run's filter; a store made with another one is used, with a note (use_store).
IGNORED_KEYS = ("store", "num_workers", "download", "verify_images", "root", "splits_dir", "interpolation")


def resized(img, short_side: int, interpolation: str) -> Image.Image:
    """``img`` (PIL, or a (3, H, W) uint8 tensor) in RGB with its short side brought down to
    ``short_side`` (never enlarged).

    The same resize the test transform applies (torchvision's ``Resize(short_side)``), so a
    store built at the test view's size gives the raw path's test views pixel for pixel.
    """
    img = TF.to_pil_image(img) if torch.is_tensor(img) else to_rgb(img)
    if min(img.size) <= short_side:
        return img
    return TF.resize(img, short_side, interpolation=InterpolationMode(interpolation))


class _Decoded(torch.utils.data.Dataset):
    """Decoded, resized pixels of a split as (H, W, 3) uint8 arrays (run in loader workers)."""

    def __init__(self, base, short_side: int, interpolation: str):
        self.base, self.short_side, self.interpolation = base, short_side, interpolation

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, y = self.base[i]
        return np.asarray(resized(img, self.short_side, self.interpolation), dtype=np.uint8), int(y)


def _as_is(item):
    """Collate function of the writer's loader: items stay (array, label), in order."""
    return item


def data_fingerprint(cfg: DataConfig) -> dict:
    """The data config keys that decide which images (and labels) each split holds."""
    return _own_keys({k: v for k, v in to_dict(cfg).items() if k not in IGNORED_KEYS}, cfg.name)


def _own_keys(fingerprint: dict, source: str) -> dict:
    """A data fingerprint without the options of the sources other than ``source`` (they pick no
    images); one written before the options moved to their sources has them under the new keys."""
    data = migrate_saved({"data": dict(fingerprint)})["data"]
    types = option_types("data")
    if source in types:  # an option added since the store was made reads as its default
        data[source] = {**to_dict(types[source]()), **(data.get(source) or {})}
    others = set(types) - {source}
    return {k: v for k, v in data.items() if k not in others}


def relative_files(ds, root: str | None) -> list[str] | None:
    """The split's image paths relative to ``root`` (None for splits not read from files)."""
    paths = getattr(ds, "paths", None)
    if paths is None:
        return None
    base = os.path.abspath(os.path.expanduser(root)) if root else None
    return [os.path.relpath(os.path.abspath(p), base) if base else os.path.abspath(p) for p in paths]


def check_store_folder(cfg: DataConfig, out: str | Path) -> None:
    """Refuse a store folder inside an image folder that is scanned for classes (it would become one)."""
    if cfg.name == "folder" and cfg.root and Path(out).resolve().is_relative_to(Path(cfg.root).expanduser().resolve()):
        raise DataError(f"--out {out} is inside data.root={cfg.root}, where it would be read as a class folder; "
                        "put the store elsewhere.")


def write_store(data, cfg: DataConfig, out: str | Path, short_side: int = DEFAULT_SHORT_SIDE,
                interpolation: str = "bicubic", workers: int = 0, quiet: bool = True) -> dict:
    """Decode and resize every image of ``data``'s splits into a store in ``out``; returns its meta."""
    if short_side < 1:
        raise DataError(f"--short-side must be a positive number of pixels, not {short_side}.")
    InterpolationMode(interpolation)  # a bad name fails here, before any work
    out = Path(out)
    check_store_folder(cfg, out)
    try:
        return _write_store(data, cfg, out, short_side, interpolation, workers, quiet)
    except WriteError as e:
        raise WriteError(f"{e} The store in {out} is incomplete (no {META}: it is never read as a store); make "
                         f"room, then run `tailtune data cache` with --out {out} again.", e.path) from e


def _write_store(data, cfg: DataConfig, out: Path, short_side: int, interpolation: str, workers: int,
                 quiet: bool) -> dict:
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / META).unlink(missing_ok=True)  # a half-written store is never mistaken for a finished one
    splits = {}
    for name, ds in data.splits().items():
        loader = torch.utils.data.DataLoader(_Decoded(ds, short_side, interpolation), batch_size=None,
                                             shuffle=False, num_workers=workers, collate_fn=_as_is)
        index = np.zeros((len(ds), 4), dtype=np.int64)
        offset = 0
        with atomic(out / f"{name}.u8") as tmp, open(tmp, "wb") as f:
            for i, (pixels, y) in enumerate(progress(loader, f"store {name}", quiet, total=len(ds), unit="img")):
                pixels = np.ascontiguousarray(pixels)
                f.write(pixels.tobytes())
                index[i] = (offset, pixels.shape[0], pixels.shape[1], y)
                offset += pixels.nbytes
        with atomic(out / f"{name}.index.npy", suffix=".npy") as tmp:
            np.save(tmp, index)
        files = relative_files(ds, cfg.root)
        if files is not None:
            write_text(out / f"{name}.files.txt", "".join(f + "\n" for f in files))
        splits[name] = {"images": len(ds), "bytes": offset}
    meta = {"version": STORE_VERSION, "short_side": short_side, "interpolation": interpolation,
            "splits": splits, "classnames": list(data.classnames), "data": data_fingerprint(cfg)}
    write_text(out / META, json.dumps(meta, indent=2, sort_keys=True, default=str))
    return meta


class StoreSplit(torch.utils.data.Dataset):
    """One split of a store: ``(image, label)`` items read from a memory map, nothing decoded.

    Images are (3, H, W) uint8 tensors (a view of H x W x 3 pixels), which the transforms
    crop, resize and normalise without going through PIL.
    """

    def __init__(self, folder: str | Path, name: str):
        folder = Path(folder)
        self.folder, self.name = folder, name
        index = np.load(folder / f"{name}.index.npy")
        self.offsets, self.heights, self.widths = index[:, 0], index[:, 1], index[:, 2]
        self.targets = [int(t) for t in index[:, 3]]
        size = (folder / f"{name}.u8").stat().st_size
        end = int((self.offsets + self.heights * self.widths * 3).max()) if len(index) else 0
        if size < end:
            raise DataError(f"{folder / (name + '.u8')} is truncated ({size:,} of {end:,} bytes); "
                            "rebuild the store with `tailtune data cache`.")
        self._pixels: np.memmap | None = None

    @property
    def pixels(self) -> np.memmap:
        # Opened lazily, so that each DataLoader worker maps the file itself.
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / f"{self.name}.u8", np.uint8, "r")
        return self._pixels

    def __getstate__(self):
        return dict(self.__dict__, _pixels=None)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        h, w, start = int(self.heights[i]), int(self.widths[i]), int(self.offsets[i])
        pixels = self.pixels[start:start + h * w * 3].reshape(h, w, 3)
        return torch.from_numpy(np.array(pixels)).permute(2, 0, 1), self.targets[i]


def read_meta(folder: str | Path) -> dict:
    """The store's description; a clear error when ``folder`` is not a finished store."""
    path = Path(folder) / META
    if not Path(folder).is_dir():
        raise DataError(f"data.store={folder} does not exist (relative paths count from the current folder); "
                        "build a store with `tailtune data cache SOURCE --out DIR`.")
    if not path.exists():
        raise DataError(f"data.store={folder} is not an image store (no meta.json); build it with "
                        "`tailtune data cache SOURCE --out DIR` (an interrupted build leaves no meta.json).")
    meta = json.loads(path.read_text())
    if meta.get("version") != STORE_VERSION:
        raise DataError(f"the image store {folder} has format version {meta.get('version')}, this tailtune reads "
                        f"{STORE_VERSION}; rebuild it with `tailtune data cache`.")
    return meta


def _check_files(store: Path, name: str, ds, root: str | None) -> None:
    """Refuse a store split whose file list (paths relative to data.root) differs from ``ds``'s."""
    listed = store / f"{name}.files.txt"
    ours = relative_files(ds, root)
    if ours is None or not listed.exists():
        return
    theirs = listed.read_text(encoding="utf-8").splitlines()
    if theirs == ours:
        return
    gone = sorted(set(theirs) - set(ours))
    new = sorted(set(ours) - set(theirs))
    what = "; ".join(part for part in (
        f"{len(gone)} stored file(s) no longer listed (e.g. {gone[0]})" if gone else "",
        f"{len(new)} file(s) not in the store (e.g. {new[0]})" if new else "",
        "the same files in another order" if not gone and not new else "") if part)
    raise DataError(f"the {name} split of the image store {store} was built from other files than the dataset "
                    f"lists ({len(theirs)} stored, {len(ours)} listed: {what}); rebuild it with "
                    "`tailtune data cache`.")


def use_store(data, cfg: DataConfig, resolution: int | None = None, interpolation: str | None = None):
    """``data`` with its splits read from ``cfg.store`` (unchanged when no store is set).

    The store must have been built from the same data config (keys that pick images and
    labels) and hold the same class names, labels and files in the same order; otherwise it
    is refused, saying what differs. A store resized with another filter than the run's
    (``interpolation``, what data.interpolation resolved to) or to a short side below the
    test view's resize is used, with a note saying how its pixels differ from the raw path's.
    """
    if not getattr(cfg, "store", None):
        return data
    meta = read_meta(cfg.store)
    want = json.loads(json.dumps(data_fingerprint(cfg), default=str))
    have = _own_keys(meta["data"], cfg.name)
    if have != want:
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        raise DataError(f"the image store {cfg.store} was built from another data config (differs in "
                        f"{', '.join('data.' + k for k in diff)}); rebuild it with `tailtune data cache`.")
    if meta["classnames"] != list(data.classnames):
        theirs, ours = meta["classnames"], list(data.classnames)
        i = next((k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
        raise DataError(f"the image store {cfg.store} was built for other classes ({len(theirs)} classes, "
                        f"class {i} {theirs[i] if i < len(theirs) else '(none)'!r}) than the dataset's "
                        f"({len(ours)}, class {i} {ours[i] if i < len(ours) else '(none)'!r}); "
                        "rebuild it with `tailtune data cache`.")
    splits = {}
    for name, ds in data.splits().items():
        if name not in meta["splits"]:
            raise DataError(f"the image store {cfg.store} has no {name} split; rebuild it with `tailtune data cache`.")
        _check_files(Path(cfg.store), name, ds, cfg.root)
        split = StoreSplit(cfg.store, name)
        if split.targets != [int(t) for t in ds.targets]:
            raise DataError(f"the {name} split of the image store {cfg.store} holds other labels than the dataset "
                            "(files changed since it was built); rebuild it with `tailtune data cache`.")
        splits[name] = split
    notes = list(data.notes)
    if resolution and meta["short_side"] < int(resolution * 8 / 7):
        notes.append(f"the image store's short side ({meta['short_side']} px) is below the test view's "
                     f"resize ({int(resolution * 8 / 7)} px): evaluation enlarges stored images.")
    if interpolation and meta["interpolation"] != interpolation:
        notes.append(f"the image store {cfg.store} was resized with {meta['interpolation']}, this run resizes with "
                     f"{interpolation} (data.interpolation): every image was first brought to "
                     f"{meta['short_side']} px with {meta['interpolation']}, so the pixels differ from the raw "
                     f"files' path; for the run's own filter rebuild it with "
                     f"`tailtune data cache ... --interpolation {interpolation}`.")
    return replace(data, notes=notes, **splits)
