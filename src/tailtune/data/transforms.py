"""Train, test and test-time-ensemble views, tied to the backbone's preprocessing.

Every view takes a PIL image or a (3, H, W) uint8 tensor (what the image store yields) and
returns a normalised float tensor. Tensors stay uint8 through the crops and resizes (for
bicubic and bilinear resampling the native uint8 kernels match PIL's to within 2 levels at
a third of its cost; other modes go through PIL) and are converted and normalised in one
step at the end.

Three registries: ``AUGMENTATIONS`` (training views; each has ``set_epoch`` so that the
trainer can drive a curriculum), ``TTE_MODES`` (evaluation views, the choices of ``eval.tte``;
each has ``views``, the forward passes per image, reported next to the accuracy) and
``INTERPOLATIONS`` (the resize filters, the choices of ``data.interpolation``).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as TF2

from tailtune.config import _check_choice, options_of, setting
from tailtune.data.images import to_rgb
from tailtune.errors import DataError
from tailtune.registry import Registry

AUGMENTATIONS: Registry = Registry("augmentation", section="train", chosen_by="train.augment")  # options: train.<name>.*
TTE_MODES: Registry = Registry("test-time ensemble", fills="eval.tte")

# fivecrop/tencrop resize to resolution + expand, a value per backbone as the reference sets it:
# 21 for CLIP ViT-L/14 at 224 and at 336 px (reference: configs/model/clip_vit_l14.yaml:24,
# clip_vit_l14@336px.yaml:24, zsclip_vit_l14*.yaml:16), 24 for every other backbone it has
# (clip_rn50.yaml:28, clip_rn101.yaml:28, clip_vit_b16.yaml:24, in21k_vit_b16*.yaml:24,
# in21k_vit_l16.yaml:24) and by default (utils/config.py:56).
DEFAULT_EXPAND = 24
VIT_L14_EXPAND = 21
# ViT-L/14 in open_clip's (ViT-L-14, ViT-L-14-336, ...), timm's (vit_large_patch14_clip_224...)
# and the reference's (CLIP-ViT-L/14@336px) spelling.
_VIT_L14 = re.compile(r"vit[-_]l[-_/]14(?![0-9])|vit[-_]large[-_]patch14(?![0-9])", re.IGNORECASE)
# data.interpolation: "auto" keeps the backbone's filter; the others name one of torchvision's InterpolationMode.
INTERPOLATIONS: Registry = Registry("interpolation", fills="data.interpolation")
INTERPOLATIONS.register("auto", help="the backbone's own (bicubic for CLIP)")(None)
INTERPOLATIONS.register("bicubic", help="CLIP's filter")(InterpolationMode.BICUBIC)
INTERPOLATIONS.register("bilinear", help="the reference's, torchvision's default")(InterpolationMode.BILINEAR)
INTERPOLATIONS.register("nearest", help="nearest neighbour (resampled through PIL)")(InterpolationMode.NEAREST)
INTERPOLATIONS.register("lanczos", help="Lanczos (resampled through PIL)")(InterpolationMode.LANCZOS)
RRC_MIN_AREA = 0.08  # RandomResizedCrop's default lower bound of the crop area


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


def with_interpolation(p: Preprocess, interpolation: str = "auto") -> Preprocess:
    """``p`` with every view's resize filter set by ``data.interpolation`` ("auto": the backbone's own)."""
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"data.interpolation={interpolation!r} is not valid; "
                        f"choose one of {', '.join(INTERPOLATIONS.in_order())}.")
    return p if interpolation == "auto" else replace(p, interpolation=interpolation)


def _is_uint8_tensor(img) -> bool:
    return torch.is_tensor(img) and img.dtype == torch.uint8


# Resampling the native uint8 kernels do as PIL does (nearest, box, hamming differ or are missing).
_NATIVE_UINT8 = (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)


def _pil_unless_native(img, mode: InterpolationMode):
    """``img`` itself, or as a PIL image where the uint8 kernels would not resample as PIL does."""
    if _is_uint8_tensor(img) and mode not in _NATIVE_UINT8:
        return TF.to_pil_image(img)
    return img


class ToInput:
    """The model's input: a float tensor normalised by ``mean`` / ``std`` (per channel, on [0, 1]).

    PIL images go through ToTensor + Normalize; uint8 tensors are converted and normalised
    in one fused step (a fifth of the time), into a contiguous (3, H, W) tensor.
    """

    def __init__(self, mean, std):
        self.mean, self.std = tuple(mean), tuple(std)
        self._shift = torch.tensor(self.mean).view(3, 1, 1) * 255.0
        self._scale = 1.0 / (torch.tensor(self.std).view(3, 1, 1) * 255.0)

    def __call__(self, img) -> torch.Tensor:
        if _is_uint8_tensor(img):
            if img.dim() != 3 or img.shape[0] != 3:
                raise DataError(f"image tensors must be (3, H, W) uint8 RGB, got shape {tuple(img.shape)}.")
            x = img.to(torch.float32, memory_format=torch.contiguous_format)
            return x.sub_(self._shift).mul_(self._scale)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)

    def __repr__(self) -> str:
        return f"ToInput(mean={self.mean}, std={self.std})"


class RandomResizedCrop(T.RandomResizedCrop):
    """torchvision's RandomResizedCrop (same draws), resizing uint8 tensors with the native uint8 kernel."""

    def forward(self, img):
        img = _pil_unless_native(img, self.interpolation)
        if not _is_uint8_tensor(img):
            return super().forward(img)
        i, j, h, w = self.get_params(img, self.scale, self.ratio)
        return TF2.resized_crop(img, i, j, h, w, list(self.size), interpolation=self.interpolation, antialias=True)


