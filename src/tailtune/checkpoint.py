"""Checkpoints: the trainable tensors (safetensors) with the config and backbone identity.

Loading is strict: the checkpoint must name the same backbone and class count as the
model it is loaded into, and hold exactly the tensors that model trains, shape for shape.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import CheckpointError

FORMAT = "tailtune-checkpoint-1"


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically (a temporary file in the same folder, then rename), readable as any file
    the user writes (safetensors creates files private to the owner)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], config_yaml: str,
                    backbone_info: dict, num_classes: int) -> None:
    """The trainable tensors with the config and backbone identity, written atomically."""
    meta = {"format": FORMAT, "config": config_yaml, "backbone": json.dumps(backbone_info, sort_keys=True),
            "num_classes": str(num_classes)}
    write_safetensors(path, tensors, meta)


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def read_snapshot(path: str | Path, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file, from one read of it into one writable buffer.

    One read of one open file gives a consistent snapshot even while a running job
    atomically replaces the file (a second open, or a memory map of the path, may see the
    new file's size with the old one's header). The tensors are views of that buffer: the
    file's size in memory, once.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist.")

    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{what} {path} is truncated or not a safetensors file ({why}); "
                               "re-run training or restore the file.")

    try:
        with open(path, "rb") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            if f.readinto(buf) != len(buf):
                raise corrupt("short read")
        (header_len,) = struct.unpack_from("<Q", buf, 0)
        header = json.loads(bytes(buf[8:8 + header_len]))
    except (OSError, ValueError, struct.error) as e:  # ValueError includes JSONDecodeError
        raise corrupt(str(e)) from None
    start = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = _DTYPES[info["dtype"]], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"tensor {name!r} has an unreadable entry {info!r}") from None
        count = math.prod(shape)
        size = torch.empty((), dtype=dtype).element_size()
        if end - begin != count * size or start + end > len(buf) or begin < 0:
            raise corrupt(f"tensor {name!r} does not fit the file")
        tensors[name] = (torch.frombuffer(buf, dtype=dtype, count=count, offset=start + begin).view(shape)
                         if count else torch.empty(shape, dtype=dtype))
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
    """Copy ``tensors`` into the model's trainable tensors: exactly the same names and shapes.

    The buffers PEFT modules are defined by (``saved_buffers``: masked tuning's indices) may
    be absent, as in files written before they were saved; the model keeps its own (drawn
    from the same seed, as those files assumed).
    """
    optional = model.saved_buffer_names() if hasattr(model, "saved_buffer_names") else set()
    check_fit(tensors, model.trainable_state_dict(), f"checkpoint {where}", optional=optional)
    state = model.state_dict()
    with torch.no_grad():
        for k, v in tensors.items():
            state[k].copy_(v)


def check_fit(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str,
              optional: set[str] = frozenset()) -> None:
    """Refuse ``tensors`` unless they have exactly the names and shapes of ``expected`` (names in
    ``optional`` may be missing)."""
    missing = sorted(set(expected) - set(tensors) - set(optional))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{where} does not fit this model: missing {missing[:5]}, "
                              f"unexpected {extra[:5]} (a different PEFT method or configuration?).")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)}, the model needs "
                                  f"{tuple(expected[k].shape)}.")
