"""Checkpoints: the trainable tensors (safetensors) with the config, backbone identity and class names.

Loading is strict: the checkpoint must name the same backbone, class count and class names as
the model and dataset it is loaded into, hold exactly the tensors that model trains, shape for
shape, all finite, and match the checksum written with it (``sha256`` in its metadata: over
every tensor's name, dtype, shape and bytes in name order, and the rest of the metadata). A file
edited or damaged after it was written is refused by name. Files written before the checksum
and the class names were stored load with a note that they carry no checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tailtune.errors import CheckpointError
from tailtune.runtime.files import atomic

FORMAT = "tailtune-checkpoint-1"
CHECKSUM = "sha256"  # the metadata key of the checksum (files without it predate it)

_log = logging.getLogger(__name__)


def content_sha256(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 over every tensor (name, dtype, shape, bytes; in name order) and every metadata
    entry but the checksum itself (in key order): what a safetensors file holds, independent of
    its layout on disk."""
    h = hashlib.sha256()
    for key in sorted(metadata):
        if key != CHECKSUM:
            h.update(json.dumps(["meta", key, metadata[key]]).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(json.dumps(["tensor", name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                      checksum: bool = False) -> None:
    """Write atomically (a temporary file in the same folder, then rename: runtime.files.atomic), readable as any file
    the user writes (safetensors creates files private to the owner). ``checksum``: add the
    metadata entry ``sha256`` (:func:`content_sha256`) that :func:`verify_checksum` checks."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if checksum:
        metadata = {**metadata, CHECKSUM: content_sha256(tensors, metadata)}
    with atomic(path, errors=(SafetensorError,)) as tmp:  # a failed write leaves no .tmp (WriteError)
        save_file(tensors, str(tmp), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], config_yaml: str,
                    backbone_info: dict, classnames: Sequence[str], origin: str = "") -> None:
    """The trainable tensors with the config, backbone identity and class names, and their
    checksum, written atomically. ``origin``: where they come from, for messages (e.g. "run
    RUN_DIR on dataset NAME")."""
    meta = {"format": FORMAT, "config": config_yaml, "backbone": json.dumps(backbone_info, sort_keys=True),
            "num_classes": str(len(classnames)), "classnames": json.dumps(list(classnames)), "origin": origin}
    write_safetensors(path, tensors, meta, checksum=True)


def verify_checksum(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor], what: str,
                    way_out: str, log: Callable[[str], None] = _log.warning) -> None:
    """Refuse a file whose contents do not match the checksum written with them; a file with no
    checksum (written before tailtune stored one) is accepted with a note."""
    if CHECKSUM not in meta:
        log(f"note: {what} {path} carries no checksum (written by an older tailtune): "
            "loaded without an integrity check.")
        return
    if content_sha256(tensors, meta) != meta[CHECKSUM]:
        raise CheckpointError(f"{what} {path} is damaged or edited: its contents do not match the sha256 "
                              f"checksum written with it. {way_out}")


def check_classnames(path: Path, meta: dict[str, str], classnames: Sequence[str], what: str, expected: str) -> None:
    """Refuse a file saved for other classes than ``classnames`` (``expected``: whose they are,
    for the message). Files written before class names were stored carry none: not checked."""
    if "classnames" not in meta:
        return
    saved, classnames = json.loads(meta["classnames"]), list(classnames)
    if saved == classnames:
        return
    origin = meta.get("origin") or "another run"
    if len(saved) != len(classnames):
        differ = f"it has {len(saved)} classes, {expected} has {len(classnames)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(saved, classnames)) if a != b)
        differ = f"its class {i} is {saved[i]!r}, in {expected} it is {classnames[i]!r}"
    raise CheckpointError(f"{what} {path} was saved for other classes ({origin}): {differ}. It holds another "
                          "run's weights; put back this run's own file, or use it with the run it came from.")


def read_snapshot(path: str | Path, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file, both through one open file descriptor.

    A running job atomically replaces its training state while a watcher (or a resume) may
    read it; metadata and tensors must come from the same file. safetensors' ``safe_open``
    with ``backend="pread"`` opens the path once and reads header and tensors from that one
    descriptor, so a rename mid-read cannot mix two files.

    Measured (benchmarks/snapshot_read.py: a 100 MB file, and 3000 reads while another
    process keeps replacing a small one; safetensors 0.8.0):
    - ``backend="pread"``: peak +98 MB (1x the file), as fast as the hand-written reader this
      replaced (165 vs 169 ms), 0 mixed reads (0 also in 20000 reads).
    - ``backend="mmap"`` (the default) maps the *path* a second time for torch
      (``UntypedStorage.from_file(filename)``): 13 reads mixed one file's header with another's
      tensors and 8 failed ("file size ... is smaller than the required mapping size").
    - ``safetensors.torch.load(f.read())`` copies every tensor out of the bytes: peak +192 MB
      (2x the file), and it gives no metadata (a header parse of our own would be needed).
    The tensors are writable (the optimizer updates loaded momentum in place).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt", device="cpu", backend="pread") as f:
            return f.metadata() or {}, f.get_tensors()
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{what} {path} is truncated or not a safetensors file ({e}); "
                              "re-run training or restore the file.") from None


def read_metadata(path: str | Path, what: str) -> dict[str, str]:
    """The metadata of a safetensors file, from its header alone (no tensor is read)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{what} {path} is truncated or not a safetensors file ({e}); "
                              "re-run training or restore the file.") from None


def stored_sha256(path: str | Path, what: str) -> str | None:
    """The sha256 checksum a safetensors file carries in its metadata (None: written before
    tailtune stored one); from the header alone. What ties a run's logits to its checkpoint."""
    return read_metadata(path, what).get(CHECKSUM)


def load_checkpoint(path: str | Path, model: torch.nn.Module, backbone_info: dict, classnames: Sequence[str],
                    expected: str = "the dataset", log: Callable[[str], None] = _log.warning) -> dict:
    """Load trainable tensors into ``model`` strictly; returns the checkpoint's metadata.

    ``classnames``: the dataset's, in label order (``expected`` says whose, for messages).
    """
    path = Path(path)
    meta, tensors = read_snapshot(path, "checkpoint")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tailtune checkpoint (format {meta.get('format')!r}).")
    verify_checksum(path, meta, tensors, "checkpoint",
                    "Restore the run's checkpoint.safetensors from a backup, or train the run again.", log)
    num_classes = len(classnames)
    saved_backbone = json.loads(meta["backbone"])
    if saved_backbone != backbone_info:
        raise CheckpointError(f"checkpoint {path} was trained on backbone {saved_backbone}, "
                              f"but the model is {backbone_info}. Use the run's own config (tailtune eval RUN_DIR).")
    if int(meta["num_classes"]) != num_classes:
        raise CheckpointError(f"checkpoint {path} has {meta['num_classes']} classes, the dataset has {num_classes}.")
    check_classnames(path, meta, classnames, "checkpoint", expected)
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
    check_finite(tensors, where)
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


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse weights holding NaN or infinity: a model of them predicts nothing meaningful."""
    for k in sorted(tensors):
        v = tensors[k]
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise CheckpointError(f"{where}: {k} holds {bad} non-finite value(s) (NaN or infinity) of {v.numel()}; "
                                  "these weights cannot predict. Restore the file from a backup, or train the "
                                  "run again.")
