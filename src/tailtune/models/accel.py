"""Model-path options of a run: torch.compile, activation checkpointing, precision warnings.

The attention kernels need nothing here: every backbone is built with them
(models/attention.py: open_clip's attention without the strided bf16 slow path, PyTorch's
fused SDPA kernel where it is the faster one; tests/runtime/test_speed.py checks it with the
profiler), and so are the frozen weights' casts (models/casts.py).
"""

from __future__ import annotations

import torch
from torch import nn

from tailtune.config import TrainConfig
from tailtune.errors import ConfigError
from tailtune.runtime.hardware import precision_note


def set_grad_checkpointing(backbone, enable: bool = True) -> None:
    """Recompute the encoder's block activations in the backward pass (open_clip and timm models)."""
    setter = getattr(backbone.encoder, "set_grad_checkpointing", None)
    if setter is None:
        raise ConfigError(f"train.grad_checkpointing=true, but {backbone.info['name']!r} has no "
                          "set_grad_checkpointing (open_clip and timm models have it); set it to false.")
    setter(enable)


def compile_model(model: nn.Module, mode: str = "default") -> None:
    """``torch.compile`` in place: parameter names, and so optimizer groups and checkpoints, stay as they are.

    ``mode`` is ``train.compile_mode`` (default | reduce-overhead | max-autotune: PyTorch's modes;
    reduce-overhead records CUDA graphs, max-autotune also searches kernels, both GPU options).
    """
    if not hasattr(model, "compile"):
        raise ConfigError(f"train.compile=true needs PyTorch >= 2.2 (this is {torch.__version__}); set it to false.")
    model.compile(mode=mode)


def apply_model_options(model: nn.Module, backbone, cfg: TrainConfig, device: torch.device,
                        dtype: torch.dtype | None) -> list[str]:
    """Apply ``train.grad_checkpointing`` and ``train.compile``; returns notes for the run's log."""
    notes = []
    if cfg.grad_checkpointing:
        set_grad_checkpointing(backbone)
    if cfg.compile:
        compile_model(model, cfg.compile_mode)
        notes.append(f"train.compile (mode {cfg.compile_mode}): the first steps of training and evaluation compile the model "
                     "(minutes on CPU) before running faster.")
    note = precision_note(dtype, device)
    if note:
        notes.append(note)
    return notes
