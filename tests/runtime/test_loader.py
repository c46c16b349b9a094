"""Loaders the library feeds a model from: workers by the cores this process may use, pinned
batches and asynchronous copies for CUDA (mocked: no GPU needed), persistent prefetching workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import tailtune.runtime.device as device_module
from tailtune.runtime.device import default_workers, usable_cores
from tailtune.runtime.loader import IN_FLIGHT, make_loader, to_device

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SRC = Path(__file__).resolve().parents[2] / "src" / "tailtune"


def _cores(monkeypatch, n: int, local_world: int | None = None):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))


@pytest.mark.parametrize(("cores", "local_world", "cuda", "cpu"), [
    (1, None, 0, 0), (2, None, 1, 0), (8, None, 7, 2), (32, None, 16, 4), (64, None, 16, 4),
    (32, 4, 7, 4),  # torchrun with 4 GPUs on the machine: each process gets a quarter of the cores
    (8, 8, 0, 2),   # one core per process: it decodes in its own process
])
def test_workers_by_the_cores_this_process_may_use(monkeypatch, cores, local_world, cuda, cpu):
    _cores(monkeypatch, cores, local_world)
    monkeypatch.setattr(os, "cpu_count", lambda: 999)  # the machine's count is not the process's
    assert usable_cores() == cores
    assert default_workers(CUDA) == cuda
    assert default_workers(CPU) == cpu


def test_workers_without_an_affinity_call_count_the_machine(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert device_module.usable_cores() == 12 and default_workers(CUDA) == 11


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_cuda_loaders_pin_and_training_loaders_prefetch():
    ds = torch.utils.data.TensorDataset(torch.zeros(8, 3, 4, 4), torch.zeros(8, dtype=torch.long))
    assert make_loader(ds, 4, False, 0, CUDA).pin_memory
    assert not make_loader(ds, 4, False, 0, CPU).pin_memory
    train = make_loader(ds, 4, False, 2, CUDA, persistent=True)
    assert train.persistent_workers and train.prefetch_factor * 2 >= IN_FLIGHT
    assert make_loader(ds, 4, False, 16, CUDA, persistent=True).prefetch_factor == 2
    evaluation = make_loader(ds, 4, False, 2, CUDA)
    assert not evaluation.persistent_workers and evaluation.prefetch_factor == 2  # PyTorch's default
    assert not make_loader(ds, 4, False, 0, CUDA, persistent=True).persistent_workers  # none without workers


def test_to_device_is_asynchronous_and_channels_last_for_4d(monkeypatch):
    calls = []
    real = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    x = torch.randn(2, 3, 8, 8)
    out = to_device(x, CPU, True)
    assert calls == [True] and out.is_contiguous(memory_format=torch.channels_last)
    assert to_device(x, CPU, False).is_contiguous()


def test_every_model_loader_is_made_by_make_loader():
    """Pinning and workers are decided in one place. The store's writer is the one exception: its
    loader decodes into a file and feeds no device."""
    users = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "DataLoader(" in p.read_text())
    assert users == ["data/store.py", "runtime/loader.py"]


def test_the_trainer_copies_batches_asynchronously_in_the_experiments_layout(monkeypatch, tmp_path):
    from conftest import TINY_CLIP
    from tailtune.config import load_config
    from tailtune.experiment import build
    from tailtune.losses import build_loss
    from tailtune.training import trainer as trainer_module

    exp = build(load_config("lift", overrides=[*TINY_CLIP, f"output_dir={tmp_path}", "train.precision=fp32"]))
    seen = []
    real = trainer_module.to_device
    monkeypatch.setattr(trainer_module, "to_device", lambda x, d, cl: seen.append(cl) or real(x, d, cl))
    moved = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: moved.append(k.get("non_blocking")) or
                        real_to(self, *a, **k))
    loss = build_loss(exp.cfg.loss, exp.data.train_counts)
    from tailtune.data.base import Transformed
    from tailtune.data.transforms import train_transform

    ds = Transformed(exp.data.train, train_transform(exp.backbone.preprocess))
    trainer = trainer_module.Trainer(exp.model, loss, ds, exp.cfg.train, CPU, None, 0, quiet=True,
                                     log=lambda _: None, channels_last=exp.channels_last)
    images, y = ds[0][0][None], torch.tensor([ds[0][1]])
    moved.clear()
    trainer._forward_backward(images, y, 1, True)
    assert seen == [False]  # a ViT: train.channels_last (true by default) is for CNNs only
    assert moved[:2] == [True, True]  # images and labels


def test_a_cnn_run_trains_and_evaluates_in_channels_last(monkeypatch, tmp_path):
    """train.channels_last reaches every batch of a CNN, in training and in evaluation (the same
    calls on CUDA: the layout is chosen by the model's kind, not by the device)."""
    from conftest import TINY_CLIP
    from tailtune.config import load_config
    from tailtune.runs.run import fit
    from tailtune.runtime import loader as loader_module
    from tailtune.training import trainer as trainer_module

    flags = {"train": set(), "eval": set()}
    for module, kind in ((trainer_module, "train"), (loader_module, "eval")):
        real = module.to_device
        monkeypatch.setattr(module, "to_device", lambda x, d, cl, _r=real, _k=kind: flags[_k].add(cl) or _r(x, d, cl))
    over = [o for o in TINY_CLIP if not o.startswith("model.")] + [
        "model.provider=timm", "model.name=resnet10t", "model.pretrained=none", "model.resolution=32",
        "peft.method=none", "head.init=class_mean", "train.cache_features=never", "train.precision=fp32",
        f"output_dir={tmp_path}"]
    fit(load_config("lift", overrides=over), run_dir=tmp_path / "run")
    assert flags == {"train": {True}, "eval": {True}}
