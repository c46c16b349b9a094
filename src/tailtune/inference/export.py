"""Export a finished run as a standalone model: one safetensors file plus ``config.json``.

The export holds the image path only (the image encoder with its PEFT modules, and the
classifier) as plain tensors, and the JSON the loader needs without the run folder, the
training data or the pretrained weights: the run's config with ``model.pretrained=none``
(the architecture is rebuilt, then every tensor of the image path is loaded strictly),
the class names, the backbone's preprocessing and, under ``preprocessing``, every step from an
image file to the model's input and from its logits to probabilities (resize, crops, normalisation,
how views are combined; ``transforms.preprocessing_spec``), so that ``model.onnx`` can be fed
without tailtune. Nothing is pickled.

Mergeable PEFT methods (those whose class has a ``merge``: LoRA, models/peft/lora.py; aft, models/peft/aft.py) are
folded into the backbone's weights on export, so the exported model runs at the plain backbone's cost.
Every export is checked by loading it back and comparing logits with the run's model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tailtune import config as C
from tailtune.data.sources.base import LTData
from tailtune.data.transforms import Preprocess, preprocessing_spec
from tailtune.errors import CheckpointError, ConfigError, WriteError
from tailtune.experiment import build, inference_config, tte_options
from tailtune.models.attention import FastAttention
from tailtune.models.peft.base import PEFT_METHODS, mergeable, method_names
from tailtune.models.peft.targets import SelfAttention, set_part
from tailtune.models.text import TextClassifier, fixed_text_head, text_named_parameters
from tailtune.runtime.checkpoint import check_fit, load_checkpoint, write_safetensors
from tailtune.runtime.files import write_text, writing
from tailtune.runtime.rundir import CHECKPOINT, METRICS, read_config, read_metrics
from tailtune.version import __version__

FORMAT = "tailtune-export-1"
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
EXPORT_ONNX = "model.onnx"
_REQUIRED = ("format", "config", "classnames", "preprocess", "backbone", "num_classes", "weights_sha256")
_OPTIONAL = ("tailtune_version", "merged", "source_run", "group_names", "groups", "test", "preprocessing")


def build_without_data(cfg: C.Config, classnames: list[str], groups=None):
    """The model of ``cfg`` for these classes, without loading any dataset (prediction, export)."""
    # build() reads only the class list and notes of the data; images are never touched.
    data = LTData(train=None, test=None, classnames=list(classnames),
                  groups=np.zeros(len(classnames), dtype=np.int64) if groups is None else np.asarray(groups))
    return build(cfg, data, train=False)


def _on_cpu(cfg: C.Config) -> C.Config:
    """``cfg`` to build the model for writing an export: on the CPU in fp32, whatever the run used
    (the exported tensors are fp32; the export's config.json keeps the run's own precision)."""
    return replace(cfg, train=replace(cfg.train, device="cpu"), eval=replace(cfg.eval, precision="fp32"))


def _encoder_prefix(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is model.backbone.encoder:
            return name + "."
    raise CheckpointError("the model's image encoder is not one of its modules; cannot export it.")


def image_path_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors the image -> logits path reads: the image encoder (with its PEFT modules)
    and the classifier. CLIP's text tower and projections are left out: prediction never uses them."""
    prefix = _encoder_prefix(model)
    state = {k: v for k, v in model.state_dict().items() if k.startswith((prefix, "head."))}
    outside = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in state)
    if outside:
        raise CheckpointError(f"trained tensors outside the image encoder and classifier cannot be exported: "
                              f"{outside[:5]}; this PEFT method places them elsewhere.")
    return state


# ---------------------------------------------------------------- merging


def _implicit_attention(sa) -> nn.MultiheadAttention:
    """An ``nn.MultiheadAttention`` holding the parameters of a :class:`SelfAttention` (the
    inverse of ``targets.explicit_attention``), once nothing wraps its layers any more."""
    dim = sa.qkv.in_features
    mha = FastAttention(dim, sa.num_heads, dropout=sa.dropout, bias=sa.qkv.bias is not None,
                        batch_first=sa.batch_first, device="meta")
    mha.in_proj_weight = sa.qkv.weight
    if sa.qkv.bias is not None:
        mha.in_proj_bias = sa.qkv.bias
    mha.out_proj = sa.proj
    return mha


def _align_attention(model: nn.Module, reference: nn.Module) -> None:
    """Where ``reference`` (built from the export config) keeps open_clip's original attention
    and ``model`` holds the explicit form a merged method introduced, switch back."""
    ref = dict(reference.named_modules())
    prefix = _encoder_prefix(model)  # the text tower is never exported (its features are: models/text.py)
    for name, module in list(model.named_modules()):
        if name.startswith(prefix) and isinstance(module, SelfAttention) and isinstance(ref.get(name), nn.MultiheadAttention):
            set_part(model, name, _implicit_attention(module))


