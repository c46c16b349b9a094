"""A finished run's logits (``logits.safetensors``): what post-hoc adjustment and calibration read
instead of running the model over the test (and validation) split again.

The final evaluation of a run writes (``eval.save_logits``) the (N, C) logits of the test split
for each test-time-ensemble mode it evaluated and of the validation split (the run's
``eval.tte``), with what ties them to the model and the data: the checkpoint's own sha256
(metadata ``checkpoint_sha256``) and, per entry, its split, tte, evaluation precision and the
sha256 of the split's labels. A sha256 over the whole content (runtime.checkpoint's checksum)
tells an edited or damaged file.

:class:`RunLogits` hands out a split's logits: the stored ones when the file matches the model
loaded now (its checkpoint's sha256, the split's labels now, the tte, the precision), else the
model's, computed once and kept (``la,taunorm`` share one forward), with the reason; a file
that does not match is never used silently (:meth:`RunLogits.line` says which).

The logits are stored as float32, the dtype the evaluation computed its metrics from: results
from the stored logits are the plain evaluation's to the last bit. float16 would halve the file
but move NLL and ECE in their last digits and can flip a near-tie argmax.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tailtune.errors import CheckpointError, ConfigError
from tailtune.evaluation.evaluate import split_logits
from tailtune.experiment import Experiment
from tailtune.runtime.checkpoint import CHECKSUM, content_sha256, read_snapshot, write_safetensors
from tailtune.runtime.precision import precision_name

FORMAT = "tailtune-logits-1"
AUTO_MAX_BYTES = 512 * 2 ** 20  # eval.save_logits=auto writes the file up to this size
SAVE_CHOICES = (True, False, "auto")


@dataclass
class SplitLogits:
    """One entry of the file: a split's logits with one test-time-ensemble mode."""

    split: str
    tte: str
    logits: np.ndarray  # (N, C) float32: the mean over the views, as the evaluation takes it
    labels: np.ndarray  # (N,) int64
    precision: str  # the evaluation precision (runtime.precision.precision_name)
    views: int  # views per image of the mode


