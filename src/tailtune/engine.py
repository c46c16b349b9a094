"""The training and inference loops.

The trainer's state is explicit (epoch, step, model, optimizer, scheduler, scaler) so
that checkpoints, resume and distributed training wrap it rather than rewrite it.
The shuffling order of epoch e is a pure function of (seed, e).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig
from .errors import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_allocator_tuned = False


def tune_cpu_allocator() -> bool:
    """Keep large tensor buffers in glibc's heap instead of fresh mmap'd pages.

    By default glibc serves every allocation above a (dynamic) threshold with mmap and
    returns it on free, so each step re-faults its activation memory page by page: CNN
    training on CPU ran 2x faster with the threshold raised (benchmarks/RESULTS.md).
    Skipped when the user set MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ or libc is not glibc.
    """
    global _allocator_tuned
    if _allocator_tuned or sys.platform != "linux" or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return _allocator_tuned
    try:
        libc = ctypes.CDLL("libc.so.6")
        _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        _allocator_tuned = False
    return _allocator_tuned


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=cpu or auto.")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device, kind: str = "vit") -> torch.dtype | None:
    """The autocast dtype (None = fp32).

    auto: fp16 on CUDA; on CPU bf16 for transformers and fp32 for CNNs (bf16 depthwise
    convolutions ran about 10x slower than fp32 on CPU: benchmarks/RESULTS.md).
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if kind == "vit" else None
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision=fp16 is not supported on CPU; use bf16 or fp32.")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_workers(device: torch.device) -> int:
    """DataLoader workers: on CPU the model's threads need the cores (0 workers was faster on 2)."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, cores)
    return 0 if cores <= 4 else min(4, cores // 4)


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device,
                generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
        pin_memory=device.type == "cuda", persistent_workers=False, drop_last=False,
    )


def progress(iterable, desc: str, quiet: bool, total: int | None = None, unit: str = "batch"):
    return tqdm(iterable, desc=desc, total=total, disable=quiet, unit=unit, dynamic_ncols=True, leave=False)


def _to_device(images, device: torch.device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@torch.no_grad()
def predict_logits(fn: Callable[[torch.Tensor], torch.Tensor], loader, device: torch.device,
                   dtype: torch.dtype | None, quiet: bool = True, desc: str = "eval",
                   channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of ``fn`` over a loader, averaged over views when batches are (B, V, C, H, W)."""
    outs, labels = [], []
    for images, y in progress(loader, desc, quiet):
        views = images.shape[1] if images.dim() == 5 else 1
        if views > 1:
            images = images.flatten(0, 1)
        with autocast(device, dtype):
            out = fn(_to_device(images, device, channels_last)).float()
        if views > 1:
            out = out.view(-1, views, out.shape[-1]).mean(1)
        outs.append(out.cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    lr: float
    seconds: float
    images: int


@dataclass
class Trainer:
    """SGD with a cosine schedule over steps, gradient accumulation and mixed precision."""

    model: nn.Module
    loss_fn: nn.Module
    train_set: object
    cfg: TrainConfig
    device: torch.device
    dtype: torch.dtype | None = None
    workers: int = 0
    backbone_lr: float | None = None
    quiet: bool = False
    log: Callable[[str], None] = print
    on_step: Callable[[int, dict], None] | None = None
    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)

    def __post_init__(self):
        self.micro = self.cfg.micro_batch_size or self.cfg.batch_size
        self.accum = self.cfg.batch_size // self.micro
        head, body = [], []
        for n, p in self.model.named_parameters():
            if p.requires_grad:
                (head if n.startswith("head.") else body).append(p)
        if not head and not body:
            raise ConfigError("nothing to train: no parameter requires a gradient.")
        groups = [{"params": head, "lr": self.cfg.lr}]
        if body:
            groups.append({"params": body, "lr": self.backbone_lr or self.cfg.lr})
        self.optimizer = torch.optim.SGD(groups, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                         weight_decay=self.cfg.weight_decay)
        self.steps_per_epoch = math.ceil(len(self.train_set) / self.cfg.batch_size)
        total = self.steps_per_epoch * self.cfg.epochs
        if self.cfg.scheduler == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def loader(self, epoch: int):
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return make_loader(self.train_set, self.micro, True, self.workers, self.device, g)

    def train_epoch(self) -> EpochStats:
        self.model.train()
        loader = self.loader(self.epoch)
        t0 = time.perf_counter()
        total_loss, correct, seen, pending = 0.0, 0, 0, 0
        bar = progress(loader, f"epoch {self.epoch + 1}/{self.cfg.epochs}", self.quiet, unit="batch")
        self.optimizer.zero_grad(set_to_none=True)
        n_micro = len(loader)
        for i, (images, y) in enumerate(bar):
            images = _to_device(images, self.device, self.cfg.channels_last)
            y = y.to(self.device, non_blocking=True)
            with autocast(self.device, self.dtype):
                logits = self.model(images)
            loss = self.loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch + 1}, step {self.step}; "
                                         "lower train.lr or use train.precision=fp32.")
            # Each micro-batch contributes in proportion to its size within the optimizer step.
            step_size = min(self.accum, n_micro - (i // self.accum) * self.accum)
            self.scaler.scale(loss / step_size).backward()
            pending += 1
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if pending == step_size:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.step += 1
                pending = 0
                if self.on_step and self.step % self.cfg.log_every == 0:
                    self.on_step(self.step, {"loss": loss.item(), "lr": self.lr})
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
        seconds = time.perf_counter() - t0
        stats = EpochStats(total_loss / seen, 100.0 * correct / seen, self.lr, seconds, seen)
        self.epoch += 1
        self.history.append(stats.__dict__)
        return stats

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def fit(self, on_epoch: Callable[[int, EpochStats], None] | None = None) -> list[dict]:
        while self.epoch < self.cfg.epochs:
            stats = self.train_epoch()
            self.log(f"epoch {self.epoch}/{self.cfg.epochs}: loss {stats.loss:.4f}, train acc "
                     f"{stats.accuracy:.2f}%, lr {stats.lr:.5f}, {stats.seconds:.1f}s "
                     f"({stats.images / max(stats.seconds, 1e-9):.0f} img/s)")
            if on_epoch:
                on_epoch(self.epoch, stats)
        return self.history
