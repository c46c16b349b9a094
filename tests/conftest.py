"""Shared fixtures: tiny models and synthetic data so every test runs in seconds on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailtune.config import load_config

SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "splits"

TINY_CLIP = [
    "model.provider=open_clip", "model.name=TT-Tiny-ViT", "model.pretrained=none",
    "data.name=synthetic", "data.num_classes=6", "data.train_per_class=24", "data.test_per_class=4",
    "data.imb_ratio=8", "data.image_size=32", "data.num_workers=0",
    "train.epochs=1", "train.batch_size=16", "train.log_every=1", "eval.batch_size=32",
    "quiet=true",
]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return [*TINY_CLIP, f"output_dir={tmp_path / 'runs'}"]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    return load_config("lift", overrides=tiny_overrides)
