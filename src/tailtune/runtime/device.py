"""The device a run computes on, how many loader workers it gets, and the CPU allocator's tuning."""

from __future__ import annotations

import ctypes
import os
import re
import sys

import torch

from tailtune.errors import ConfigError

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


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def setting(key: str, value) -> str:
    """``key=value`` for a config key, ``--option value`` for a command-line option (error texts)."""
    return f"{key} {value}" if key.startswith("--") else f"{key}={value}"


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """The device ``name`` names (auto | cpu | cuda | cuda:N | mps), checked here; ``key`` is the
    setting it came from (``train.device``, or a command's ``--device``), named in the errors."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise ConfigError(f"{setting(key, name)} is not a device; use auto, cpu, cuda or cuda:N.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting(key, name)} but CUDA is not available here; "
                              f"use {setting(key, 'cpu')} or {setting(key, 'auto')}.")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{setting(key, name)} but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1}); pick one of them.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{setting(key, name)} but MPS is not available here; use {setting(key, 'cpu')} "
                          f"or {setting(key, 'auto')}.")
    return torch.device(name)


MAX_CUDA_WORKERS = 16  # beyond this, more processes mostly add start-up time and pinned memory


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a cluster's scheduler or
    taskset narrows), or the machine's count where the system cannot say."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_workers(device: torch.device) -> int:
    """DataLoader workers for ``data.num_workers=-1``, by the cores this process may use.

    CUDA: the GPU waits on the loader, so decoding gets the cores: this process's share of
    them (torchrun's ``LOCAL_WORLD_SIZE`` processes share the machine), less one for the process
    that drives the GPU, at most 16. CPU: the model's threads need the cores (0 workers was
    faster on 2).
    """
    cores = usable_cores()
    if device.type == "cuda":
        share = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        return max(0, min(share - 1, MAX_CUDA_WORKERS))
    return 0 if cores <= 4 else min(4, cores // 4)