# ---------------------------------------------------------------- writing


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _detached(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two keys sharing memory (safetensors refuses shared tensors)."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset())
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _probe(model: nn.Module, resolution: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, resolution, resolution, generator=g)
    with torch.no_grad():
        return model.eval()(x).float()


# Names that look like a file of a model rather than a folder: `export run model.onnx` is refused.
MODEL_FILE_SUFFIXES = (".safetensors", ".onnx", ".json", ".pt", ".pth", ".bin", ".ckpt", ".pkl")
WRITTEN = f"{EXPORT_WEIGHTS} and {EXPORT_CONFIG} (and {EXPORT_ONNX} with the onnx package)"


def check_export_folder(out: Path) -> None:
    """``out`` can be the export folder: not a file, nor named like a model file."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"export destination {out} is a file; the export target is a folder (created if "
                          f"missing) that will hold {WRITTEN}.")
    if not out.exists() and out.suffix.lower() in MODEL_FILE_SUFFIXES:
        raise ConfigError(f"export destination {out} is named like a file, but the export target is a folder: "
                          f"tailtune export writes {WRITTEN} into it. Give a folder, e.g. "
                          f"{out.with_suffix('')} (then {out.with_suffix('') / EXPORT_WEIGHTS}).")


def export_run(run_dir: str | Path, out: str | Path, merge: bool = True, onnx: bool | None = None,
               overwrite: bool = False) -> dict:
    """Export a finished run to the folder ``out``; returns a summary (files, merged methods, ONNX).

    ``merge``: fold mergeable PEFT methods (a ``merge`` of their own) into the weights. ``onnx``: also write
    ``model.onnx`` of the image path; None = when the ``onnx`` package is installed. A file that cannot
    be written (disk full, read-only) is a WriteError naming it; the run is untouched.
    """
    try:
        return _export_run(run_dir, out, merge, onnx, overwrite)
    except WriteError as e:
        raise WriteError(f"{e} The export in {out} is incomplete (the run {run_dir} is untouched); make room, "
                         f"then run `tailtune export {run_dir} {out} --overwrite` again.", e.path) from e


def _export_run(run_dir: str | Path, out: str | Path, merge: bool, onnx: bool | None, overwrite: bool) -> dict:
    run_dir, out = Path(run_dir), Path(out)
    check_export_folder(out)
    metrics = read_metrics(run_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"export folder {out} is not empty; choose another or pass overwrite (--overwrite).")
    cfg = read_config(run_dir)
    classnames = metrics["data"]["classnames"]
    exp = build_without_data(_on_cpu(cfg), classnames)
    load_checkpoint(run_dir / CHECKPOINT, exp.model, exp.backbone.info, classnames,
                    f"run {run_dir} ({METRICS}, dataset {metrics.get('dataset')})")
    model, res = exp.model.float(), exp.backbone.preprocess.resolution
    reference = _probe(model, res)

    names = method_names(cfg.peft)
    merged = [n for n in names if merge and mergeable(n)]
    # Inner layers first (stage order: aft's edited linears sit under LoRA's wrappers), whatever the
    # order peft.method names them in; lora + lora_mlp: one pass.
    in_order = sorted(merged, key=lambda n: PEFT_METHODS.get(n).stage)
    for merge_fn in dict.fromkeys(PEFT_METHODS.get(n).merge for n in in_order):
        merge_fn(model)
    out_cfg = C.from_yaml_text(C.to_yaml(cfg))
    out_cfg.peft.method = "+".join(n for n in names if n not in merged) or "none"
    if isinstance(model.head, TextClassifier):
        # The class list is fixed, so the text side always folds into class features computed
        # once: the export holds them (and the image projection), never the text tower.
        model.head = fixed_text_head(model.head)
        for _, p in text_named_parameters(model.backbone):
            p.requires_grad_(False)
        out_cfg.head.type = "text_features"
        if hasattr(out_cfg.peft, "text"):
            out_cfg.peft.text.method = "none"
    out_cfg.model.pretrained = "none"  # every image-path tensor comes from the export
    out_cfg.train.device = "auto"  # the loader's device= decides
    target = build_without_data(_on_cpu(out_cfg), classnames).model
    _align_attention(model, target)
    state = image_path_state(model)
    check_fit(state, image_path_state(target), "the exported model")
    del target  # three models of the backbone's size would otherwise be alive at the check below

    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    for stale in (out / EXPORT_ONNX, out / (EXPORT_ONNX + ".data")):  # of an export overwritten now
        stale.unlink(missing_ok=True)
    weights = out / EXPORT_WEIGHTS
    write_safetensors(weights, _detached(state), {"format": FORMAT})
    meta = {
        "format": FORMAT, "tailtune_version": __version__, "config": C.to_dict(out_cfg),
        "classnames": list(classnames), "preprocess": asdict(exp.backbone.preprocess),
        "preprocessing": preprocessing_spec(exp.backbone.preprocess, cfg.eval.tte, tte_options(cfg)),
        "backbone": exp.backbone.info, "num_classes": len(classnames), "merged": merged,
        "source_run": str(run_dir.resolve()), "group_names": metrics["data"].get("group_names"),
        "groups": metrics["data"].get("groups"),
        "test": {k: metrics["test"].get(k) for k in ("overall", "tte", "views_per_image")},
        "weights_sha256": _sha256(weights),
    }
    write_text(out / EXPORT_CONFIG, json.dumps(meta, indent=2))

    loaded = load_export(out, device="cpu", precision="fp32")[0].model.float()
    again = _probe(loaded, res)
    if not torch.allclose(again, reference, rtol=1e-4, atol=1e-4 * max(1.0, reference.abs().max().item())):
        raise RuntimeError(f"export check failed: the exported model's logits differ from the run's by up to "
                           f"{(again - reference).abs().max().item():.3g}; please report this as a bug.")
    summary = {"out": str(out), "weights": str(weights), "config": str(out / EXPORT_CONFIG), "merged": merged,
               "tensors": len(state), "parameters": int(sum(v.numel() for v in state.values())),
               "max_logit_difference": float((again - reference).abs().max()), "onnx": None}
    summary["onnx"] = export_onnx(model, res, out / EXPORT_ONNX, required=bool(onnx)) if onnx is not False else None
    return summary


# ---------------------------------------------------------------- ONNX


def export_onnx(model: nn.Module, resolution: int, path: Path, required: bool = False) -> dict:
    """Write the image -> logits path as ONNX (batch size dynamic). Without the ``onnx`` and
    ``onnxscript`` packages it is skipped (an error if ``required``); the result says which."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        if required:
            raise ConfigError("ONNX export needs the onnx and onnxscript packages: "
                              "`pip install onnx onnxscript`.") from None
        return {"written": False, "reason": "the onnx / onnxscript packages are not installed"}
    model = model.float().eval()
    x = torch.zeros(2, 3, resolution, resolution)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes={"images": {0: batch}}, verbose=False)
    except torch.onnx.errors.OnnxExporterError as e:  # an operator or construct ONNX cannot express
        if required:
            raise ConfigError(f"this backbone cannot be exported to ONNX: {str(e).splitlines()[0]}") from None
        return {"written": False, "reason": f"the backbone does not export: {str(e).splitlines()[0]}"}
    with writing(path):
        program.save(str(path))
    result = {"written": True, "path": str(path)}
    result.update(_check_onnx(model, path, resolution))
    return result


