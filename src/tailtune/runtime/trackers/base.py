"""What a run gives an experiment tracker, and how one is opened for a run folder.

A tracker gets what the run writes to TensorBoard (the same tags at the same steps), the
resolved config as parameters (dotted keys: ``train.lr``), the final metrics (the numbers of
metrics.json, dotted keys: ``test.overall``) and the run's files (config, metrics, report,
checkpoint). The tracker run's id is kept in the run folder (``tracker.json``, see
runtime/rundir.py), so ``tailtune train --resume`` continues the same tracker run.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tailtune import config as C
from tailtune.config.changes import flat
from tailtune.errors import ConfigError
from tailtune.registry import Registry
from tailtune.runtime.files import write_text

TRACKERS: Registry = Registry("tracker", section="log", fills="log.tracker", chosen_by="log.tracker")  # options: log.<name>.*


class Tracker:
    """The tracker of one run (this base: none, TensorBoard only). A tracker module registers a
    subclass whose :meth:`start` opens (or, given the saved record, continues) its run."""

    name = "none"

    @classmethod
    def start(cls, cfg: C.Config, run_path: Path, saved: dict | None) -> Tracker:
        """The tracker run of the run in ``run_path``; ``saved``: its record (tracker.json) when
        the run is resumed, to continue the same tracker run."""
        return cls()

    def record(self) -> dict:
        """What tracker.json keeps to find this tracker run again."""
        return {}

    def params(self, values: dict[str, Any], resumed: bool) -> None:
        """The config, as ``{"section.key": value}``; ``resumed``: the run's parameters are logged already."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard's scalars of ``step``."""

    def metrics(self, values: dict[str, float], step: int) -> None:
        """The final metrics (the numbers of metrics.json)."""

    def files(self, paths: list[Path]) -> None:
        """Files (or folders) of the finished run: report, checkpoint, metrics."""

    def end(self, ok: bool) -> None:
        """Close the tracker run: finished (``ok``) or stopped by an error or a signal (resumable)."""

    def discard(self) -> None:
        """The run folder is removed (the run failed before training started): so is the tracker run."""


@TRACKERS.register("none", help="no tracker: TensorBoard only (the run folder's tb/)")
class NoTracker(Tracker):
    pass


def require(module: str, tracker: str, package: str) -> Any:
    """Import ``module`` (a tracker's own package), or raise the error that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"log.tracker={tracker} needs the {package} package, which cannot be imported ({e}): "
                          f"pip install 'tailtune[{tracker}]' (or set log.tracker=none).") from None


def as_text(value: Any) -> str:
    """A parameter's value for a tracker that keeps text (MLflow): lists as JSON."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")


def numbers_of(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics dict under dotted keys (lists, texts and booleans left out:
    the history is in the scalars, the rest in metrics.json)."""
    out: dict[str, float] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            name = _KEY.sub("_", f"{prefix}{key}")
            if isinstance(value, dict):
                walk(value, f"{name}.")
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out[name] = float(value)

    walk({k: v for k, v in metrics.items() if k != "history"}, "")
    return out


def open_tracker(cfg: C.Config, run_path: Path, record: Path, resume: bool,
                 log: Callable[[str], None]) -> Tracker:
    """The tracker ``cfg.log.tracker`` for the run in ``run_path``, its parameters logged.

    ``record``: the run folder's tracker.json. A resumed run whose record names this tracker
    continues that tracker run; otherwise a new one starts, and the record is written.
    """
    cls = TRACKERS.get(cfg.log.tracker)
    if cls is NoTracker:
        return NoTracker()
    saved = None
    if resume and record.is_file():
        try:
            saved = json.loads(record.read_text())
        except (OSError, ValueError) as e:
            log(f"note: {record} cannot be read ({e}): the resumed run starts a new {cls.name} run.")
        if saved is not None and saved.get("tracker") != cls.name:
            log(f"note: {record} names a {saved.get('tracker')!r} run, not {cls.name}: a new {cls.name} run starts.")
            saved = None
    tracker = cls.start(cfg, run_path, saved)
    write_text(record, json.dumps({"tracker": cls.name, **tracker.record()}, indent=2))
    tracker.params(flat(cfg), resumed=saved is not None)
    log(f"tracker: {cls.name}, " + ", ".join(f"{k} {v}" for k, v in tracker.record().items())
        + (" (continued)" if saved is not None else ""))
    return tracker
