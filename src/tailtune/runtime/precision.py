"""The autocast dtype of a run's training and of its evaluation (``train.precision``, ``eval.precision``)."""

from __future__ import annotations

import contextlib

import torch

from tailtune.errors import ConfigError
from tailtune.runtime.device import setting
from tailtune.runtime.hardware import auto_precision


def resolve_precision(precision: str, device: torch.device, kind: str = "vit",
                      key: str = "train.precision") -> torch.dtype | None:
    """The autocast dtype (None = fp32) of a precision setting named ``key`` (for the error text).

    auto: see :func:`tailtune.runtime.hardware.auto_precision` (bf16 only where the hardware computes
    in bf16: on an AVX2-only CPU bf16 autocast ran 4.7x slower than fp32, benchmarks/RESULTS.md).
    """
    if precision == "auto":
        return auto_precision(device, kind)
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError(f"{setting(key, 'fp16')} is not supported on CPU; use bf16 or fp32.")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def resolve_eval_precision(precision: str, train_precision: str, device: torch.device,
                           kind: str = "vit") -> torch.dtype | None:
    """The autocast dtype of evaluation (``eval.precision``; None = fp32).

    ``train``: whatever ``train.precision`` resolves to; ``auto``: the rule of
    ``train.precision=auto``, whatever training used; otherwise that dtype. Evaluation runs
    without a grad scaler, so fp16 needs nothing more than autocast.
    """
    if precision == "train":
        return resolve_precision(train_precision, device, kind)
    return resolve_precision(precision, device, kind, key="eval.precision")


def precision_name(dtype: torch.dtype | None) -> str:
    """fp32 | bf16 | fp16: the config's name of an autocast dtype (None = fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
