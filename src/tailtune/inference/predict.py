"""Class predictions for images: ``tailtune.load(path).predict(images)``.

``path`` is a finished run folder (rebuilt from its config and checkpoint; the pretrained
weights must be available as for training) or an export folder (``tailtune export``: no
run folder, training data or pretrained weights needed). Images go through the same
preprocessing and test-time ensemble as evaluation, so a test image gets the class the
run's evaluation gave it.

Unreadable files: :meth:`Predictor.predict` names every one (the count and the first ten) and,
with ``skip_unreadable=True`` (what ``tailtune predict`` does), predicts the others and marks
the unreadable ones with their error instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from tailtune.data.base import IMAGE_SUFFIXES
from tailtune.data.images import ImageFileError, open_image, to_rgb
from tailtune.data.transforms import eval_transform
from tailtune.errors import ConfigError, DataError
from tailtune.experiment import inference_config, tte_options
from tailtune.inference.export import (
    EXPORT_CONFIG,
    EXPORT_WEIGHTS,
    build_without_data,
    is_export,
    load_export,
)
from tailtune.runtime.checkpoint import load_checkpoint
from tailtune.runtime.loader import make_loader, predict_logits
from tailtune.runtime.rundir import CHECKPOINT, CONFIG, METRICS, read_config, read_metrics


def image_files(paths) -> list[Path]:
    """Image files named by ``paths``: files as given, folders searched recursively (sorted)."""
    files: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {p} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p} is neither an image file nor a folder.")
    return files


def _open(item):
    if torch.is_tensor(item):  # a (3, H, W) uint8 image, as the array sources and the image store give
        return item
    if isinstance(item, Image.Image):
        return to_rgb(item, "(an in-memory image)")
    return open_image(item)  # the same pixels as training and evaluation read (data/images.py)


SHOWN_BAD = 10  # unreadable files named in a message; the rest are counted


class _Images(torch.utils.data.Dataset):
    """Paths or PIL images, opened lazily, through the evaluation view. An item that cannot be
    read yields a black image of the same shape and the label 1 (0 for the others), so that one
    bad file does not stop the others; :func:`_unreadable` then says why."""

    def __init__(self, items: list, view, resolution: int):
        self.items = items
        self.view = view
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return self.view(_open(self.items[i])), 0
        except DataError:
            return self.view(Image.new("RGB", (self.resolution, self.resolution))), 1


def _name(items: list, i: int) -> str:
    return str(items[i]) if isinstance(items[i], (str, Path)) else f"image {i}"


def _unreadable(items: list, view, bad: list[int]) -> dict[int, str]:
    """Why each of the items ``bad`` cannot be read (the error of opening it again)."""
    reasons = {}
    for i in bad:
        try:
            view(_open(items[i]))
            reasons[i] = f"{_name(items, i)} could not be read"  # failed in the loader only
        except ImageFileError as e:  # its own fix is said once, for all of them
            reasons[i] = f"{e.path} {e.problem}"
        except DataError as e:
            reasons[i] = str(e).rstrip(".")
    return reasons


def unreadable_message(reasons: list[str], total: int) -> str:
    """``N of M images cannot be read: <the first ten reasons>; and K more``."""
    shown = "; ".join(reasons[:SHOWN_BAD])
    more = f"; and {len(reasons) - SHOWN_BAD} more" if len(reasons) > SHOWN_BAD else ""
    return f"{len(reasons)} of {total} images cannot be read: {shown}{more}."


@dataclass
class Prediction:
    """The top-k classes of one image, most probable first."""

    source: str  # the file, or "image N" for an in-memory image
    classes: list[int]
    names: list[str]
    probs: list[float]
    error: str | None = None  # why the image could not be read (then no classes); skip_unreadable only

    def as_dict(self) -> dict:
        if self.error is not None:
            return {"image": self.source, "error": self.error}
        return {"image": self.source, "top": [{"class": c, "name": n, "prob": p}
                                              for c, n, p in zip(self.classes, self.names, self.probs)]}


class Predictor:
    """A trained model ready to classify images; see :func:`load`."""

    def __init__(self, exp, classnames: list[str], source: str):
        self.exp = exp
        self.model = exp.model.eval()
        self.classnames = list(classnames)
        self.source = source

    @property
    def tte(self) -> str:
        """The run's test-time ensemble (the default of :meth:`predict`)."""
        return self.exp.cfg.eval.tte

    def _logits(self, items: list, tte: str | None, batch_size: int | None,
                quiet: bool) -> tuple[torch.Tensor, dict[int, str]]:
        """(N, C) logits and {index: why} of the items that cannot be read (their rows are void)."""
        if not items:
            raise DataError("no images to predict.")
        view = eval_transform(self.exp.backbone.preprocess, tte or self.tte, tte_options(self.exp.cfg))
        loader = make_loader(_Images(items, view, self.exp.backbone.preprocess.resolution),
                             batch_size or self.exp.cfg.eval.batch_size, False, self.exp.workers, self.exp.device)
        logits, bad = predict_logits(self.model, loader, self.exp.device, self.exp.eval_dtype, quiet,
                                     f"predict ({tte or self.tte})", self.exp.channels_last)
        return logits, _unreadable(items, view, bad.nonzero().flatten().tolist())

    def logits(self, images, tte: str | None = None, batch_size: int | None = None,
               quiet: bool = True) -> torch.Tensor:
        """(N, C) logits, averaged over the test-time-ensemble views as in evaluation. A file
        that cannot be read is an error naming every such file (the count and the first ten)."""
        items = _items(images)
        logits, bad = self._logits(items, tte, batch_size, quiet)
        if bad:
            if len(items) == 1:
                raise DataError(f"image file {bad[0]}; replace it, or check the path.")
            way = "" if len(bad) == len(items) else " (or pass skip_unreadable=True to predict the others)"
            raise DataError(f"{unreadable_message(list(bad.values()), len(items))} Replace or remove them{way}.")
        return logits

    def predict(self, images, top_k: int = 5, tte: str | None = None, batch_size: int | None = None,
                quiet: bool = True, skip_unreadable: bool = False) -> list[Prediction]:
        """Top-k class names and probabilities (softmax of the logits) for each image.

        ``images``: a path, a folder, a PIL image, or a list of them. ``tte``: a test-time
        ensemble (`tailtune list tte`), default the run's. Files that cannot be read: an error
        naming them all (the count and the first ten); with ``skip_unreadable`` the others are
        predicted and each unreadable one gets a :class:`Prediction` with its ``error`` and no
        classes (still an error when no image at all can be read).
        """
        if top_k < 1:
            raise ConfigError(f"top_k={top_k} must be >= 1.")
        items = _items(images)
        logits, bad = self._logits(items, tte, batch_size, quiet)
        if bad and (not skip_unreadable or len(bad) == len(items)):
            if len(items) == 1:
                raise DataError(f"image file {bad[0]}; replace it, or check the path.")
            way = "" if len(bad) == len(items) else " (or pass skip_unreadable=True to predict the others)"
            raise DataError(f"{unreadable_message(list(bad.values()), len(items))} Replace or remove them{way}.")
        top = logits.softmax(-1).topk(min(top_k, len(self.classnames)), dim=-1)
        out = []
        for i, (p, c) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            if i in bad:
                out.append(Prediction(_name(items, i), [], [], [], error=bad[i]))
            else:
                out.append(Prediction(_name(items, i), c, [self.classnames[k] for k in c], p))
        return out


