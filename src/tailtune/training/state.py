"""Resumable training state in one file: tensors in safetensors, everything else as JSON.

The file holds the trainable tensors, the optimizer's buffers, every RNG state (Python,
NumPy, torch, CUDA) and, as JSON metadata, the counters, scheduler, grad scaler and
optimizer hyper-parameters, the dataset's class names and a checksum of it all (see
runtime/checkpoint.py: a damaged or edited file, or one saved for other classes, is refused).
It is written to a temporary file and renamed, so a kill at any moment leaves either the
previous state or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tailtune.errors import CheckpointError
from tailtune.runtime.checkpoint import (
    check_classnames,
    read_metadata,
    read_snapshot,
    verify_checksum,
    write_safetensors,
)

FORMAT = "tailtune-train-state-1"

_log = logging.getLogger(__name__)


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON-able part, tensor part) of every RNG this process uses."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    meta = {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return meta, tensors


def set_rng_state(meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _split_optimizer(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def _join_optimizer(meta: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    return {"state": dict(sorted(state.items())), "param_groups": meta["param_groups"]}


def save_state(path: str | Path, model_tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               counters: dict, extra: dict, extra_tensors: dict[str, torch.Tensor] | None = None,
               classnames: Sequence[str] | None = None, origin: str = "", config: str | None = None) -> None:
    """Write the training state atomically (temporary file + rename), with its checksum and the
    dataset's ``classnames`` (``origin``: where it comes from, for messages; ``config``: the run's
    config as YAML, which a resume compares with its folder's config.yaml)."""
    path = Path(path)
    optim_meta, optim_tensors = _split_optimizer(optimizer.state_dict())
    rng_meta, rng_tensors = rng_state()
    tensors = {f"model.{k}": v for k, v in model_tensors.items()}
    tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    tensors.update(optim_tensors)
    tensors.update(rng_tensors)
    meta = {"format": FORMAT, "counters": json.dumps(counters), "optimizer": json.dumps(optim_meta),
            "rng": json.dumps(rng_meta), "extra": json.dumps(extra), "origin": origin}
    if classnames is not None:
        meta["classnames"] = json.dumps(list(classnames))
    if config is not None:
        meta["config"] = config
    write_safetensors(path, tensors, meta, checksum=True)


def saved_config(path: str | Path) -> str | None:
    """The config (YAML) a training state was saved with, from its header alone (the contents are
    verified when it is loaded); None for a state written before tailtune stored it."""
    meta = read_metadata(path, "training state")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tailtune training state.")
    return meta.get("config")


def load_state(path: str | Path, classnames: Sequence[str] | None = None, expected: str = "the dataset",
               log: Callable[[str], None] = _log.warning) -> dict:
    """Read a training state; returns model tensors, optimizer state dict, rng parts, counters, extra.

    Verified: its checksum, and (given ``classnames``, the dataset's; ``expected`` says whose) the
    class names it was saved for.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no training state at {path}: the run saved none yet (nothing to resume).")
    meta, tensors = read_snapshot(path, "training state")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tailtune training state.")
    verify_checksum(path, meta, tensors, "training state",
                    "The run cannot resume from it: restore the file from a backup, or train the run again "
                    "in a new folder.", log)
    if classnames is not None:
        check_classnames(path, meta, classnames, "training state", expected)
    return {
        "model": {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
        "optimizer": _join_optimizer(json.loads(meta["optimizer"]), tensors),
        "rng": (json.loads(meta["rng"]), {k: v for k, v in tensors.items() if k.startswith("rng.")}),
        "counters": json.loads(meta["counters"]),
        "extra": json.loads(meta["extra"]),
        "extra_tensors": {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")},
    }
