"""A finished run folder read into a :class:`RunRecord`: what reports and comparisons draw from.

It reads ``metrics.json`` (data summary, test metrics with and without the test-time
ensemble, parameters, times), ``config.yaml``, ``predictions.npz`` (test labels and
predictions, for the confusions; written and read here) and the TensorBoard scalars in
``tb/`` (training curves, or the per-epoch history of ``metrics.json`` without them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from tailtune.data.longtail import class_groups
from tailtune.errors import DataError
from tailtune.runtime.files import atomic
from tailtune.runtime.rundir import CONFIG, METRICS, PREDICTIONS, TB, check_run

# ---------------------------------------------------------------- predictions file


def save_predictions(path: str | Path, labels: np.ndarray, preds_by_tte: dict[str, np.ndarray]) -> None:
    """Test labels and predicted classes per test-time-ensemble mode (npz, no pickles)."""
    path = Path(path)
    arrays = {"labels": np.asarray(labels, dtype=np.int64)}
    for tte, preds in preds_by_tte.items():
        preds = np.asarray(preds, dtype=np.int64)
        if preds.shape != arrays["labels"].shape:
            raise ValueError(f"predictions for tte={tte} have shape {preds.shape}, labels {arrays['labels'].shape}")
        arrays[f"pred_{tte}"] = preds
    with atomic(path, suffix=".npz") as tmp:  # numpy adds .npz to a name without it
        np.savez_compressed(tmp, **arrays)


def load_predictions(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels, {tte: predicted classes}) as written by :func:`save_predictions`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable predictions file ({e}); re-run the evaluation.") from None
    if "labels" not in arrays:
        raise DataError(f"{path} has no 'labels' array; it was not written by tailtune.")
    return arrays.pop("labels"), {k[len("pred_"):]: v for k, v in arrays.items() if k.startswith("pred_")}


# ---------------------------------------------------------------- reading a run


@dataclass
class RunRecord:
    """What a report needs from one run folder."""

    path: Path
    metrics: dict
    config: dict
    labels: np.ndarray | None = None
    preds: dict[str, np.ndarray] = field(default_factory=dict)
    curves: dict[str, tuple[list, list]] = field(default_factory=dict)
    epoch_steps: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def data(self) -> dict:
        return self.metrics["data"]

    @property
    def group_names(self) -> list[str]:
        return list(self.data["group_names"])

    @property
    def classnames(self) -> list[str]:
        return list(self.data["classnames"])

    @property
    def counts(self) -> np.ndarray:
        return np.asarray(self.data["train_counts"])

    @property
    def groups(self) -> np.ndarray:
        return class_groups(self.data)

    def evaluations(self) -> list[tuple[str, dict]]:
        """(label, test metrics) for the run's test-time ensemble and, if measured, without it."""
        test = self.metrics["test"]
        rows = [(f"with TTE ({test['tte']})" if test["tte"] != "none" else "no TTE", test)]
        if self.metrics.get("test_no_tte"):
            rows.append(("without TTE", self.metrics["test_no_tte"]))
        return rows


def read_curves(tb_dir: Path) -> tuple[dict[str, tuple[list, list]], list[int]]:
    """Training curves from a run's TensorBoard scalars (the last value wins per step)."""
    if not tb_dir.is_dir() or not any(tb_dir.glob("events.out.tfevents.*")):
        return {}, []
    # Lazy: tensorboard's reader is slow to import, and only a report of a run with scalars needs it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags().get("scalars", []))
    names = {"train/loss": "loss", "train/lr": "lr", "train/running_acc": "running_acc",
             "epoch/loss": "epoch_loss", "epoch/train_acc": "epoch_acc"}
    curves = {}
    for tag, key in names.items():
        if tag in tags:
            by_step = {e.step: e.value for e in acc.Scalars(tag)}
            steps = sorted(by_step)
            curves[key] = (steps, [by_step[s] for s in steps])
    epoch_steps = curves.get("epoch_loss", ([], []))[0]
    return curves, list(epoch_steps)


def _history_curves(history: list[dict]) -> tuple[dict, list[int]]:
    """Per-epoch curves from metrics.json when the run has no TensorBoard scalars."""
    if not history:
        return {}, []
    epochs = list(range(1, len(history) + 1))
    return ({"epoch_loss": (epochs, [h["loss"] for h in history]),
             "epoch_acc": (epochs, [h["accuracy"] for h in history]),
             "lr": (epochs, [h["lr"] for h in history])}, epochs)


def read_run(run_dir: str | Path) -> RunRecord:
    """Load a finished run folder for reporting."""
    path = check_run(run_dir)
    metrics = json.loads((path / METRICS).read_text())
    record = RunRecord(path, metrics, yaml.safe_load((path / CONFIG).read_text()) or {})
    if (path / PREDICTIONS).exists():
        record.labels, record.preds = load_predictions(path / PREDICTIONS)
    record.curves, record.epoch_steps = read_curves(path / TB)
    if not record.curves:
        record.curves, record.epoch_steps = _history_curves(metrics.get("history", []))
    return record


def balanced(test: dict):
    """Mean per-class accuracy of a test evaluation (``mean_class`` in runs from before ``balanced``)."""
    return test.get("balanced", test.get("mean_class"))


def config_value(config: dict, dotted: str, default="–"):
    """``config``'s value at a dotted key (``loss.name``), or ``default`` where it has none."""
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


# The views beyond top-1 accuracy (issue 17) that tables show per group: (key, column title,
# whether lower is better). metrics.json of older runs has none of them.
BEYOND_TOP1 = (("top5", "top-5 (%)", False), ("ece", "ECE (%)", True), ("nll", "NLL (nats)", True))


def beyond_top1(test: dict, groups: list[str]) -> dict:
    """``{"top5": v, "top5_<group>": v, "ece": ..., "nll": ...}`` of a test evaluation: overall from
    the evaluation, per group from its ``group_calibration``; None where the run has no such number."""
    per_group = test.get("group_calibration") or {}
    out = {}
    for key, _, _ in BEYOND_TOP1:
        out[key] = test.get(key)
        for g in groups:
            out[f"{key}_{g}"] = (per_group.get(g) or {}).get(key)
    return out


def has_beyond_top1(values: list[dict], key: str) -> bool:
    """Whether any of the rows (from :func:`beyond_top1`) has a number for ``key``, overall or per group."""
    return any(v is not None for row in values for k, v in row.items() if k == key or k.startswith(f"{key}_"))
