"""Checkpoints: the trainable tensors (safetensors) with the config and backbone identity.

Loading is strict: the checkpoint must name the same backbone and class count as the
model it is loaded into, and hold exactly the tensors that model trains, shape for shape.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

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


def read_snapshot(path: str | Path, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file from one read of its bytes.

    One read (rather than opening the path twice, or memory-mapping it) gives a consistent
    snapshot even while a running job atomically replaces the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist.")
    try:
        data = path.read_bytes()
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_len])
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, struct.error) as e:  # ValueError includes JSONDecodeError
        raise CheckpointError(f"{what} {path} is truncated or not a safetensors file ({e}); "
                              "re-run training or restore the file.") from None
    return header.get("__metadata__") or {}, tensors


def load_checkpoint(path: str | Path, model: torch.nn.Module, backbone_info: dict, num_classes: int) -> dict:
    """Load trainable tensors into ``model`` strictly; returns the checkpoint's metadata."""
    path = Path(path)
    meta, tensors = read_snapshot(path, "checkpoint")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tailtune checkpoint (format {meta.get('format')!r}).")
    saved_backbone = json.loads(meta["backbone"])
    if saved_backbone != backbone_info:
        raise CheckpointError(f"checkpoint {path} was trained on backbone {saved_backbone}, "
                              f"but the model is {backbone_info}. Use the run's own config (tailtune eval RUN_DIR).")
    if int(meta["num_classes"]) != num_classes:
        raise CheckpointError(f"checkpoint {path} has {meta['num_classes']} classes, the dataset has {num_classes}.")
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
