"""``data.decode=gpu``: training images decoded from their JPEG bytes on the device, in batches.

The loader's workers read each file's bytes and its header (size, mode) and draw the training
view's random crop and flip exactly as the CPU path does (the same calls on the same per-item
seed: :class:`PlannedView` stands in for ``StandardAugment`` under ``SeededTransformed``), so the
crops are the same for the same seed. The device then decodes the whole batch with
``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on CUDA) and crops, resizes, flips and
normalises there. With ``device=cpu`` the same code decodes with libjpeg on the CPU (the
fallback; the run's log says so). ``decode_jpeg`` and PIL use different IDCTs, so pixels differ
by a few levels (tests/data/test_gpu_decode.py states the tolerance).

Only baseline/progressive 3-channel (YCbCr) JPEGs qualify; any other file (PNG, grayscale,
CMYK, ...) is refused naming it, with the way out: ``data.decode=cpu``.
"""

from __future__ import annotations

import torch
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF2

from tailtune.data.base import FileDataset, Subset
from tailtune.data.images import ImageFileError, open_file
from tailtune.data.transforms import RRC_MIN_AREA, Preprocess
from tailtune.errors import ConfigError

FIX = "use data.decode=cpu (PIL decodes every kind of image)"


class EncodedImage:
    """A file's bytes and its (width, height) from the header."""

    def __init__(self, path: str, data: torch.Tensor, size: tuple[int, int]):
        self.path, self.data, self.size = path, data, size

    def shape_only(self) -> torch.Tensor:
        """A (3, H, W) tensor of the image's shape holding no pixels (one element, expanded): what
        the crop's draws read (``get_dimensions``)."""
        w, h = self.size
        return torch.zeros((), dtype=torch.uint8).expand(3, h, w)


class JpegFiles(torch.utils.data.Dataset):
    """The files of a :class:`FileDataset` as :class:`EncodedImage` (bytes, size); non-RGB-JPEGs refused."""

    def __init__(self, base: FileDataset):
        self.paths, self.targets = base.paths, base.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        path = self.paths[i]
        with open_file(path) as img:
            fmt, mode, size = img.format, img.mode, img.size
        if fmt != "JPEG" or mode != "RGB":
            kind = f"a {fmt or 'non-JPEG'} file" if fmt != "JPEG" else f"a {mode} JPEG (not 3-channel YCbCr)"
            raise ImageFileError(path, f"is {kind}, which data.decode=gpu does not decode", FIX, "mode")
        return EncodedImage(path, read_file(path), size), self.targets[i]


class PlannedView:
    """The ``standard`` training view's random draws, without the pixels: ``(bytes, (i, j, h, w, flip))``.

    The same calls as ``StandardAugment`` (RandomResizedCrop.get_params, then RandomHorizontalFlip's
    ``torch.rand(1) < 0.5``), so under the same seed they draw the same crop and flip.
    """

    scale = (RRC_MIN_AREA, 1.0)
    ratio = (3.0 / 4.0, 4.0 / 3.0)

    def set_epoch(self, epoch: int) -> None:
        """The standard view is the same every epoch."""

    def __call__(self, img: EncodedImage):
        i, j, h, w = T.RandomResizedCrop.get_params(img.shape_only(), self.scale, self.ratio)
        flip = bool(torch.rand(1) < 0.5)
        return img.data, torch.tensor([i, j, h, w, int(flip)])


def collate(batch):
    """Bytes stay a list (each file has its own length); crop plans and labels are stacked."""
    data = [item[0][0] for item in batch]
    plans = torch.stack([item[0][1] for item in batch])
    labels = torch.tensor([item[1] for item in batch])
    return (data, plans), labels


class DeviceViews:
    """Decode a batch of JPEG bytes on ``device`` and apply the planned views: the model's input.

    ``collate`` is the loader's collate function for the items of :class:`PlannedView`.
    """

    collate = staticmethod(collate)

    def __init__(self, p: Preprocess):
        self.p = p
        self.mean = torch.tensor(p.mean).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(p.std).view(1, 3, 1, 1) * 255.0

    def __call__(self, batch, device: torch.device, channels_last: bool = False) -> torch.Tensor:
        data, plans = batch
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        size, out = [self.p.resolution, self.p.resolution], []
        for img, (i, j, h, w, flip) in zip(images, plans.tolist()):
            view = TF2.resized_crop(img, i, j, h, w, size, interpolation=self.p.mode, antialias=True)
            out.append(view.flip(-1) if flip else view)
        x = torch.stack(out).float()
        x = x.sub_(self.mean.to(device)).div_(self.std.to(device))
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def encoded(ds):
    """``ds`` (a FileDataset, or a Subset of one) reading bytes instead of pixels; anything else refused."""
    if isinstance(ds, Subset):
        return Subset(encoded(ds.base), ds.indices)
    if isinstance(ds, FileDataset):
        return JpegFiles(ds)
    raise ConfigError(f"data.decode=gpu decodes JPEG files, but this training set is {type(ds).__name__} "
                      "(decoded arrays, an image store or a synthetic source: nothing to decode); "
                      "use data.decode=cpu.")


def check_decode(decode: str, augment: str) -> None:
    """Refuse ``data.decode=gpu`` with a training view it does not apply (data.store: the config refuses it)."""
    if decode == "gpu" and augment != "standard":
        raise ConfigError(f"data.decode=gpu applies the standard training view only, not "
                          f"train.augment={augment}; use data.decode=cpu or train.augment=standard.")
