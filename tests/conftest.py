"""Shared fixtures: tiny models and synthetic data so every test runs in seconds on CPU."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from tailtune.config import load_config
from tailtune.runtime.hardware import cpu_bf16_native

SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "splits"

TINY_CLIP = [
    "model.provider=open_clip", "model.name=TT-Tiny-ViT", "model.pretrained=none",
    "data.name=synthetic", "data.synthetic.num_classes=6", "data.synthetic.train_per_class=24", "data.synthetic.test_per_class=4",
    "data.imb_ratio=8", "data.synthetic.image_size=32", "data.num_workers=0",
    "train.epochs=1", "train.batch_size=16", "train.log_every=1", "eval.batch_size=32",
    "quiet=true",
]

# train.precision=auto (the default) trains ViTs in bf16 on CPUs with native bf16 (AMX / AVX-512
# BF16) and in fp32 elsewhere, so a test that compares the numbers of two runs (resume, torchrun,
# cache vs direct) sets the precision it compares: train.precision=fp32 unless it is about bf16.
needs_native_bf16 = pytest.mark.skipif(
    not cpu_bf16_native(), reason="this CPU has no native bf16 (AMX / AVX-512 BF16): auto picks fp32 here "
                                  "and bf16 is emulated (slow)")


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return [*TINY_CLIP, f"output_dir={tmp_path / 'runs'}"]


def real_data(overrides: list[str]) -> list[str]:
    """``overrides`` without the synthetic source's options, for a test that swaps in a source reading
    files (options of a source that is not chosen are refused: the run would ignore them)."""
    return [o for o in overrides if not o.startswith("data.synthetic.")]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    return load_config("lift", overrides=tiny_overrides)


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    """Write a uint8 IDX file (the MNIST format), optionally gzipped."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder, per_class: int = 70, test_per_class: int = 3) -> None:
    """The four Fashion-MNIST IDX files with random 28x28 images, balanced classes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ytr = np.repeat(np.arange(10), per_class)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 255, (len(ytr), 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte", ytr)
    yte = np.repeat(np.arange(10), test_per_class)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 255, (len(yte), 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", yte)
