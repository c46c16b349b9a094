"""Seeded random draws that leave the caller's global RNG streams as they were.

torch, torchvision and timm draw from the process-wide generators (torch's default CPU and
CUDA generators, Python's ``random``, NumPy's legacy ``np.random``). tailtune seeds them only
inside these blocks, and gives the caller's states back when a block ends.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch


@contextlib.contextmanager
def kept_rng(cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Whatever the block does to the global RNGs (seeding, drawing, restoring a saved run's
    states) is undone at its end: torch's CPU generator and those of ``cuda_devices``,
    Python's ``random`` and NumPy's ``np.random``."""
    py, legacy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=list(cuda_devices)):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(legacy)


@contextlib.contextmanager
def seeded_rng(seed: int, keep: bool = True) -> Iterator[None]:
    """A block whose draws (torch and ``random``) start from ``seed``.

    ``keep``: on forked generators, the caller's states given back at the end (torch's CPU
    generator only: what tailtune creates is created on the CPU). Without it the global
    streams are seeded and stay so: what a run asks for, inside its own :func:`kept_rng`.
    """
    if not keep:
        seed_global_rng(seed)
        yield
        return
    with kept_rng():
        seed_global_rng(seed, cuda=False)
        yield


def seed_global_rng(seed: int, cuda: bool = True) -> None:
    """Seed torch (CPU, and every CUDA device with ``cuda``) and Python's ``random`` with ``seed``.

    Called only inside :func:`kept_rng` (directly or through :func:`seeded_rng`): a run's
    training then draws (dropout) from its own seed, and the caller gets their streams back.
    """
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.random.default_generator.manual_seed(seed)
    random.seed(seed)
