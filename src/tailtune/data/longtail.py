"""Long-tail arithmetic: exponential class profiles, subsampling, shot groups."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The benchmark's shot groups: many > 100 training images, medium 20..100, few < 20.
MANY_MIN = 100
FEW_MAX = 20
GROUPS = ("many", "medium", "few")
THIRDS = ("head", "middle", "tail")


def exp_profile(n_max: int, num_classes: int, imb_ratio: float) -> list[int]:
    """Per-class counts n_i = int(n_max * (1/imb_ratio)^(i / (C-1))), the CIFAR-LT protocol."""
    if num_classes == 1:
        return [int(n_max)]
    return [int(n_max * (1.0 / imb_ratio) ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def subsample(targets: Sequence[int], counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices keeping ``counts[c]`` images of each class c, the benchmark's way.

    One legacy ``RandomState(seed)`` serves all classes in class order: the indices of
    class c (in original order) are shuffled with it and the first ``counts[c]`` kept.
    This reproduces the standard CIFAR-100-LT lists without touching NumPy's global RNG.
    """
    targets = np.asarray(targets)
    rng = np.random.RandomState(seed)
    keep = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        if n > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, cannot keep {n}")
        rng.shuffle(idx)
        keep.append(idx[:n])
    return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def class_counts(targets: Sequence[int], num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes)


def shot_groups(counts: Sequence[int]) -> np.ndarray:
    """Group index per class: 0 many (>100), 1 medium (20..100), 2 few (<20)."""
    counts = np.asarray(counts)
    return np.where(counts > MANY_MIN, 0, np.where(counts < FEW_MAX, 2, 1))


def third_groups(counts: Sequence[int]) -> np.ndarray:
    """Group index per class by count rank: head, middle, tail thirds.

    With C classes sorted by count (ties by class index), the first floor(C/3) are the
    head, the last floor(C/3) the tail and the rest the middle (10 classes: 3 / 4 / 3).
    """
    counts = np.asarray(counts)
    order = np.lexsort((np.arange(len(counts)), -counts))
    k = len(counts) // 3
    groups = np.ones(len(counts), dtype=np.int64)
    groups[order[:k]] = 0
    groups[order[len(counts) - k:]] = 2
    return groups


def count_order(counts: Sequence[int]) -> np.ndarray:
    """Class indices by training count, most first; ties by class index."""
    counts = np.asarray(counts)
    return np.lexsort((np.arange(len(counts)), -counts))


def class_groups(data: dict) -> np.ndarray:
    """Group index of each class: saved by newer runs; else rebuilt from the group sizes,
    which cover the classes in count order (most first), as the groups are defined."""
    if "groups" in data:
        return np.asarray(data["groups"], dtype=np.int64)
    order = count_order(data["train_counts"])
    groups = np.zeros(len(order), dtype=np.int64)
    start = 0
    for g, k in enumerate(data["classes_per_group"]):
        groups[order[start:start + k]] = g
        start += k
    return groups
