"""Class predictions for images: ``tailtune.load(path).predict(images)``.

``path`` is a finished run folder (rebuilt from its config and checkpoint; the pretrained
weights must be available as for training) or an export folder (``tailtune export``: no
run folder, training data or pretrained weights needed). Images go through the same
preprocessing and test-time ensemble as evaluation, so a test image gets the class the
run's evaluation gave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from tailtune.data.base import IMAGE_SUFFIXES
from tailtune.data.images import open_image, to_rgb
from tailtune.data.transforms import eval_transform
from tailtune.errors import ConfigError, DataError
from tailtune.experiment import tte_options
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


class _Images(torch.utils.data.Dataset):
    """Paths or PIL images, opened lazily, through the evaluation view."""

    def __init__(self, items: list, view):
        self.items = items
        self.view = view

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.view(_open(self.items[i])), 0


@dataclass
class Prediction:
    """The top-k classes of one image, most probable first."""

    source: str  # the file, or "image N" for an in-memory image
    classes: list[int]
    names: list[str]
    probs: list[float]

    def as_dict(self) -> dict:
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

    def logits(self, images, tte: str | None = None, batch_size: int | None = None,
               quiet: bool = True) -> torch.Tensor:
        """(N, C) logits, averaged over the test-time-ensemble views as in evaluation."""
        items = _items(images)
        if not items:
            raise DataError("no images to predict.")
        view = eval_transform(self.exp.backbone.preprocess, tte or self.tte, tte_options(self.exp.cfg))
        loader = make_loader(_Images(items, view), batch_size or self.exp.cfg.eval.batch_size, False,
                             self.exp.workers, self.exp.device)
        logits, _ = predict_logits(self.model, loader, self.exp.device, self.exp.eval_dtype, quiet,
                                   f"predict ({tte or self.tte})", self.exp.channels_last)
        return logits

    def predict(self, images, top_k: int = 5, tte: str | None = None, batch_size: int | None = None,
                quiet: bool = True) -> list[Prediction]:
        """Top-k class names and probabilities (softmax of the logits) for each image.

        ``images``: a path, a folder, a PIL image, or a list of them. ``tte``: a test-time
        ensemble (`tailtune list tte`), default the run's.
        """
        if top_k < 1:
            raise ConfigError(f"top_k={top_k} must be >= 1.")
        items = _items(images)
        probs = self.logits(items, tte, batch_size, quiet).softmax(-1)
        top = probs.topk(min(top_k, len(self.classnames)), dim=-1)
        out = []
        for i, (p, c) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            src = str(items[i]) if isinstance(items[i], (str, Path)) else f"image {i}"
            out.append(Prediction(src, c, [self.classnames[k] for k in c], p))
        return out


def _items(images) -> list:
    """A flat list of image paths, PIL images and (3, H, W) uint8 tensors; folders are expanded."""
    if isinstance(images, (str, Path, Image.Image)) or (torch.is_tensor(images) and images.dim() == 3):
        images = [images]
    items = []
    for x in images:
        items += [x] if isinstance(x, Image.Image) or torch.is_tensor(x) else image_files([x])
    return items


def _load_run(run_dir: Path, device: str):
    metrics = read_metrics(run_dir)
    cfg = read_config(run_dir)
    cfg.train.device = device
    names = metrics["data"]["classnames"]
    exp = build_without_data(cfg, names, metrics["data"].get("groups"))
    load_checkpoint(run_dir / CHECKPOINT, exp.model, exp.backbone.info, names,
                    f"run {run_dir} ({METRICS}, dataset {metrics.get('dataset')})")
    return exp, names


def load(path: str | Path, device: str = "auto") -> Predictor:
    """A :class:`Predictor` from a finished run folder or an export folder.

    ``device``: auto (CUDA when available), cpu, cuda or cuda:N.
    """
    path = Path(path)
    if is_export(path):
        exp, meta = load_export(path, device)
        return Predictor(exp, meta["classnames"], str(path))
    if (path / CONFIG).is_file():
        exp, names = _load_run(path, device)
        return Predictor(exp, names, str(path))
    raise ConfigError(f"{path} is neither a run folder ({CONFIG}, {CHECKPOINT}, {METRICS}) "
                      f"nor an export folder ({EXPORT_CONFIG}, {EXPORT_WEIGHTS}).")