def labels_sha256(labels) -> str:
    """sha256 of a split's labels (int64, in order)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes()).hexdigest()


def logits_nbytes(rows: Sequence[int], num_classes: int) -> int:
    """The size of a logits file holding entries of ``rows`` images each (float32 logits and int64 labels)."""
    return sum(int(n) * (int(num_classes) * 4 + 8) for n in rows)


def save_decision(setting, nbytes: int) -> tuple[bool, str | None]:
    """Whether ``eval.save_logits`` writes a file of ``nbytes``, and the note when auto does not."""
    if setting not in SAVE_CHOICES:
        raise ConfigError(f"eval.save_logits={setting!r} is not valid; choose true, false or auto.")
    if setting != "auto":
        return bool(setting), None
    if nbytes <= AUTO_MAX_BYTES:
        return True, None
    return False, (f"eval.save_logits=auto: the logits are not saved: the file would hold {nbytes / 2 ** 20:,.0f} MiB "
                   f"(auto writes up to {AUTO_MAX_BYTES // 2 ** 20} MiB); `tailtune eval RUN --posthoc` / "
                   "`--calibrate` will run the model again. eval.save_logits=true writes it whatever its size.")


def _key(split: str, tte: str | None = None) -> str:
    """The tensor names: ``<split>/<tte>/logits``, and ``<split>/labels`` once per split."""
    return f"{split}/labels" if tte is None else f"{split}/{tte}/logits"


def save_logits(path: str | Path, entries: Sequence[SplitLogits], checkpoint_sha256: str) -> None:
    """Write ``entries`` (atomically, with a checksum) tied to the checkpoint of sha256 ``checkpoint_sha256``."""
    if not checkpoint_sha256:
        raise ValueError("save_logits needs the checkpoint's sha256")
    tensors, described = {}, []
    for e in entries:
        logits = np.ascontiguousarray(e.logits, dtype=np.float32)
        labels = np.ascontiguousarray(e.labels, dtype=np.int64)
        if logits.ndim != 2 or labels.shape != (logits.shape[0],):
            raise ValueError(f"logits of {e.split} ({e.tte}) have shape {logits.shape}, labels {labels.shape}")
        if _key(e.split) in tensors and not np.array_equal(tensors[_key(e.split)].numpy(), labels):
            raise ValueError(f"two entries of the {e.split} split have different labels")
        tensors[_key(e.split, e.tte)] = torch.from_numpy(logits.copy())
        tensors[_key(e.split)] = torch.from_numpy(labels.copy())
        described.append({"split": e.split, "tte": e.tte, "precision": e.precision, "views": int(e.views),
                          "images": int(logits.shape[0]), "classes": int(logits.shape[1]),
                          "labels_sha256": labels_sha256(labels)})
    meta = {"format": FORMAT, "checkpoint_sha256": checkpoint_sha256, "entries": json.dumps(described)}
    write_safetensors(path, tensors, meta, checksum=True)


def read_logits(path: str | Path) -> tuple[str, dict[tuple[str, str], SplitLogits]]:
    """(checkpoint sha256, {(split, tte): entry}) of a logits file; CheckpointError naming what is
    wrong with a file that is unreadable, edited or damaged, or not a logits file."""
    path = Path(path)
    try:
        meta, tensors = read_snapshot(path, "the logits file")
    except CheckpointError:
        raise CheckpointError(f"the logits file {path} is truncated or not a safetensors file.") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"the logits file {path} is not a tailtune logits file (format {meta.get('format')!r}, "
                              f"expected {FORMAT!r}).")
    if CHECKSUM not in meta or content_sha256(tensors, meta) != meta[CHECKSUM]:
        raise CheckpointError(f"the logits file {path} is damaged or edited: its contents do not match the sha256 "
                              "checksum written with it.")
    out = {}
    try:
        for d in json.loads(meta["entries"]):
            logits = tensors[_key(d["split"], d["tte"])].numpy()
            labels = tensors[_key(d["split"])].numpy()
            if logits.shape != (d["images"], d["classes"]) or labels_sha256(labels) != d["labels_sha256"]:
                raise ValueError(f"{d['split']} ({d['tte']}) does not match its description")
            out[(d["split"], d["tte"])] = SplitLogits(d["split"], d["tte"], logits, labels, d["precision"], d["views"])
        sha = meta["checkpoint_sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"the logits file {path} is malformed ({e}).") from None
    return sha, out


Compute = Callable[[str, str], tuple[np.ndarray, np.ndarray, int]]  # (split, tte) -> (logits, labels, views)


class RunLogits:
    """A run's logits per (split, tte), for post-hoc adjustment and calibration: read from its
    logits file when that matches the model loaded now, else computed by ``compute`` (the model,
    once per split and mode).

    ``path``: the run's logits file (None or missing: computed); ``checkpoint_sha256``: the sha256
    of the checkpoint the model was loaded from (None: the file cannot be tied to it, computed);
    ``labels``: (split) -> the split's labels now; ``precision``: the evaluation precision now.
    """

    def __init__(self, compute: Compute, labels: Callable[[str], np.ndarray], precision: str,
                 path: str | Path | None = None, checkpoint_sha256: str | None = None, why_not: str | None = None):
        self._compute, self._labels, self.precision = compute, labels, precision
        self.path = Path(path) if path is not None else None
        self._stored: dict[tuple[str, str], SplitLogits] = {}
        self._kept: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, int]] = {}
        self.sources: dict[tuple[str, str], str | None] = {}  # (split, tte) -> None (stored) or why computed
        self._why = why_not  # why the file is not read at all
        if self._why is None:
            self._why = self._open(checkpoint_sha256)

    def _open(self, checkpoint_sha256: str | None) -> str | None:
        if self.path is None:
            return "no logits file"
        if not self.path.is_file():
            return f"no {self.path.name} in the run folder (eval.save_logits)"
        try:
            sha, self._stored = read_logits(self.path)
        except CheckpointError as e:
            return f"{e} Not used"  # the model's logits are the truth; this file only saves running it
        if not checkpoint_sha256:
            self._stored = {}
            return f"the checkpoint carries no sha256 (an older tailtune): {self.path.name} cannot be tied to it"
        if sha != checkpoint_sha256:
            self._stored = {}
            return (f"{self.path} was written for another checkpoint (sha256 {sha[:12]}..., the run's "
                    f"checkpoint.safetensors has {checkpoint_sha256[:12]}...): a stale file, not used")
        return None

    def get(self, split: str, tte: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(logits (N, C) float32, labels (N,) int64, views per image) of ``split`` with ``tte``."""
        key = (split, tte)
        if key in self._kept:
            return self._kept[key]
        why = self._why or self._mismatch(key)
        if why is None:
            e = self._stored[key]
            out = (e.logits, e.labels, e.views)
        else:
            logits, labels, views = self._compute(split, tte)
            out = (np.asarray(logits, dtype=np.float32), np.asarray(labels, dtype=np.int64), views)
        self.sources[key] = why
        self._kept[key] = out
        return out

    def _mismatch(self, key: tuple[str, str]) -> str | None:
        split, tte = key
        e = self._stored.get(key)
        if e is None:
            held = ", ".join(f"{s} {t}" for s, t in self._stored) or "nothing"
            return f"{self.path.name} holds no {split} logits with tte {tte} (it holds {held})"
        if e.precision != self.precision:
            return f"{self.path.name}'s {split} logits were computed in {e.precision}, this evaluation is in {self.precision}"
        if labels_sha256(self._labels(split)) != labels_sha256(e.labels):
            return (f"{self.path.name}'s {split} labels differ from the {split} split's labels now (the data changed "
                    "since the run): not used")
        return None

    @property
    def forwards(self) -> int:
        """How many (split, tte) the model was run for."""
        return sum(why is not None for why in self.sources.values())

    def line(self) -> str:
        """One line: where the logits handed out came from (and why the model was run)."""
        stored = [f"{s} {t}" for (s, t), why in self.sources.items() if why is None]
        computed = [(f"{s} {t}", why) for (s, t), why in self.sources.items() if why is not None]
        parts = []
        if stored:
            parts.append(f"read from {self.path} ({', '.join(stored)})" + ("" if computed else ": no model forward"))
        if computed:
            whys = list(dict.fromkeys(why for _, why in computed))
            parts.append(f"computed by the model ({', '.join(n for n, _ in computed)}): {'; '.join(whys)}")
        return "logits: " + ("; ".join(parts) if parts else "none used")


def run_logits(exp: Experiment, path: str | Path | None, checkpoint_sha256: str | None, quiet: bool = True,
               recompute: bool = False) -> RunLogits:
    """:class:`RunLogits` of a run's model ``exp`` (loaded from the checkpoint of sha256
    ``checkpoint_sha256``) and its logits file ``path``; ``recompute``: run the model whatever
    the file holds."""
    def compute(split: str, tte: str):
        logits, labels, views, _ = split_logits(exp, tte, split, quiet)
        return logits, labels, views

    def labels(split: str) -> np.ndarray:
        return np.asarray(getattr(exp.data, split).targets, dtype=np.int64)

    return RunLogits(compute, labels, precision_name(exp.eval_dtype), path, checkpoint_sha256,
                     "asked to recompute them" if recompute else None)
