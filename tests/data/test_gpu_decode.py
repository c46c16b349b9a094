"""data.decode=gpu, run on a CPU device (the fallback; the same code as on CUDA): the same crops as the
CPU path for the same seed, near-identical pixels, refusals naming the file or the setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import tailtune
from conftest import real_data
from tailtune.config import load_config
from tailtune.data.base import ArrayDataset, FileDataset, SeededTransformed, Subset
from tailtune.data.gpu_decode import (
    DeviceViews,
    JpegFiles,
    PlannedView,
    check_decode,
    collate,
    encoded,
)
from tailtune.data.images import ImageFileError
from tailtune.data.transforms import Preprocess, StandardAugment
from tailtune.errors import ConfigError

CPU = torch.device("cpu")
P = Preprocess(32, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
# decode_jpeg and PIL both decode with libjpeg(-turbo) on the CPU (nvJPEG on CUDA may differ by a few
# levels more); the uint8 tensor resize matches PIL's to within 2 levels (data/transforms.py). Measured
# here, 32 and 224 px views of 6-8 photos: mean 0.002 levels, max 1-2 levels (of 0-255).
MEAN_LEVELS, MAX_LEVELS = 0.1, 3.0


def _photo(path, size, seed):
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, (xx + 2 * yy) % 256], -1) + rng.normal(0, 4, (h, w, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=95)
    return path


@pytest.fixture
def jpegs(tmp_path):
    sizes = [(80, 60), (60, 90), (64, 64), (100, 40), (45, 70), (90, 90)]
    return FileDataset([_photo(tmp_path / f"{i}.jpg", s, i) for i, s in enumerate(sizes)], [0, 1, 0, 1, 0, 1])


def _boxes(monkeypatch):
    drawn = []
    real = T.RandomResizedCrop.get_params

    def spy(img, scale, ratio):
        drawn.append(real(img, scale, ratio))
        return drawn[-1]

    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(spy))
    return drawn


@pytest.mark.parametrize("epoch", [0, 3])
def test_same_crops_and_near_identical_pixels_as_the_cpu_path(monkeypatch, jpegs, epoch):
    drawn = _boxes(monkeypatch)
    cpu = SeededTransformed(jpegs, StandardAugment(P), seed=7)
    gpu = SeededTransformed(JpegFiles(jpegs), PlannedView(), seed=7)
    cpu.set_epoch(epoch)
    gpu.set_epoch(epoch)
    expected = torch.stack([cpu[i][0] for i in range(len(jpegs))])
    cpu_boxes = list(drawn)
    items = [gpu[i] for i in range(len(jpegs))]
    (data, plans), labels = collate(items)
    assert [tuple(p[:4].tolist()) for p in plans] == [tuple(b) for b in cpu_boxes]  # the same crop boxes
    assert labels.tolist() == jpegs.targets
    got = DeviceViews(P)(batch=(data, plans), device=CPU)
    assert got.shape == expected.shape == (len(jpegs), 3, 32, 32)
    levels = (got - expected).abs() * torch.tensor(P.std).view(1, 3, 1, 1) * 255  # back to 0-255 levels
    assert levels.mean() < MEAN_LEVELS and levels.max() < MAX_LEVELS, (levels.mean(), levels.max())


def test_flips_agree(monkeypatch, jpegs):
    """A flipped view on one path is flipped on the other (far from it otherwise)."""
    cpu = SeededTransformed(jpegs, StandardAugment(P), seed=1)
    gpu = SeededTransformed(JpegFiles(jpegs), PlannedView(), seed=1)
    for i in range(len(jpegs)):
        a = cpu[i][0]
        (data, plans), _ = collate([gpu[i]])
        b = DeviceViews(P)((data, plans), CPU)[0]
        assert (a - b).abs().mean() < (a - b.flip(-1)).abs().mean() or torch.equal(b, b.flip(-1))


def test_channels_last_batches(jpegs):
    (data, plans), _ = collate([SeededTransformed(JpegFiles(jpegs), PlannedView())[i] for i in range(2)])
    assert DeviceViews(P)((data, plans), CPU, channels_last=True).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("name", "mode", "fmt", "what"), [
    ("a.png", "RGB", "PNG", "a PNG file"), ("g.jpg", "L", "JPEG", "a L JPEG"), ("k.jpg", "CMYK", "JPEG", "a CMYK JPEG")])
def test_other_files_are_refused_naming_them(tmp_path, name, mode, fmt, what):
    path = tmp_path / name
    Image.new(mode, (16, 16)).save(path, fmt)
    with pytest.raises(ImageFileError, match=rf"{name}.*is {what}.*data.decode=cpu"):
        JpegFiles(FileDataset([path], [0]))[0]


def test_sources_without_files_and_other_views_are_refused(jpegs, tiny_overrides):
    arrays = ArrayDataset(np.zeros((2, 8, 8, 3), np.uint8), [0, 1])
    with pytest.raises(ConfigError, match="this training set is ArrayDataset.*data.decode=cpu"):
        encoded(arrays)
    assert isinstance(encoded(Subset(jpegs, [1, 2])).base, JpegFiles)
    with pytest.raises(ConfigError, match="train.augment=minimal"):
        check_decode("gpu", "minimal")
    check_decode("cpu", "minimal")
    with pytest.raises(ConfigError, match="data.store reads decoded pixels"):
        load_config("lift", overrides=[*tiny_overrides, "data.decode=gpu", "data.store=/x"])
    with pytest.raises(ConfigError, match="data.decode='nvjpeg' is not valid"):
        load_config("lift", overrides=[*tiny_overrides, "data.decode=nvjpeg"])
    with pytest.raises(ConfigError, match="this training set is"):  # the synthetic source holds arrays
        tailtune.fit(load_config("lift", overrides=[*tiny_overrides, "data.decode=gpu", "train.cache_features=never"]))


def test_a_run_trains_with_gpu_decoding_on_a_cpu_device(tmp_path, tiny_overrides):
    root = tmp_path / "d"
    for c in range(2):
        (root / "train" / f"c{c}").mkdir(parents=True)
        (root / "test" / f"c{c}").mkdir(parents=True)
        for i in range(6):
            _photo(root / "train" / f"c{c}" / f"{i}.jpg", (48 + 4 * i, 40), 10 * c + i)
        for i in range(2):
            _photo(root / "test" / f"c{c}" / f"{i}.jpg", (40, 40), 100 + 10 * c + i)
    cfg = load_config("lift", overrides=[*real_data(tiny_overrides), "data.name=folder", f"data.root={root}",
                                         "data.imb_ratio=1", "data.val=none", "data.decode=gpu",
                                         "train.cache_features=never", "train.precision=fp32",
                                         f"output_dir={tmp_path / 'runs'}"])
    metrics = tailtune.fit(cfg, run_dir=tmp_path / "run")
    assert metrics
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "decoded in batches on cpu (a CPU device: libjpeg, on the CPU)" in log
