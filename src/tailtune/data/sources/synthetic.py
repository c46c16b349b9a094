"""Generated long-tailed images (tests, smoke runs): no files needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from tailtune.config import DataConfig, _check_positive, options_of, setting
from tailtune.data.base import ArrayDataset
from tailtune.data.longtail import GROUPS, exp_profile, shot_groups
from tailtune.data.sources.base import SOURCES, LTData, reads


@dataclass
class SyntheticOptions:
    """synthetic: the generated images."""

    MOVED: ClassVar[dict[str, str]] = {k: k for k in ("num_classes", "train_per_class", "test_per_class", "image_size")}

    num_classes: Optional[int] = setting(None, "synthetic source: classes (null: 4)")  # noqa: UP045  (OmegaConf reads it)
    train_per_class: int = setting(40, "synthetic source: images of the head class")
    test_per_class: int = setting(10, "synthetic source: test images per class")
    image_size: int = setting(32, "synthetic source: side of the generated images")

    def __post_init__(self) -> None:
        for key in ("num_classes", "train_per_class", "test_per_class", "image_size"):
            _check_positive("data.synthetic", key, getattr(self, key))


@SOURCES.register("synthetic", options=SyntheticOptions)
@reads()
def synthetic(cfg: DataConfig) -> LTData:
    """Generated images whose colour and stripe pattern depend on the class (tests, smoke runs)."""
    opts = options_of(cfg, "synthetic", SyntheticOptions)
    c = opts.num_classes or 4
    counts = exp_profile(opts.train_per_class, c, cfg.imb_ratio)
    counts = [max(1, n) for n in counts]
    rng = np.random.default_rng(cfg.subset_seed)

    def make(n_per_class: list[int]):
        images, labels = [], []
        s = opts.image_size
        yy, xx = np.mgrid[0:s, 0:s]
        for k, n in enumerate(n_per_class):
            hue = np.array([(k * 97) % 256, (k * 57 + 80) % 256, (k * 31 + 160) % 256], dtype=np.float32)
            stripes = ((xx * (k % 3 + 1) + yy * (k // 3 % 3)) // 4 % 2)[..., None] * 60.0
            for _ in range(n):
                noise = rng.normal(0, 20, (s, s, 3))
                images.append(np.clip(hue * 0.7 + stripes + noise, 0, 255).astype(np.uint8))
                labels.append(k)
        return np.stack(images), labels

    xtr, ytr = make(counts)
    xte, yte = make([opts.test_per_class] * c)
    names = [f"class {k}" for k in range(c)]
    return LTData(ArrayDataset(xtr, ytr), ArrayDataset(xte, yte), names, shot_groups(counts), GROUPS, [])
