"""Train, test and test-time-ensemble views, tied to the backbone's preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


@dataclass(frozen=True)
class Preprocess:
    """What the backbone expects: input size, normalisation and resize interpolation."""

    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @property
    def mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)


def _finish(p: Preprocess) -> list:
    return [T.ToTensor(), T.Normalize(p.mean, p.std)]


def train_transform(p: Preprocess) -> T.Compose:
    """RandomResizedCrop at the backbone's resolution + horizontal flip."""
    return T.Compose([T.RandomResizedCrop(p.resolution, interpolation=p.mode),
                      T.RandomHorizontalFlip(), *_finish(p)])


def test_transform(p: Preprocess) -> T.Compose:
    """Resize the short side to resolution * 8/7 (256 for 224), then center crop."""
    return T.Compose([T.Resize(int(p.resolution * 8 / 7), interpolation=p.mode),
                      T.CenterCrop(p.resolution), *_finish(p)])


class FiveCropStack:
    """Resize the short side to resolution + expand; the 4 corner crops and the center crop.

    Returns a (5, 3, res, res) tensor; the evaluator averages the logits over the 5 views.
    """

    def __init__(self, p: Preprocess, expand: int = 24):
        self.resize = T.Resize(p.resolution + expand, interpolation=p.mode)
        self.crop = T.FiveCrop(p.resolution)
        self.finish = T.Compose(_finish(p))

    def __call__(self, img) -> torch.Tensor:
        return torch.stack([self.finish(c) for c in self.crop(self.resize(img))])


def eval_transform(p: Preprocess, tte: str = "none", expand: int = 24):
    """The evaluation view for a test-time-ensemble mode ('none' or 'fivecrop')."""
    if tte == "fivecrop":
        return FiveCropStack(p, expand)
    return test_transform(p)


def views_per_image(tte: str) -> int:
    return {"none": 1, "fivecrop": 5}[tte]
