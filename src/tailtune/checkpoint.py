"""Checkpoints: the trainable tensors (safetensors) with the config and backbone identity.

Loading is strict: the checkpoint must name the same backbone and class count as the
model it is loaded into, and hold exactly the tensors that model trains, shape for shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .errors import CheckpointError

FORMAT = "tailtune-checkpoint-1"


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], config_yaml: str,
                    backbone_info: dict, num_classes: int) -> None:
    """Write atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    meta = {"format": FORMAT, "config": config_yaml, "backbone": json.dumps(backbone_info, sort_keys=True),
            "num_classes": str(num_classes)}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or not a safetensors file ({e}); "
                              "re-run training or restore the file.") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tailtune checkpoint (format {meta.get('format')!r}).")
    return meta


def load_checkpoint(path: str | Path, model: torch.nn.Module, backbone_info: dict, num_classes: int) -> dict:
    """Load trainable tensors into ``model`` strictly; returns the checkpoint's metadata."""
    path = Path(path)
    meta = read_metadata(path)
    saved_backbone = json.loads(meta["backbone"])
    if saved_backbone != backbone_info:
        raise CheckpointError(f"checkpoint {path} was trained on backbone {saved_backbone}, "
                              f"but the model is {backbone_info}. Use the run's own config (tailtune eval RUN_DIR).")
    if int(meta["num_classes"]) != num_classes:
        raise CheckpointError(f"checkpoint {path} has {meta['num_classes']} classes, the dataset has {num_classes}.")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({e}).") from None
    assign_trainable(model, tensors, str(path))
    return meta


def assign_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Copy ``tensors`` into the model's trainable tensors: exactly the same names and shapes."""
    check_fit(tensors, model.trainable_state_dict(), f"checkpoint {where}")
    state = model.state_dict()
    with torch.no_grad():
        for k, v in tensors.items():
            state[k].copy_(v)


def check_fit(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str) -> None:
    """Refuse ``tensors`` unless they have exactly the names and shapes of ``expected``."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{where} does not fit this model: missing {missing[:5]}, "
                              f"unexpected {extra[:5]} (a different PEFT method or configuration?).")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)}, the model needs "
                                  f"{tuple(expected[k].shape)}.")
