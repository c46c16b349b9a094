"""Stratified held-out splits for data that come without a test or val split.

``data.holdout_policy`` says how many images each class gives:

- ``balanced`` (default): the same number from every class, ``data.holdout_per_class`` or a
  quarter of the smallest class (at most 20). Every class is tested on as many images, so
  per-class accuracies are equally reliable; a class of fewer than 4 images makes it impossible
  (refused, naming the other policy).
- ``proportional``: a quarter of each class's own images (rounded down), at most
  ``data.holdout_per_class`` (default 20). Every class keeps at least 3/4 of its images for
  training; the price: a class of fewer than 4 images gets no test image (it is trained and
  can be predicted, but is left out of the balanced and group means) and a class of 4-7
  images is tested on one, so few-shot accuracy is noisier.

The val split is held out of what the test split left, by the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from tailtune.data.base import FileDataset, Subset
from tailtune.data.longtail import class_counts
from tailtune.errors import DataError

AUTO_MAX_PER_CLASS = 20
HOLDOUT_KEYS = ("holdout_per_class", "holdout_policy")  # the data keys of a hold-out
SHARE = 4  # a hold-out takes a quarter: of the smallest class (balanced) or of each class (proportional)
SHOWN = 5  # classes named in a note or an error
# Seed streams: the test and the val hold-outs of one seed must differ and never overlap
# by chance, so each draws from its own child of the seed.
STREAMS = {"test": 0, "val": 1}


class HoldoutError(DataError):
    """A hold-out that these data cannot give (a class too small for it).

    ``described``: the data as far as they were built, without that hold-out, so that
    ``tailtune data stats`` can still describe them (a hold-out problem is a note there).
    """

    def __init__(self, message: str, described=None):
        super().__init__(message)
        self.described = described


def holdout_size(counts: Sequence[int], requested: int | None, classnames: Sequence[str], what: str) -> int:
    """Images per class to hold out under the balanced policy.

    ``requested`` (``data.holdout_per_class``) must leave every class at least one image;
    when unset, a quarter of the smallest class, at most 20 (0 when the smallest class has
    fewer than 4 images: then nothing can be held out without emptying it).
    """
    counts = np.asarray(counts)
    if requested is None:
        return int(min(AUTO_MAX_PER_CLASS, int(counts.min()) // SHARE))
    short = np.where(counts <= requested)[0]
    if len(short):
        eg = ", ".join(f"{classnames[i]!r} ({counts[i]})" for i in short[:SHOWN])
        raise DataError(f"data.holdout_per_class={requested} would leave {len(short)} classes without "
                        f"training images for the {what} split (e.g. {eg}); lower it below "
                        f"{int(counts.min())}, provide a {what} split, or set data.holdout_policy=proportional "
                        "(at most that many per class, always leaving 3/4 of a class for training).")
    return int(requested)


def holdout_sizes(counts: Sequence[int], cfg, classnames: Sequence[str], what: str) -> np.ndarray:
    """Images each class gives to the ``what`` split under ``cfg.holdout_policy`` (all 0: none possible)."""
    counts = np.asarray(counts, dtype=np.int64)
    if getattr(cfg, "holdout_policy", "balanced") == "proportional":
        cap = cfg.holdout_per_class or AUTO_MAX_PER_CLASS
        return np.minimum(cap, counts // SHARE)
    return np.full(len(counts), holdout_size(counts, cfg.holdout_per_class, classnames, what), dtype=np.int64)


def refusal(counts: Sequence[int], classnames: Sequence[str], where: str, what: str, cfg) -> str:
    """Why the ``what`` hold-out cannot be made, the trade-off of each way out, and the keys."""
    counts = np.asarray(counts)
    if getattr(cfg, "holdout_policy", "balanced") == "proportional":
        return (f"{where}: no class has {SHARE} images or more, so data.holdout_policy=proportional (a quarter of each "
                f"class) holds out no {what} image at all; add a {what} split or more images.")
    small = int(np.argmin(counts))
    lacking = np.where(counts < SHARE)[0]
    eg = ", ".join(f"{classnames[i]!r} ({counts[i]})" for i in lacking[:SHOWN])
    more = f" and {len(lacking) - SHOWN} more" if len(lacking) > SHOWN else ""
    given = "no test split" if what == "test" else "no val split"
    return (f"{where} has {given} and its smallest class, {classnames[small]!r}, has {int(counts[small])} "
            f"{'images' if what == 'test' else 'training images'}: too few for the balanced hold-out "
            f"(data.holdout_policy=balanced: the same number from every class, a quarter of the smallest); "
            f"{len(lacking)} class{'es have' if len(lacking) != 1 else ' has'} fewer than {SHARE} ({eg}{more}). Ways out: add a "
            f"{what} split; or data.holdout_policy=proportional: each class gives a quarter of its own images (at "
            f"most 20) and keeps at least 3/4 for training, but classes of fewer than {SHARE} images get no "
            f"{what} image (not measured) and rare classes are tested on 1-2 images (noisier few-shot accuracy); "
            f"or data.holdout_per_class=K (K below {int(counts[small])}) for a balanced hold-out of K per class, "
            "which the val split takes again and which leaves the smallest class few training images.")


def taken(sizes: Sequence[int], classnames: Sequence[str]) -> str:
    """What a proportional hold-out took, per class, for the notes: '20 from 12 classes, 1 from 3, 0 from 2 (a, b)'."""
    sizes = np.asarray(sizes)
    parts = []
    for n in sorted(set(sizes.tolist()), reverse=True):
        members = np.where(sizes == n)[0]
        part = f"{n} from {len(members)} class{'es' * (len(members) != 1)}"
        if n == 0:
            part += " (" + ", ".join(repr(classnames[i]) for i in members[:SHOWN])
            part += (f" and {len(members) - SHOWN} more" if len(members) > SHOWN else "") + ")"
        parts.append(part)
    return ", ".join(parts)


def balanced_holdout(targets: Sequence[int], num_classes: int, per_class: int | Sequence[int], seed: int,
                     stream: str) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held) indices: ``per_class`` random images of every class held out (one number for
    every class, or one per class).

    A local generator seeded by (seed, stream) draws each class's images in class order,
    so the split is a pure function of the file list, the seed and the stream.
    """
    targets = np.asarray(targets)
    sizes = np.broadcast_to(np.asarray(per_class), (num_classes,))
    rng = np.random.default_rng([seed, STREAMS[stream]])
    held = []
    for c in range(num_classes):
        idx = np.where(targets == c)[0]
        held.append(rng.permutation(idx)[:int(sizes[c])])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(targets), dtype=bool)
    mask[held_idx] = False
    return np.where(mask)[0], held_idx