def _items(images) -> list:
    """A flat list of image paths, PIL images and (3, H, W) uint8 tensors; folders are expanded."""
    if isinstance(images, (str, Path, Image.Image)) or (torch.is_tensor(images) and images.dim() == 3):
        images = [images]
    items = []
    for x in images:
        items += [x] if isinstance(x, Image.Image) or torch.is_tensor(x) else image_files([x])
    return items


def _load_run(run_dir: Path, device: str, precision: str | None):
    metrics = read_metrics(run_dir)
    cfg = inference_config(read_config(run_dir), device, precision, f"run {run_dir}")
    names = metrics["data"]["classnames"]
    exp = build_without_data(cfg, names, metrics["data"].get("groups"))
    load_checkpoint(run_dir / CHECKPOINT, exp.model, exp.backbone.info, names,
                    f"run {run_dir} ({METRICS}, dataset {metrics.get('dataset')})")
    return exp, names


def load(path: str | Path, device: str = "auto", precision: str | None = None) -> Predictor:
    """A :class:`Predictor` from a finished run folder or an export folder.

    ``device``: auto (CUDA when available), cpu, cuda or cuda:N. ``precision``: an
    ``eval.precision`` value (fp32, bf16, fp16, auto, train) in place of the run's own.
    """
    path = Path(path)
    if is_export(path):
        exp, meta = load_export(path, device, precision)
        return Predictor(exp, meta["classnames"], str(path))
    if (path / CONFIG).is_file():
        exp, names = _load_run(path, device, precision)
        return Predictor(exp, names, str(path))
    raise ConfigError(f"{path} is neither a run folder ({CONFIG}, {CHECKPOINT}, {METRICS}) "
                      f"nor an export folder ({EXPORT_CONFIG}, {EXPORT_WEIGHTS}).")
