"""One training DataLoader for the whole run: the epoch travels in the sampler's keys, so
persistent workers see each epoch's seeded order and augmentation."""

from __future__ import annotations

import torch


class EpochKeyed(torch.utils.data.Dataset):
    """A training set indexed by ``(epoch, index)`` keys.

    Each copy (one per loader worker) moves its dataset to the key's epoch (``set_epoch``:
    seeded augmentation, the augmentation's curriculum, a feature cache's view) before
    reading. So one DataLoader, with persistent workers, serves every epoch: the epoch
    travels with the indices the main process hands out.
    """

    def __init__(self, base):
        self.base, self.targets, self.epoch = base, base.targets, None

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        epoch, i = key
        if epoch != self.epoch and hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
        self.epoch = epoch
        return self.base[i]


class EpochKeys(torch.utils.data.Sampler):
    """The ``(epoch, index)`` keys of the images left in the current epoch; refilled each epoch."""

    def __init__(self):
        self.keys: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self):
        return iter(self.keys)
