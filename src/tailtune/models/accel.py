"""Model-path options of a run: torch.compile, activation checkpointing, precision warnings.

Fused attention needs nothing here: open_clip's blocks call ``nn.MultiheadAttention`` with
``need_weights=False`` and timm's call ``F.scaled_dot_product_attention``, both of which run
PyTorch's fused SDPA kernel (tests/runtime/test_speed.py checks it with the profiler).
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
