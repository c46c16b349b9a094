"""Your own data (folder and csv sources): class names, missing splits held out, long-tail option.

A source reads its files into (paths, labels) per split and hands them here; what a
benchmark fixes by its lists, own data gets by rule: a missing test split becomes a
stratified balanced hold-out of the training images (recorded in the run's splits.json),
a missing val split likewise when ``data.val`` is auto or holdout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tailtune.config import DataConfig
from tailtune.data.base import FileDataset
from tailtune.data.holdout import HELD_OUT_VAL, VAL_SPLIT, counts_of, holdout_size, split_off, take
from tailtune.data.longtail import GROUPS, class_counts, exp_profile, shot_groups, subsample
from tailtune.data.sources.base import LTData
from tailtune.errors import DataError

Split = tuple[list[str], list[int]]


def own_data(cfg: DataConfig, train: Split, val: Split | None, test: Split | None,
             classnames: Sequence[str], where: str):
    """An ``LTData`` from own files: hold out what is missing, optionally subsample, group."""
    num = len(classnames)
    counts = class_counts(train[1], num)
    empty = np.where(counts == 0)[0]
    if len(empty):
        eg = ", ".join(classnames[i] for i in empty[:5])
        raise DataError(f"{len(empty)} classes have no training image (e.g. {eg}) in {where}; "
                        "add images or remove the class.")
    notes: list[str] = []
    record: dict = {}
    train_ds = FileDataset(*train)
    seed = cfg.subset_seed
    if test is None:
        k = holdout_size(counts, cfg.holdout_per_class, classnames, "test")
        if k == 0:
            raise DataError(f"{where} has no test split and its smallest class has {int(counts.min())} images, "
                            "too few to hold out a balanced test set (a quarter of the smallest class); add a "
                            "test split or set data.holdout_per_class=K below the smallest count.")
        train_ds, test_ds, record["test"] = split_off(train_ds, num, k, seed, "test")
        notes.append(f"no test split given: {k} images per class ({len(test_ds)} in all, seed {seed}) held out of "
                     "the training images as a balanced test set; the list is in the run's splits.json.")
    else:
        test_ds = FileDataset(*test)
    val_ds, val_source = None, None
    if val is not None:
        val_ds, val_source = FileDataset(*val), VAL_SPLIT
    elif cfg.val in ("auto", "holdout"):
        left = counts_of(train_ds, num)
        k = holdout_size(left, cfg.holdout_per_class, classnames, "val")
        if k > 0:
            train_ds, val_ds, record["val"] = split_off(train_ds, num, k, seed, "val")
            val_source = HELD_OUT_VAL
            notes.append(f"no val split given: {k} images per class ({len(val_ds)} in all) held out of the "
                         "training images for validation; the list is in the run's splits.json.")
        elif cfg.val == "holdout":
            raise DataError(f"data.val=holdout: the smallest class of {where} has {int(left.min())} training "
                            "images, too few to hold out a quarter; set data.holdout_per_class=K.")
        else:
            notes.append(f"no validation split: the smallest class has {int(left.min())} training images, too "
                         "few to hold some out (set data.holdout_per_class=K to force it).")
    if cfg.imb_ratio > 1:
        left = counts_of(train_ds, num)
        profile = exp_profile(int(left.max()), num, cfg.imb_ratio)
        profile = [max(1, min(p, int(c))) for p, c in zip(profile, left)]
        train_ds = take(train_ds, subsample(train_ds.targets, profile, seed))
        notes.append(f"training set subsampled to an exponential profile with imbalance ratio {cfg.imb_ratio:g} "
                     "(classes in label order, head first); data.imb_ratio=1 keeps every image.")
    groups = shot_groups(counts_of(train_ds, num))
    return LTData(train_ds, test_ds, list(classnames), groups, GROUPS, notes,
                  val=val_ds, val_source=val_source, record=record)