def _check_onnx(model: nn.Module, path: Path, resolution: int) -> dict:
    """Max |logit difference| between onnxruntime and PyTorch on a probe batch, if onnxruntime exists."""
    try:
        import onnxruntime
    except ImportError:
        return {"checked": False}
    x = torch.randn(3, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).float().numpy()
    return {"checked": True, "max_logit_difference": float(np.abs(got - want).max())}


# ---------------------------------------------------------------- reading


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is an export folder (``config.json`` + ``model.safetensors``)."""
    path = Path(path)
    return (path / EXPORT_CONFIG).is_file() and (path / EXPORT_WEIGHTS).is_file()


def read_export_config(path: str | Path) -> dict:
    """The export's ``config.json``, checked strictly (format, keys, class count)."""
    path = Path(path)
    cfg_path = path / EXPORT_CONFIG
    try:
        meta = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {cfg_path}: {e}.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{cfg_path} is not a tailtune export (format {got!r}, expected {FORMAT!r}).")
    missing = [k for k in _REQUIRED if k not in meta]
    unknown = sorted(set(meta) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise CheckpointError(f"{cfg_path} is incomplete or altered: missing {missing}, unknown {unknown}; "
                              "export the run again.")
    if len(meta["classnames"]) != meta["num_classes"]:
        raise CheckpointError(f"{cfg_path} lists {len(meta['classnames'])} class names for "
                              f"{meta['num_classes']} classes.")
    return meta


def load_export(path: str | Path, device: str = "auto", precision: str | None = None):
    """(Experiment with the exported weights loaded, export metadata); strict on every tensor.
    ``precision``: an ``eval.precision`` value in place of the run's own."""
    path = Path(path)
    meta = read_export_config(path)
    weights = path / EXPORT_WEIGHTS
    if _sha256(weights) != meta["weights_sha256"]:
        raise CheckpointError(f"{weights} does not belong to {path / EXPORT_CONFIG} (checksum differs): "
                              "the files come from different exports or the weights were changed.")
    cfg = C.merge_layers([(f"{path / EXPORT_CONFIG}", meta["config"])])
    if cfg.model.pretrained != "none":
        raise CheckpointError(f"{path / EXPORT_CONFIG}: model.pretrained must be 'none' in an export.")
    cfg = inference_config(cfg, device, precision, f"export {path}")
    exp = build_without_data(cfg, meta["classnames"], meta.get("groups"))
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights} is truncated or corrupt ({e}).") from None
    expected = image_path_state(exp.model)
    check_fit(tensors, expected, str(weights), optional=exp.model.saved_buffer_names())
    state = exp.model.state_dict()
    with torch.no_grad():
        for k, v in tensors.items():
            state[k].copy_(v)
    exp.backbone.preprocess = Preprocess(**{**meta["preprocess"], "mean": tuple(meta["preprocess"]["mean"]),
                                            "std": tuple(meta["preprocess"]["std"])})
    return exp, meta
