"""Which implementation of the SGD step a run uses: fused on CUDA, the per-tensor loop on CPU.

PyTorch has three: a Python loop over the tensors, ``foreach`` (one multi-tensor kernel per
operation) and ``fused`` (the whole update in one kernel). On CUDA the fused step reads and
writes each parameter, gradient and momentum buffer once, where the loop launches several
kernels per tensor; it takes any floating dtype there. On CPU there are no multi-tensor
kernels (``foreach`` falls back to the same per-tensor loop), so the plain loop stays.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)  # CUDA's fused SGD
FOREACH_DEVICES = ("cuda", "xpu")  # devices with multi-tensor (foreach) kernels


def sgd_flags(device: torch.device, dtypes: Iterable[torch.dtype]) -> dict:
    """``fused`` / ``foreach`` arguments of ``torch.optim.SGD`` for parameters of ``dtypes`` on ``device``."""
    dtypes = set(dtypes)
    if device.type == "cuda" and dtypes <= set(FUSED_DTYPES):
        return {"fused": True, "foreach": False}
    if device.type in FOREACH_DEVICES:
        return {"fused": False, "foreach": True}
    return {"fused": False, "foreach": False}


def make_sgd(groups: list[dict], device: torch.device, **options) -> torch.optim.SGD:
    """SGD over parameter ``groups`` with the step implementation :func:`sgd_flags` picks."""
    dtypes = {p.dtype for g in groups for p in g["params"]}
    return torch.optim.SGD(groups, **options, **sgd_flags(device, dtypes))


def keep_flags(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Restore this machine's step implementation after ``load_state_dict``, which copies the saved
    run's ``fused`` / ``foreach`` into the groups (a CPU checkpoint resumed on CUDA would lose fused)."""
    dtypes = {p.dtype for g in optimizer.param_groups for p in g["params"]}
    flags = sgd_flags(device, dtypes)
    for group in optimizer.param_groups:
        group.update(flags)
