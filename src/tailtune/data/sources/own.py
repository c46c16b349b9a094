"""Your own data (folder and csv sources): class names, missing splits held out, long-tail option.

A source reads its files into (paths, labels) per split and hands them here; what a
benchmark fixes by its lists, own data gets by rule: a missing test split becomes a
stratified hold-out of the training images (``data.holdout_policy``: balanced or
proportional, data/holdout.py; recorded in the run's splits.json), a missing val split
likewise, out of what is left, when ``data.val`` is auto or holdout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tailtune.config import DataConfig
from tailtune.data.base import FileDataset
from tailtune.data.holdout import (
    HELD_OUT_VAL,
    VAL_SPLIT,
    HoldoutError,
    counts_of,
    hold_out,
    refusal,
    take,
)
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
        made = hold_out(train_ds, classnames, cfg, "test")
        if made is None:
            described = LTData(train_ds, FileDataset([], []), list(classnames), shot_groups(counts), GROUPS, [])
            raise HoldoutError(refusal(counts, classnames, where, "test", cfg), described=described)
        train_ds, test_ds, record["test"], said, caveat = made
        kind = "the" if cfg.holdout_policy == "proportional" else "a balanced"
        notes.append(f"no test split given: {said} held out of the training images as {kind} test set{caveat}; the "
                     "list is in the run's splits.json.")
    else:
        test_ds = FileDataset(*test)
    val_ds, val_source = None, None
    if val is not None:
        val_ds, val_source = FileDataset(*val), VAL_SPLIT
    elif cfg.val in ("auto", "holdout"):
        made = hold_out(train_ds, classnames, cfg, "val")
        if made is not None:
            train_ds, val_ds, record["val"], said, caveat = made
            val_source = HELD_OUT_VAL
            notes.append(f"no val split given: {said} held out of the training images for validation{caveat}; the "
                         "list is in the run's splits.json.")
        elif cfg.val == "holdout":
            left = counts_of(train_ds, num)
            described = LTData(train_ds, test_ds, list(classnames), shot_groups(left), GROUPS, notes, record=record)
            raise HoldoutError("data.val=holdout: " + refusal(left, classnames, where, "val", cfg), described=described)
        else:
            left = counts_of(train_ds, num)
            other = ("" if cfg.holdout_policy == "proportional" else
                     "; data.holdout_policy=proportional holds out a quarter of each class instead")
            notes.append(f"no validation split: the smallest class has {int(left.min())} training images, too "
                         f"few to hold some out (set data.holdout_per_class=K to force it{other}).")
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
