"""Weights & Biases (``log.tracker=wandb``, ``pip install tailtune[wandb]``).

Offline by default (``log.wandb.mode=offline``): the run is written under the run folder
(``RUN/wandb/offline-run-*``), with no account and no network; ``wandb sync RUN/wandb/offline-run-*``
uploads it later. Set ``log.wandb.mode=online`` to log live (after ``wandb login``). W&B's capture
of the console is off (the run's log.txt keeps every line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tailtune import config as C
from tailtune.config import options_of, setting
from tailtune.config.schema import _check_choice
from tailtune.runtime.trackers.base import TRACKERS, Tracker, require

MODES = ("offline", "online", "disabled")


@dataclass
class WandbOptions:
    """wandb: the project, and whether the run is logged live or offline."""

    project: str = setting("tailtune", "W&B project of the run")
    entity: Optional[str] = setting(None, "W&B entity (user or team); null = the account's default")  # noqa: UP045  (OmegaConf reads the annotation)
    mode: str = setting("offline", "offline (files under the run folder; upload later with `wandb sync`) | online (needs `wandb login` and the network) | disabled", choices=MODES)
    dir: Optional[str] = setting(None, "folder W&B writes its wandb/ folder in; null = the run folder")  # noqa: UP045  (OmegaConf reads the annotation)

    def __post_init__(self) -> None:
        _check_choice("log.wandb", "mode", self.mode, MODES)


@TRACKERS.register("wandb", help="Weights & Biases (pip install tailtune[wandb]); offline by default, "
                   "under the run folder", options=WandbOptions)
class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, run, mode: str):
        self.run, self.mode = run, mode
        self._ended = False

    @classmethod
    def start(cls, cfg: C.Config, run_path: Path, saved: dict | None) -> WandbTracker:
        wandb = require("wandb", "wandb", "wandb")
        opts = options_of(cfg.log, "wandb", WandbOptions)
        folder = Path(opts.dir).expanduser() if opts.dir else run_path
        folder.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=opts.project, entity=opts.entity, mode=opts.mode, dir=str(folder),
                         name=run_path.name, id=(saved or {}).get("run_id"), resume="allow",
                         settings=wandb.Settings(console="off", silent=True))
        return cls(run, opts.mode)

    def record(self) -> dict:
        return {"run_id": self.run.id, "mode": self.mode, "dir": str(self.run.dir)}

    def params(self, values: dict, resumed: bool) -> None:
        self.run.config.update(values, allow_val_change=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(dict(values), step=int(step))

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.summary.update(values)

    def files(self, paths: list[Path]) -> None:
        for p in paths:
            if p.is_dir():
                self.run.save(str(p / "*"), base_path=str(p.parent), policy="now")
            elif p.is_file():
                self.run.save(str(p), base_path=str(p.parent), policy="now")

    def end(self, ok: bool) -> None:
        if not self._ended:
            self._ended = True
            self.run.finish(exit_code=0 if ok else 1)

    def discard(self) -> None:
        self.end(False)