class Resize(T.Resize):
    """torchvision's Resize, resizing uint8 tensors with the native uint8 kernel."""

    def forward(self, img):
        img = _pil_unless_native(img, self.interpolation)
        if not _is_uint8_tensor(img):
            return super().forward(img)
        return TF2.resize(img, self.size, interpolation=self.interpolation, max_size=self.max_size, antialias=True)


def _finish(p: Preprocess) -> list:
    return [ToInput(p.mean, p.std)]


# ---------------------------------------------------------------- training views


@AUGMENTATIONS.register("standard", help="random-resized crop (area 0.08-1) + horizontal flip")
class StandardAugment:
    """RandomResizedCrop at the backbone's resolution + horizontal flip; the same every epoch."""

    def __init__(self, p: Preprocess, epochs: int = 1):
        self.transform = T.Compose([RandomResizedCrop(p.resolution, interpolation=p.mode),
                                    T.RandomHorizontalFlip(), *_finish(p)])

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes over epochs."""

    def __call__(self, img) -> torch.Tensor:
        return self.transform(img)


# MDA's schedules s(t) of the training progress t in [0, 1] (LIFT-plus utils/transforms.py,
# MinimalistRandomResizedCrop.get_min_scale; utils/config.py ``mda_func``, default "convex").
MDA_SCHEDULES: dict[str, Callable[[float], float]] = {
    "min": lambda t: 0.0,
    "convex": lambda t: 1.0 - math.sqrt(1.0 - t * t),
    "linear": lambda t: t,
    "concave": lambda t: math.sqrt(1.0 - (1.0 - t) ** 2),
    "max": lambda t: 1.0,
}


def training_progress(epoch: int, epochs: int) -> float:
    """t = epoch / (epochs - 1), clamped to [0, 1] (epochs past the last, ``train.extra_epochs``, keep
    t = 1). One epoch: t = 0, the schedule's start (LIFT+ divides by zero there)."""
    return min(max(epoch / (epochs - 1), 0.0), 1.0) if epochs > 1 else 0.0


def minimal_min_area(epoch: int, epochs: int, schedule: str = "convex") -> float:
    """Lower bound of the crop area (a fraction of the image's) at ``epoch`` (0-based) of ``epochs``.

    0.08 + s(t) * 0.92 with t = :func:`training_progress` and s one of :data:`MDA_SCHEDULES`
    (LIFT-plus utils/transforms.py: ``s * (scale[1] - scale[0]) + scale[0]``, scale (0.08, 1)).
    convex: 0.08 at the first epoch, rising slowly then fast to 1 (the whole image's largest
    square) at the last.
    """
    if schedule not in MDA_SCHEDULES:
        raise DataError(f"train.minimal.schedule={schedule!r} is not valid; choose one of "
                        f"{', '.join(MDA_SCHEDULES)}.")
    s = MDA_SCHEDULES[schedule](training_progress(epoch, epochs))
    return RRC_MIN_AREA + s * (1.0 - RRC_MIN_AREA)


def _image_size(img) -> tuple[int, int]:
    """(height, width) of a PIL image or a (..., H, W) tensor."""
    if torch.is_tensor(img):
        return int(img.shape[-2]), int(img.shape[-1])
    width, height = img.size
    return height, width


