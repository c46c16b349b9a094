"""Stratified, balanced held-out splits for data that come without a test or val split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from tailtune.data.base import FileDataset, Subset
from tailtune.data.longtail import class_counts
from tailtune.errors import DataError

AUTO_MAX_PER_CLASS = 20
# Seed streams: the test and the val hold-outs of one seed must differ and never overlap
# by chance, so each draws from its own child of the seed.
STREAMS = {"test": 0, "val": 1}


def holdout_size(counts: Sequence[int], requested: int | None, classnames: Sequence[str], what: str) -> int:
    """Images per class to hold out.

    ``requested`` (``data.holdout_per_class``) must leave every class at least one image;
    when unset, a quarter of the smallest class, at most 20 (0 when the smallest class has
    fewer than 4 images: then nothing can be held out without emptying it).
    """
    counts = np.asarray(counts)
    if requested is None:
        return int(min(AUTO_MAX_PER_CLASS, int(counts.min()) // 4))
    short = np.where(counts <= requested)[0]
    if len(short):
        eg = ", ".join(f"{classnames[i]!r} ({counts[i]})" for i in short[:5])
        raise DataError(f"data.holdout_per_class={requested} would leave {len(short)} classes without "
                        f"training images for the {what} split (e.g. {eg}); lower it below "
                        f"{int(counts.min())} or provide a {what} split.")
    return int(requested)


def balanced_holdout(targets: Sequence[int], num_classes: int, per_class: int, seed: int,
                     stream: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) indices: ``per_class`` random images of every class held out.

    A local generator seeded by (seed, stream) draws each class's images in class order,
    so the split is a pure function of the file list, the seed and the stream.
    """
    targets = np.asarray(targets)
    rng = np.random.default_rng([seed, STREAMS[stream]])
    held = []
    for c in range(num_classes):
        idx = np.where(targets == c)[0]
        held.append(rng.permutation(idx)[:per_class])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(targets), dtype=bool)
    mask[held_idx] = False
    return np.where(mask)[0], held_idx


def take(dataset, indices: Sequence[int]):
    """The items ``indices`` of a dataset; file datasets stay file datasets (checked at start-up)."""
    if isinstance(dataset, FileDataset):
        return FileDataset([dataset.paths[i] for i in indices], [dataset.targets[i] for i in indices])
    return Subset(dataset, indices)


def split_off(dataset, num_classes: int, per_class: int, seed: int, stream: str):
    """(rest, held-out, record): a balanced held-out slice of ``dataset`` and how it was made."""
    keep, held = balanced_holdout(dataset.targets, num_classes, per_class, seed, stream)
    held_set = take(dataset, held)
    record = {
        "made_by": "stratified balanced hold-out of the training images",
        "per_class": per_class,
        "seed": seed,
        "stream": stream,
        "images": len(held),
        "files": list(held_set.paths) if isinstance(held_set, FileDataset) else None,
        "indices": None if isinstance(held_set, FileDataset) else [int(i) for i in held],
    }
    return take(dataset, keep), held_set, record


def counts_of(dataset, num_classes: int) -> np.ndarray:
    """Images per class of a dataset with ``targets``."""
    return class_counts(dataset.targets, num_classes)


HELD_OUT_VAL = "held-out slice of train"
VAL_SPLIT = "val split"


def with_val(data, cfg):
    """Apply ``data.val`` to a built dataset (an ``LTData``).

    auto keeps what the source made (its own val split; own data: a held-out slice of the
    training images); split requires the dataset's own val split; holdout carves a
    balanced slice out of the training images; none drops validation.
    """
    if cfg.val == "none":
        return replace(data, val=None, val_source=None, record={k: v for k, v in data.record.items() if k != "val"})
    if cfg.val == "split" and data.val_source != VAL_SPLIT:
        raise DataError(f"data.val=split but {cfg.name} has no val split of its own; use data.val=holdout "
                        "(a held-out slice of the training images) or data.val=none.")
    if cfg.val != "holdout" or data.val_source == HELD_OUT_VAL:
        return data
    counts = counts_of(data.train, data.num_classes)
    k = holdout_size(counts, cfg.holdout_per_class, data.classnames, "val")
    if k == 0:
        raise DataError(f"data.val=holdout: the smallest class has {int(counts.min())} training images, too few "
                        "to hold out a quarter; set data.holdout_per_class=K (K below the smallest count).")
    train, val, rec = split_off(data.train, data.num_classes, k, cfg.subset_seed, "val")
    note = (f"validation: {k} images per class ({len(val)} in all, seed {cfg.subset_seed}) held out of the "
            f"training images; training uses the other {len(train)}, so a benchmark no longer trains on its "
            "whole published list. Many/medium/few groups keep the dataset's own class counts.")
    return replace(data, train=train, val=val, val_source=HELD_OUT_VAL, notes=[*data.notes, note],
                   record={**data.record, "val": rec})
