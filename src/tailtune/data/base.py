"""Indexable datasets yielding ``(PIL.Image RGB, label)``; transforms are applied later.

(Array-backed sources and the image store, data/store.py, yield (3, H, W) uint8 tensors instead;
every transform takes both.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tailtune.data.images import ImageFileError, open_image
from tailtune.errors import DataError

# The file extensions read as images, by the folder source and by ``predict`` alike (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ArrayDataset(torch.utils.data.Dataset):
    """Images held in a uint8 array (N, H, W) or (N, H, W, 3), yielded as (3, H, W) uint8 tensors
    (views: a grayscale image is its one channel three times), which the transforms take without PIL."""

    def __init__(self, images: np.ndarray, targets: Sequence[int]):
        if len(images) != len(targets):
            raise DataError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.array(self.images[i], dtype=np.uint8))  # a copy: the array may be read-only
        img = img.unsqueeze(0).expand(3, -1, -1) if img.dim() == 2 else img.permute(2, 0, 1)
        return img, self.targets[i]


class FileDataset(torch.utils.data.Dataset):
    """Images read from files as RGB (data/images.py: the rules for every PIL mode); a file that
    does not decode is a clear error naming it."""

    def __init__(self, paths: Sequence[str | Path], targets: Sequence[int]):
        if len(paths) != len(targets):
            raise DataError(f"{len(paths)} image paths but {len(targets)} labels")
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        try:
            return open_image(self.paths[i]), self.targets[i]
        except ImageFileError as e:
            # Met while training or evaluating (the start-up check was off, or a store was used):
            # one file at a time here, so the way to see them all is said.
            raise ImageFileError(e.path, f"{e.problem} (sample {i})",
                                 f"{e.fix}; `tailtune data check` with the run's data settings names every "
                                 "such file, and data.skip_corrupt=true leaves them out", e.kind) from None


class Subset(torch.utils.data.Dataset):
    """A view of some indices of a dataset with ``targets``."""

    def __init__(self, base, indices: Sequence[int]):
        self.base = base
        self.indices = [int(i) for i in indices]
        self.targets = [base.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


class Transformed(torch.utils.data.Dataset):
    """Applies ``transform`` to the image of each ``(image, label)`` item."""

    def __init__(self, base, transform: Callable):
        self.base = base
        self.transform = transform
        self.targets = base.targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, y = self.base[i]
        return self.transform(img), y


class SeededTransformed(Transformed):
    """Random augmentation that is a pure function of (seed, epoch, sample index).

    Each item's transform runs under its own torch seed (the global stream is saved and
    restored around it), so the views of an epoch do not depend on the number of loader
    workers, on the rank in distributed training, or on where a resumed run restarts.
    """

    def __init__(self, base, transform: Callable, seed: int = 0):
        super().__init__(base, transform)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)

    def __getitem__(self, i: int):
        img, y = self.base[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
            return self.transform(img), y
