"""Experiment trackers beside TensorBoard (``log.tracker``): one module per tracker, registered
in :data:`TRACKERS`; a tracker's own package is imported only when a run uses it."""

from tailtune.runtime.trackers import mlflow, wandb  # noqa: F401  (they register themselves)
from tailtune.runtime.trackers.base import TRACKERS, NoTracker, Tracker, open_tracker

__all__ = ["TRACKERS", "Tracker", "NoTracker", "open_tracker"]
