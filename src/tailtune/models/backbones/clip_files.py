"""Local CLIP checkpoint files: read them without running their code, and tell OpenAI's from others.

OpenAI trained CLIP with QuickGELU (``x * sigmoid(1.702 x)``); open_clip's plain model names
build GELU models, and most other CLIP weights (LAION, DataComp, ...) were trained with GELU.
The activation is not stored in a state dict and the tensor names of both are the same, so
``model.quick_gelu=auto`` decides from what a file does carry (:func:`activation_of_file`):

1. a TorchScript archive (OpenAI's release format, e.g. ``ViT-B-16.pt``) names its modules'
   classes in its pickled module tree: a ``QuickGELU`` class without a ``GELU`` one is QuickGELU,
   and the reverse is GELU;
2. tensors ``input_resolution``, ``context_length`` and ``vocab_size``: only OpenAI's released
   models carry these (OpenAI's ``build_model`` deletes them before loading, open_clip drops them
   when it reads an archive), so a file written by open_clip or a LAION-style trainer never has
   them, and a state dict saved from OpenAI's model always does;
3. a file inside the Hugging Face cache folder of the repository that open_clip's ``openai`` tag
   of the model downloads (``models--timm--vit_base_patch16_clip_224.openai`` for ViT-B-16);
4. anything else is GELU: OpenAI's weights re-saved as a plain state dict cannot be told from
   others, and the log line says to set ``model.quick_gelu=true`` for them.

TorchScript archives are read by listing the zip and unpickling ``data.pkl`` with a restricted
unpickler (:func:`read_torchscript`) that builds nothing but tensors, dicts and inert stand-ins
for TorchScript classes: ``torch.jit.load`` would run the archive's code, and ``torch.load``
refuses archives with ``weights_only=True``. Other files are read by safetensors or by
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from tailtune.errors import CheckpointError

OPENAI_META = ("input_resolution", "context_length", "vocab_size")


# ---------------------------------------------------------------- TorchScript archives


def torchscript_prefix(path: str | os.PathLike) -> str | None:
    """The record folder of a TorchScript archive (``NAME/``), or None if ``path`` is not one.

    Decided from the zip listing alone: a TorchScript archive has ``constants.pkl`` and a
    ``code/`` folder beside ``data.pkl`` (a ``torch.save`` zip has only ``data.pkl``).
    """
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    for n in names:
        if n.endswith("/constants.pkl"):
            prefix = n[: -len("constants.pkl")]
            if f"{prefix}data.pkl" in names and any(m.startswith(f"{prefix}code/") for m in names):
                return prefix
    return None


class _ScriptObject:
    """An inert stand-in for an instance of a TorchScript class: it only keeps its attributes."""

    qualname = ""

    def __setstate__(self, state):
        self.state = state


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _passthrough(value, *args):
    return value


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl``: tensors, containers and TorchScript class stand-ins only."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.jit._pickle", "build_intlist"): _passthrough,
        ("torch.jit._pickle", "build_doublelist"): _passthrough,
        ("torch.jit._pickle", "build_boollist"): _passthrough,
        ("torch.jit._pickle", "build_tensorlist"): _passthrough,
        ("torch.jit._pickle", "restore_type_tag"): _passthrough,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, where: str):
        super().__init__(file)
        self.archive, self.prefix, self.where = archive, prefix, where
        self.classes: dict[str, type] = {}
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"{self.where}: the archive asks for {module}.{name}, which a weights "
                                     "file does not need; refused.")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], torch.dtype)):
            raise pickle.UnpicklingError(f"{self.where}: unexpected record reference {pid!r}.")
        _, dtype, key, _location, numel = pid
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() != numel:
                raise pickle.UnpicklingError(f"{self.where}: record data/{key} holds {flat.numel()} values, "
                                             f"the archive says {numel} (a truncated file?).")
            self.storages[key] = flat
        return self.storages[key]


_CLASS_DECL = re.compile(r"^class (\w+)\(Module\):\n  __parameters__ = \[(.*?)\]\n  __buffers__ = \[(.*?)\]",
                         re.MULTILINE | re.DOTALL)


def read_torchscript(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The parameters and buffers of a TorchScript archive (as ``ScriptModule.state_dict()`` names
    them) and the qualified names of its classes, without running any of its code."""
    where = str(path)
    prefix = torchscript_prefix(path)
    if prefix is None:
        raise CheckpointError(f"{where} is not a TorchScript archive.")
    with zipfile.ZipFile(path) as z:
        if z.namelist().count(f"{prefix}byteorder") and z.read(f"{prefix}byteorder").strip() not in (b"little", b""):
            raise CheckpointError(f"{where}: big-endian TorchScript archives are not supported.")
        # Which attributes of each class are parameters and buffers: the class declarations in code/.
        declared: dict[str, set[str]] = {}
        for name in z.namelist():
            if name.startswith(f"{prefix}code/") and name.endswith(".py"):
                module = name[len(f"{prefix}code/"):-3].replace("/", ".")
                for cls, params, buffers in _CLASS_DECL.findall(z.read(name).decode("utf-8", "replace")):
                    declared[f"{module}.{cls}"] = set(re.findall(r'"(\w+)"', params + buffers))
        with z.open(f"{prefix}data.pkl") as f:
            unpickler = _ArchiveUnpickler(f, z, prefix, where)
            try:
                root = unpickler.load()
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
                raise CheckpointError(f"cannot read the TorchScript archive {where}: {e}") from None
    state: dict[str, torch.Tensor] = {}

    def walk(obj: _ScriptObject, at: str) -> None:
        if obj.qualname not in declared:
            raise CheckpointError(f"{where}: the archive has no declaration of class {obj.qualname}.")
        for key, value in getattr(obj, "state", {}).items():
            if isinstance(value, _ScriptObject):
                walk(value, f"{at}{key}.")
            elif key in declared[obj.qualname] and isinstance(value, torch.Tensor):
                state[f"{at}{key}"] = value

    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{where}: the archive's data.pkl holds no module.")
    walk(root, "")
    return state, set(unpickler.classes)