def take(dataset, indices: Sequence[int]):
    """The items ``indices`` of a dataset; file datasets stay file datasets (checked at start-up)."""
    if isinstance(dataset, FileDataset):
        return FileDataset([dataset.paths[i] for i in indices], [dataset.targets[i] for i in indices])
    return Subset(dataset, indices)


def split_off(dataset, num_classes: int, per_class, seed: int, stream: str,
              classnames: Sequence[str] | None = None):
    """(rest, held-out, record): a held-out slice of ``dataset`` and how it was made.

    ``per_class``: one number (balanced) or, with ``classnames``, one per class (proportional:
    the record lists what each class gave).
    """
    keep, held = balanced_holdout(dataset.targets, num_classes, per_class, seed, stream)
    held_set = take(dataset, held)
    if classnames is None:
        made_by, given = "stratified balanced hold-out of the training images", int(per_class)
    else:
        made_by = ("stratified proportional hold-out of the training images (data.holdout_policy=proportional: "
                   "a quarter of each class, capped)")
        given = {name: int(n) for name, n in zip(classnames, per_class)}
    record = {
        "made_by": made_by,
        "per_class": given,
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


def hold_out(dataset, classnames: Sequence[str], cfg, what: str):
    """(rest, held-out, record, what was taken, what each class gave) by ``data.holdout_policy`` (the
    last two for the notes; the per-class part empty for balanced), or None when no image
    can be held out (balanced: the smallest class has fewer than 4; proportional: every class has)."""
    num = len(classnames)
    sizes = holdout_sizes(counts_of(dataset, num), cfg, classnames, what)
    if sizes.sum() == 0 or (cfg.holdout_policy != "proportional" and sizes.min() == 0):
        return None
    seed = cfg.subset_seed
    if cfg.holdout_policy == "proportional":
        rest, held, rec = split_off(dataset, num, sizes, seed, what, classnames)
        cap = cfg.holdout_per_class or AUTO_MAX_PER_CLASS
        said = (f"a quarter of each class's images, at most {cap} (data.holdout_policy=proportional; {len(held)} in "
                f"all, seed {seed})")
        caveat = f" (per class: {taken(sizes, classnames)}"
        if (sizes == 0).any():
            caveat += (f"; a class that gave no {what} image is trained but " +
                       ("not measured: left out of the balanced and group means" if what == "test" else
                        "not in the validation score"))
        caveat += ")"
    else:
        rest, held, rec = split_off(dataset, num, int(sizes[0]), seed, what)
        said, caveat = f"{int(sizes[0])} images per class ({len(held)} in all, seed {seed})", ""
    return rest, held, rec, said, caveat


def with_val(data, cfg):
    """Apply ``data.val`` to a built dataset (an ``LTData``).

    auto keeps what the source made (its own val split; own data: a held-out slice of the
    training images); split requires the dataset's own val split; holdout carves a
    slice out of the training images (``data.holdout_policy``); none drops validation.
    """
    if cfg.val == "none":
        return replace(data, val=None, val_source=None, record={k: v for k, v in data.record.items() if k != "val"})
    if cfg.val == "split" and data.val_source != VAL_SPLIT:
        raise DataError(f"data.val=split but {cfg.name} has no val split of its own; use data.val=holdout "
                        "(a held-out slice of the training images) or data.val=none.")
    if cfg.val != "holdout" or data.val_source == HELD_OUT_VAL:
        return data
    made = hold_out(data.train, data.classnames, cfg, "val")
    if made is None:
        counts = counts_of(data.train, data.num_classes)
        raise HoldoutError("data.val=holdout: " + refusal(counts, data.classnames, cfg.name, "val", cfg),
                           described=data)
    train, val, rec, said, caveat = made
    note = (f"validation: {said} held out of the training images{caveat}; training uses the other {len(train)}, so a "
            "benchmark no longer trains on its whole published list. Many/medium/few groups keep the dataset's "
            "own class counts.")
    return replace(data, train=train, val=val, val_source=HELD_OUT_VAL, notes=[*data.notes, note],
                   record={**data.record, "val": rec})
