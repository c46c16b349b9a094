"""MLflow (``log.tracker=mlflow``, ``pip install tailtune[mlflow]``: mlflow-skinny, or mlflow).

By default the runs go in a local file store, the folder ``mlruns`` beside the run folder (the
runs of one ``output_dir`` share it): no server, no network; ``mlflow ui --backend-store-uri
file:runs/mlruns`` shows them. MLflow 3 refuses a file store unless ``MLFLOW_ALLOW_FILE_STORE``
is set: with a ``file:`` store this sets it in the process's environment (unless the caller
set it), the one change a tracked run makes to its process. The client API is used, not
``mlflow.start_run``: no active-run state is left in the caller's process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tailtune import config as C
from tailtune.config import options_of, setting
from tailtune.runtime.trackers.base import TRACKERS, Tracker, as_text, require

_BATCH = 100  # MLflow's limit of parameters per log_batch call


@dataclass
class MlflowOptions:
    """mlflow: the tracking store and the experiment the run goes in."""

    tracking_uri: Optional[str] = setting(None, "MLflow tracking URI (a server, sqlite:///file.db, or file:FOLDER); null = the local file store mlruns beside the run folder (output_dir/mlruns), offline")  # noqa: UP045  (OmegaConf reads the annotation)
    experiment: str = setting("tailtune", "MLflow experiment of the run (created if missing)")


def default_uri(run_path: Path) -> str:
    """The file store used when log.mlflow.tracking_uri is null."""
    return (run_path.resolve().parent / "mlruns").as_uri()


@TRACKERS.register("mlflow", help="MLflow (pip install tailtune[mlflow]); default: a local file store "
                   "output_dir/mlruns", options=MlflowOptions)
class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, client, run_id: str, uri: str, experiment: str):
        self.client, self.run_id, self.uri, self.experiment = client, run_id, uri, experiment
        self._ended = False

    @classmethod
    def start(cls, cfg: C.Config, run_path: Path, saved: dict | None) -> MlflowTracker:
        require("mlflow", "mlflow", "mlflow (or mlflow-skinny)")
        from mlflow.tracking import MlflowClient

        opts = options_of(cfg.log, "mlflow", MlflowOptions)
        uri = (saved or {}).get("tracking_uri") or opts.tracking_uri or default_uri(run_path)
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(tracking_uri=uri)
        if saved and saved.get("run_id"):
            client.update_run(saved["run_id"], status="RUNNING")
            return cls(client, saved["run_id"], uri, saved.get("experiment", opts.experiment))
        found = client.get_experiment_by_name(opts.experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(opts.experiment)
        run = client.create_run(experiment_id, run_name=run_path.name,
                                tags={"tailtune.run_folder": str(run_path.resolve())})
        return cls(client, run.info.run_id, uri, opts.experiment)

    def record(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.uri, "experiment": self.experiment}

    def params(self, values: dict, resumed: bool) -> None:
        from mlflow.entities import Param

        if resumed:  # MLflow refuses to change a logged parameter; a resume only adds missing ones
            logged = self.client.get_run(self.run_id).data.params
            values = {k: v for k, v in values.items() if k not in logged}
        items = [Param(k, as_text(v)) for k, v in values.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH])

    def _log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._log(step, values)

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._log(step, values)

    def files(self, paths: list[Path]) -> None:
        for p in paths:
            if p.is_dir():
                self.client.log_artifacts(self.run_id, str(p), artifact_path=p.name)
            elif p.is_file():
                self.client.log_artifact(self.run_id, str(p))

    def end(self, ok: bool) -> None:
        if not self._ended:
            self._ended = True
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "KILLED")

    def discard(self) -> None:
        self.end(False)
        self.client.delete_run(self.run_id)