# ---------------------------------------------------------------- any local file


def read_state_dict(path: str | os.PathLike) -> tuple[dict, set[str] | None]:
    """The tensors of a local checkpoint file and, for a TorchScript archive, its class names.

    safetensors files by safetensors, TorchScript archives by :func:`read_torchscript`, the rest
    by ``torch.load(weights_only=True)`` (memory-mapped where the format allows). A
    ``{"state_dict": ...}`` wrapper and DDP's ``module.`` prefix are removed, as open_clip does.
    """
    where = str(path)
    if where.endswith(".safetensors"):
        return load_file(where), None
    if torchscript_prefix(path) is not None:
        return read_torchscript(path)
    try:
        try:
            state = torch.load(where, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # the legacy (non-zip) format cannot be memory-mapped
                raise
            state = torch.load(where, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(f"cannot read checkpoint {where} with torch.load(weights_only=True): "
                              f"{detail[:400]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{where} holds no state dict (a dict of tensors): {type(state).__name__}.")
    if next(iter(state)).startswith("module."):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, None


def has_openai_meta(state: dict) -> bool:
    return all(k in state for k in OPENAI_META)


def activation_of_file(path: str | os.PathLike, state: dict, classes: set[str] | None,
                       openai_hf_repo: str | None) -> tuple[bool, str]:
    """(QuickGELU?, why) for a local checkpoint; the rules are in this module's docstring."""
    if classes is not None:
        quick = any(c.rsplit(".", 1)[-1] == "QuickGELU" for c in classes)
        gelu = any(c.rsplit(".", 1)[-1] == "GELU" for c in classes)
        if quick != gelu:
            return quick, f"the TorchScript archive's modules include {'QuickGELU' if quick else 'GELU'}"
    if has_openai_meta(state):
        return True, ("the file looks like an OpenAI CLIP checkpoint: it carries OpenAI's "
                      f"{', '.join(OPENAI_META)} entries")
    if openai_hf_repo:
        folder = "models--" + openai_hf_repo.strip("/").replace("/", "--")
        if folder in Path(os.path.abspath(path)).parts:
            return True, f"the file is in the Hugging Face cache of {openai_hf_repo.strip('/')}, open_clip's 'openai' weights"
    return False, ("no sign of OpenAI's training in the file (OpenAI's weights re-saved as a plain state dict "
                   "look like any other; set model.quick_gelu=true for them)")


def openai_meta_free(state: dict) -> dict:
    """``state`` without OpenAI's non-tensor metadata entries (open_clip's CLIP has no such keys)."""
    return {k: v for k, v in state.items() if k not in OPENAI_META}
