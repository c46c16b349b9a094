"""``tailtune eval RUN --posthoc la|taunorm``: a finished run adjusted post hoc (no retraining),
before / after on its test split, recorded in its metrics.json under ``"posthoc"``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from tailtune.errors import ConfigError
from tailtune.evaluation.logits import run_logits
from tailtune.evaluation.posthoc import AUTO, METHODS, check_taunorm, no_val_error, posthoc_results
from tailtune.experiment import load_run
from tailtune.runtime.checkpoint import stored_sha256
from tailtune.runtime.files import write_text
from tailtune.runtime.rundir import (
    CHECKPOINT,
    LOCK,
    LOGITS,
    METRICS,
    RunLock,
    check_run,
    read_config,
    read_metrics,
)

_log = logging.getLogger(__name__)


def parse_taus(text: str) -> list:
    """``--tau``: ``auto``, a number >= 0, or several separated by commas (``0,0.5,1,auto``)."""
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if part == AUTO:
            out.append(AUTO)
            continue
        try:
            value = float(part)
        except ValueError:
            value = None
        if value is None or not value >= 0 or value == float("inf"):
            raise ConfigError(f"--tau {text!r}: give auto, a number >= 0 or several separated by commas "
                              "(e.g. --tau 0,0.5,1,auto).")
        out.append(value)
    if len(set(out)) != len(out):
        raise ConfigError(f"--tau {text!r} repeats a value; list each once.")
    return out


def parse_methods(text: str) -> list[str]:
    """``--posthoc``: la, taunorm, or both separated by a comma."""
    methods = [m.strip() for m in str(text).split(",")]
    bad = [m for m in methods if m not in METHODS]
    if bad or len(set(methods)) != len(methods):
        raise ConfigError(f"--posthoc {text!r}: choose {' or '.join(METHODS)} (or both: la,taunorm).")
    return methods


def posthoc_eval(run_dir: str | Path, methods: Sequence[str], taus: Sequence, tte: str | None = None,
                 precision: str | None = None, device: str | None = None, quiet: bool = True,
                 recompute: bool = False, say: Callable[[str], None] = _log.info) -> list[dict]:
    """Each method's before / after on the run's test split (evaluation.posthoc.posthoc_results).
    Refusals (taunorm on a head that normalises its class vectors, --tau auto without a
    validation split) come before the model is loaded.

    The logits are the run's stored ones (logits.safetensors) when they match the checkpoint,
    the split's labels, the tte and the precision; else the model's, one forward per split for
    every method (``recompute``: the model's whatever is stored). ``say`` gets the one line
    telling which (and why)."""
    folder = check_run(run_dir)
    where = f"run {run_dir}"
    cfg = read_config(folder)
    for m in methods:
        if m == "taunorm":
            check_taunorm(cfg.head.type, where)
    if AUTO in taus and not read_metrics(folder)["data"].get("val_images"):
        raise no_val_error(where, methods[0])
    exp = load_run(folder, precision=precision, device=device)
    logits = run_logits(exp, folder / LOGITS, stored_sha256(folder / CHECKPOINT, "checkpoint"), quiet, recompute)
    results = [posthoc_results(exp, m, taus, tte, quiet, where, logits) for m in methods]
    say(logits.line())
    return results


def entry(result: dict, row: dict) -> dict:
    """The metrics.json record of one adjustment (keys agreed for issue 17)."""
    return {"method": result["method"], "tau": row["tau"], "tau_from": row["tau_from"], "split": result["split"],
            "before": result["before"], "after": row["after"]}


def record_posthoc(run_dir: str | Path, entries: Sequence[dict]) -> Path:
    """Add ``entries`` to the run's metrics.json ``"posthoc"`` list, each replacing the entry of its
    own method; under the run folder's lock, written atomically."""
    folder = check_run(run_dir)
    with RunLock.take(folder, way_out=f"delete {folder / LOCK}"):
        metrics = json.loads((folder / METRICS).read_text())
        methods = {e["method"] for e in entries}
        kept = [e for e in metrics.get("posthoc") or [] if e.get("method") not in methods]
        metrics["posthoc"] = kept + list(entries)
        write_text(folder / METRICS, json.dumps(metrics, indent=2))
    return folder / METRICS