def minimal_crop_params(height: int, width: int, scale: tuple[float, float],
                        generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(top, left, side, side) of a minimalist square crop, LIFT+'s rule (LIFT-plus
    utils/transforms.py, MinimalistRandomResizedCrop.get_params):

    - both bounds of the area fraction are clamped to ``min(h, w)^2 / (h w)``, so the square fits;
    - the area is uniform in ``[h w lo, h w hi]`` and the side is ``round(sqrt(area))`` (Python's
      round), at least 1 pixel;
    - the top and the left are uniform over every offset where the square fits.

    Three draws from torch's generator (the global one by default, as torchvision's crops), in
    LIFT+'s order: the area, the top, the left; for the same seed the same crop as LIFT+'s.
    """
    area = height * width
    fit = min(height, width) ** 2 / area
    lo, hi = min(scale[0], fit), min(scale[1], fit)
    target = area * torch.empty(1).uniform_(lo, hi, generator=generator).item()
    side = max(1, int(round(math.sqrt(target))))
    top = int(torch.randint(0, height - side + 1, size=(1,), generator=generator).item())
    left = int(torch.randint(0, width - side + 1, size=(1,), generator=generator).item())
    return top, left, side, side


class MinimalistCrop(torch.nn.Module):
    """A square crop by :func:`minimal_crop_params`, resized to ``size`` (uint8 tensors with the
    native uint8 kernel, like :class:`RandomResizedCrop`). ``scale``: the area range, set by the epoch."""

    ratio = (1.0, 1.0)  # square, always

    def __init__(self, size: int, scale: tuple[float, float] = (RRC_MIN_AREA, 1.0),
                 interpolation: InterpolationMode = InterpolationMode.BICUBIC):
        super().__init__()
        self.size = [size, size]
        self.scale = tuple(scale)
        self.interpolation = interpolation

    def forward(self, img):
        img = _pil_unless_native(img, self.interpolation)
        i, j, h, w = minimal_crop_params(*_image_size(img), self.scale)
        if _is_uint8_tensor(img):
            return TF2.resized_crop(img, i, j, h, w, self.size, interpolation=self.interpolation, antialias=True)
        return TF.resized_crop(img, i, j, h, w, self.size, interpolation=self.interpolation, antialias=True)

    def __repr__(self) -> str:
        return f"MinimalistCrop(size={self.size[0]}, scale={self.scale}, interpolation={self.interpolation.value})"


@dataclass
class MinimalOptions:
    """minimal: the schedule of the minimum crop area over the epochs (LIFT+'s MDA)."""

    schedule: str = setting("convex", "train.augment=minimal: s(t) of the progress t = epoch / (epochs - 1), "
                            "min area 0.08 + 0.92 s: min (0) | convex (1 - sqrt(1 - t^2), LIFT+'s) | linear (t) | "
                            "concave (sqrt(1 - (1 - t)^2)) | max (1)", choices=tuple(MDA_SCHEDULES))

    def __post_init__(self) -> None:
        _check_choice("train.minimal", "schedule", self.schedule, tuple(MDA_SCHEDULES))


@AUGMENTATIONS.register("minimal", help="LIFT+'s minimalist augmentation (MDA): square crops at a uniform position, "
                                        "no flip, min area rising over the epochs (train.minimal.schedule)",
                        options=MinimalOptions)
class MinimalAugment:
    """The minimalist augmentation (MDA) of LIFT+: square crops without flips (:class:`MinimalistCrop`)
    whose minimum area rises over the epochs (:func:`minimal_min_area`, ``train.minimal.schedule``).

    The area bound lives in the transform: each copy of it (one per loader worker) is told
    the epoch with the images it reads (the trainer's keys carry it: ``engine.EpochKeyed``).
    """

    def __init__(self, p: Preprocess, epochs: int = 1, options: MinimalOptions | None = None):
        self.epochs = epochs
        self.schedule = (options or MinimalOptions()).schedule
        self.crop = MinimalistCrop(p.resolution, scale=(RRC_MIN_AREA, 1.0), interpolation=p.mode)
        self.finish = T.Compose(_finish(p))

    def set_epoch(self, epoch: int) -> None:
        self.crop.scale = (minimal_min_area(epoch, self.epochs, self.schedule), 1.0)

    def __call__(self, img) -> torch.Tensor:
        return self.finish(self.crop(img))


def augment_options(augment: str, train=None):
    """The options of augmentation ``augment`` in the train section ``train`` (its defaults when
    ``train`` is None or lacks them), or None for an augmentation without options."""
    cls = AUGMENTATIONS.options(augment)
    return None if cls is None else options_of(train, getattr(cls, "KEY", augment), cls)


def train_transform(p: Preprocess, augment: str = "standard", epochs: int = 1, train=None):
    """The training view of ``augment`` (`tailtune list augmentations`), set to epoch 0.

    ``train``: the run's train section, where an augmentation's options are (``train.minimal.*``).
    """
    cls = AUGMENTATIONS.get(augment)
    options = augment_options(augment, train)
    tf = cls(p, epochs) if options is None else cls(p, epochs, options)
    tf.set_epoch(0)
    return tf


def test_transform(p: Preprocess) -> T.Compose:
    """Resize the short side to resolution * 8/7 (256 for 224), then center crop."""
    return T.Compose([Resize(int(p.resolution * 8 / 7), interpolation=p.mode),
                      T.CenterCrop(p.resolution), *_finish(p)])


# ---------------------------------------------------------------- test-time ensembles


def default_expand(model_name: str) -> int:
    """The fivecrop/tencrop expand of a backbone (``model.name``): 21 for ViT-L/14 (at any
    resolution), 24 for every other model, as the reference's per-backbone configs set it."""
    return VIT_L14_EXPAND if _VIT_L14.search(model_name or "") else DEFAULT_EXPAND


@dataclass(frozen=True)
class TTEOptions:
    """Settings of the test-time ensembles (from the eval and train configs)."""

    expand: int | None = None  # None: DEFAULT_EXPAND; a run passes its backbone's (api.tte_options)
    randaug_views: int = 10
    augment: str = "standard"  # randaug: which training augmentation to draw
    epochs: int = 1  # randaug: the augmentation is taken at its last epoch
    seed: int = 0  # randaug: seed of the draws
    train: Any = None  # randaug: the run's train section (the augmentation's options, train.minimal.*)


@TTE_MODES.register("none", help="one center crop (resize to 8/7 of the resolution): 1 forward per image")
class SingleView:
    """The plain test view (3, res, res)."""

    views = 1

    def __init__(self, p: Preprocess, opts: TTEOptions = TTEOptions()):
        self.transform = test_transform(p)

    def __call__(self, img) -> torch.Tensor:
        return self.transform(img)


@TTE_MODES.register("fivecrop", help="4 corners + center of the image resized to res + expand: 5 forwards")
class FiveCropStack:
    """Resize the short side to resolution + expand; the 4 corner crops and the center crop.

    Returns a (5, 3, res, res) tensor; the evaluator averages the logits over the 5 views.
    """

    crop_cls = T.FiveCrop
    views = 5

    def __init__(self, p: Preprocess, opts: TTEOptions = TTEOptions()):
        expand = DEFAULT_EXPAND if opts.expand is None else opts.expand
        self.resize = Resize(p.resolution + expand, interpolation=p.mode)
        self.crop = self.crop_cls(p.resolution)
        self.finish = T.Compose(_finish(p))

    def __call__(self, img) -> torch.Tensor:
        return torch.stack([self.finish(c) for c in self.crop(self.resize(img))])


@TTE_MODES.register("tencrop", help="fivecrop plus the same crops of the flipped image: 10 forwards")
class TenCropStack(FiveCropStack):
    """Five crops of the image and five of its horizontal flip: (10, 3, res, res)."""

    crop_cls = T.TenCrop
    views = 10


def _pixels(img) -> tuple[bytes, tuple[int, int]]:
    """(RGB bytes row by row, (width, height)) of a PIL image or a (3, H, W) uint8 tensor: the same for both."""
    if torch.is_tensor(img):
        return img.permute(1, 2, 0).contiguous().numpy().tobytes(), (img.shape[2], img.shape[1])
    img = to_rgb(img)
    return img.tobytes(), img.size


@TTE_MODES.register("randaug", help="eval.randaug_views draws of the training augmentation: k forwards")
class RandAugViews:
    """``k`` draws of the training augmentation (at its final epoch), as a (k, 3, res, res) stack.

    The draws are seeded by (seed, the image's pixels): evaluating twice gives the same
    views whatever the loader order or worker count, so ``tailtune eval`` reproduces the
    run's metrics.
    """

    def __init__(self, p: Preprocess, opts: TTEOptions = TTEOptions()):
        self.augment = train_transform(p, opts.augment, opts.epochs, opts.train)
        self.augment.set_epoch(opts.epochs - 1)
        self.views = opts.randaug_views
        self.seed = opts.seed

    def __call__(self, img) -> torch.Tensor:
        pixels, size = _pixels(img)
        seed = zlib.crc32(pixels, zlib.crc32(repr((self.seed, size, "RGB")).encode()))
        # torchvision draws from the global torch RNG; fork it so training's stream is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([self.augment(img) for _ in range(self.views)])


def eval_transform(p: Preprocess, tte: str = "none", opts: TTEOptions | int | None = None):
    """The evaluation view for a test-time-ensemble mode (`tailtune list tte`).

    The result has ``.views``, the forward passes per image. ``opts`` may be an int, the
    fivecrop/tencrop expand (the original signature).
    """
    cls = TTE_MODES.get(tte)
    if not isinstance(opts, TTEOptions):
        opts = TTEOptions(expand=opts)
    return cls(p, opts)


def views_per_image(tte: str, randaug_views: int = TTEOptions.randaug_views) -> int:
    """Forward passes per image of a test-time-ensemble mode."""
    cls = TTE_MODES.get(tte)
    return randaug_views if cls is RandAugViews else cls.views


# ---------------------------------------------------------------- the policy, written out

PREPROCESSING_FORMAT = "tailtune-preprocessing-1"
_CROPS = {
    "none": ["center"],
    "fivecrop": ["top_left", "top_right", "bottom_left", "bottom_right", "center"],
    "tencrop": ["top_left", "top_right", "bottom_left", "bottom_right", "center"],
}


def view_policy(p: Preprocess, tte: str, opts: TTEOptions = TTEOptions()) -> dict:
    """The deterministic views of ``tte`` (none, fivecrop, tencrop) as data: what the view classes
    above do, for a reader without tailtune (an export's config.json)."""
    if tte == "none":
        resize = int(p.resolution * 8 / 7)
    elif tte in ("fivecrop", "tencrop"):
        resize = p.resolution + (DEFAULT_EXPAND if opts.expand is None else opts.expand)
    else:
        raise DataError(f"eval.tte={tte!r} has random views; only none, fivecrop and tencrop can be written out.")
    return {"resize_short_side": resize, "crop": p.resolution, "crops": list(_CROPS[tte]),
            "flipped_too": tte == "tencrop", "views": views_per_image(tte)}


def preprocessing_spec(p: Preprocess, tte: str, opts: TTEOptions = TTEOptions()) -> dict:
    """Every step from an image file to the model's input and from its outputs to probabilities,
    self-describing and versioned (``format``), for each deterministic test-time ensemble;
    ``default`` is the run's own ``eval.tte``. tests/inference checks that a few lines of PIL +
    NumPy following it give tailtune's predictions."""
    policies = {name: view_policy(p, name, opts) for name in _CROPS}
    return {
        "format": PREPROCESSING_FORMAT,
        "default": tte if tte in policies else "none",
        "run_tte": tte,
        "decode": "the file as 8-bit RGB (PIL: Image.open(path).convert('RGB'))",
        "interpolation": p.interpolation,
        "resize": "scale the short side to resize_short_side and the long side to "
                  "int(resize_short_side * long / short) (rounded down), keeping the orientation; "
                  "nothing is done when the image already has that size; the filter is `interpolation`, "
                  "antialiased (PIL: image.resize((width, height), Image.Resampling.<INTERPOLATION>))",
        "crop_positions": {
            "center": "top = int(round((H - crop) / 2)), left = int(round((W - crop) / 2)) "
                      "(Python's round: halves to even)",
            "top_left": "top = 0, left = 0", "top_right": "top = 0, left = W - crop",
            "bottom_left": "top = H - crop, left = 0", "bottom_right": "top = H - crop, left = W - crop",
        },
        "flipped_too": "if true, the same crops of the horizontally flipped resized image follow, in the same order",
        "to_input": "each crop: float32 pixel / 255 in [0, 1], then (x - mean) / std per channel; "
                    "channels in RGB order, layout NCHW (batch, 3, crop, crop)",
        "mean": list(p.mean), "std": list(p.std),
        "channel_order": "RGB", "layout": "NCHW", "value_range": [0.0, 1.0],
        "combine": "mean of the logits over the views of an image (not of the probabilities); "
                   "probabilities = softmax of that mean; class k is classnames[k]",
        "policies": policies,
        **({"note": f"eval.tte={tte} draws random views (tailtune's own generator): it cannot be written "
                    "out, so `default` is none"} if tte not in policies else {}),
    }
