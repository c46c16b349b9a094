"""A run's folder: resolved config, log, TensorBoard scalars (and an experiment tracker's), checkpoint and metrics.

This module owns the names of every file and folder in a run folder (and in the folders
that gather runs: a comparison, a sweep); the rest of the library joins paths with these
constants, and :func:`check_run` is the one test of "is this a (finished) run folder".
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

from tailtune import config as C
from tailtune.errors import ConfigError, FolderInUse
from tailtune.runtime.files import write_error, write_text, writing
from tailtune.runtime.trackers import NoTracker, Tracker, open_tracker
from tailtune.runtime.trackers.base import numbers_of

_log = logging.getLogger(__name__)

# ---- a run folder, in the order a run writes it
CONFIG = "config.yaml"  # the resolved config, written first: a folder without it is no run folder
LOG = "log.txt"  # every line the run logged
TB = "tb"  # folder of TensorBoard scalars (training curves)
TRACKER = "tracker.json"  # log.tracker's run (its id): a resumed run continues it
STATE = "train_state.safetensors"  # resumable training state; removed when the run finishes
SPLITS = "splits.json"  # which images went to train / val / test
CHECKPOINT = "checkpoint.safetensors"  # the trained weights (trainable part) with config and checksums
PREDICTIONS = "predictions.npz"  # test labels and predictions per test-time-ensemble mode
LOGITS = "logits.safetensors"  # test (per tte mode) and val logits, for post-hoc and calibration (eval.save_logits)
METRICS = "metrics.json"  # written last: a run folder with it holds a finished run
REPORT = "report.html"  # the run's (or a comparison's) self-contained report page
FIGURES = "report"  # folder of the report's PNGs
LOCK = "run.lock"  # while a process writes the folder: its PID, host and start (RunLock)
# ---- a folder of several runs
COMPARISON = "comparison.json"  # the numbers of a comparison report (beside its report.html)
SWEEP = "sweep.json"  # a sweep's points and their overrides
SWEEP_LOGS = "logs"  # folder of the sweep's per-point console logs

_RUN_ONLY_KEYS = ("overwrite:", "quiet:")


def comparable_config(config_yaml: str) -> str:
    """A run's config without the keys that do not change what it computes."""
    return "\n".join(line for line in config_yaml.splitlines() if not line.startswith(_RUN_ONLY_KEYS))


def default_name(cfg: C.Config) -> str:
    model = re.sub(r"[^A-Za-z0-9.-]+", "-", cfg.model.name)
    peft = cfg.peft.method.replace("+", "-")
    return f"{cfg.data.name}_{model}_{peft}_{time.strftime('%Y%m%d-%H%M%S')}"


def run_path(cfg: C.Config, path: str | Path | None = None) -> Path:
    """The folder of a new run: ``path``, or output_dir/name (name: a default with the time)."""
    return Path(path) if path else Path(cfg.output_dir) / (cfg.name or default_name(cfg))


def _clear_keeping_lock(path: Path) -> None:
    """Empty a run folder that a new run replaces, but for the lock its process holds."""
    for p in path.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def check_run(path: str | Path, finished: bool = True) -> Path:
    """``path`` as a run folder; raises ConfigError if it is none or, with ``finished``, if its run
    did not finish (no metrics.json: stopped, failed or still running)."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise ConfigError(f"{path} is not a tailtune run folder (no {CONFIG}).")
    if finished and not (path / METRICS).is_file():
        resume = (f"; `tailtune train --resume {path}` continues it" if (path / STATE).is_file() else "")
        raise ConfigError(f"{path} has no {METRICS} (an unfinished run): it did not finish{resume}.")
    return path


def read_config(run_dir: str | Path) -> C.Config:
    """The config a run folder was trained with."""
    path = check_run(run_dir, finished=False) / CONFIG
    return C.from_yaml_text(path.read_text(), str(path))


class RunDir:
    """Creates and writes one run folder; ``log`` appends to ``log.txt`` and logs the line."""

    def __init__(self, path: Path, quiet: bool = False):
        self.path = path
        self.quiet = quiet
        try:
            self._log = open(path / LOG, "a", encoding="utf-8")
        except OSError as e:
            raise write_error(path / LOG, e, "Nothing in the folder was changed; make it writable (or make "
                              "room), then run the command again.") from e
        self._tb = None
        self._tracker: Tracker = NoTracker()

    @classmethod
    def create(cls, cfg: C.Config, path: str | Path | None = None) -> RunDir:
        path = run_path(cfg, path)
        if path.exists() and any(p.name != LOCK for p in path.iterdir()):
            cls._check_reuse(path, cfg)
            _clear_keeping_lock(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"cannot write to output folder {path}: {e.strerror}. "
                              "Set output_dir=... to a writable folder.") from None
        write_text(path / CONFIG, C.to_yaml(cfg))
        return cls(path, cfg.quiet)

    @classmethod
    def open(cls, path: str | Path, quiet: bool = False) -> RunDir:
        """An existing run folder, to continue an interrupted run in it."""
        path = check_run(path, finished=False)
        if (path / METRICS).exists():
            raise ConfigError(f"{path} holds a finished run: nothing to resume.")
        if not (path / STATE).exists():
            raise ConfigError(f"{path} has no saved training state ({STATE}): it stopped before its first "
                              "save. Start it again (same command, or overwrite=true).")
        return cls(path, quiet)

    @staticmethod
    def _check_reuse(path: Path, cfg: C.Config) -> None:
        """May this existing folder be replaced by a new run of ``cfg``? Raise if not."""
        if not (path / CONFIG).exists():
            raise ConfigError(f"output folder {path} exists and holds other files; choose another "
                              "name (name=...) or empty it.")
        if cfg.overwrite:
            return
        same = comparable_config(C.to_yaml(cfg)) == comparable_config((path / CONFIG).read_text())
        if not same:
            unfinished = (f" It is unfinished: `tailtune train --resume {path}` continues it with its own config."
                          if (path / STATE).exists() else "")
            raise ConfigError(f"output folder {path} already holds a different run; choose another name "
                              f"(name=...), or pass overwrite=true to replace it.{unfinished}")
        if (path / METRICS).exists():
            raise ConfigError(f"output folder {path} already holds this run, finished; pass overwrite=true "
                              "to run it again, or choose another name (name=...).")
        if (path / STATE).exists():
            raise ConfigError(f"output folder {path} holds this run, unfinished; continue it with "
                              f"`tailtune train --resume {path}` or pass overwrite=true to start again.")

    def rewrite_config(self, cfg: C.Config) -> None:
        """Replace config.yaml (atomically): a resume that extends the run records it there."""
        write_text(self.path / CONFIG, C.to_yaml(cfg))

    def log(self, msg: str, console: bool = True) -> None:
        """``msg`` into log.txt (always: the run's record), and to the ``tailtune`` logger: at INFO,
        or at DEBUG (off the CLI's console) for a quiet run or a line the caller says itself."""
        with writing(self.path / LOG):
            self._log.write(msg + "\n")
            self._log.flush()
        _log.log(logging.INFO if console and not self.quiet else logging.DEBUG, msg)

    def log_error(self, msg: str) -> None:
        """``msg`` (an error the caller shows on the console) into log.txt only, if it can still be
        written: the error may be that log.txt cannot."""
        try:
            if not self._log.closed:
                self._log.write(msg + "\n")
                self._log.flush()
            else:
                with open(self.path / LOG, "a", encoding="utf-8") as f:
                    f.write(msg + "\n")
        except OSError:
            pass  # the console shows it (the disk is full, or the folder read-only)

    def track(self, cfg: C.Config, resume: bool) -> None:
        """Open ``cfg.log.tracker`` (none: nothing) for the run, its config logged as parameters;
        a resumed run continues the tracker run named in tracker.json."""
        self._tracker = open_tracker(cfg, self.path, self.path / TRACKER, resume, self.log)

    def track_files(self, names: list[str]) -> None:
        """Give the tracker the run's files (those of ``names`` that exist) and end its run, finished."""
        tracker, self._tracker = self._tracker, NoTracker()
        tracker.files([self.path / n for n in names if (self.path / n).exists()])
        tracker.end(ok=True)

    def scalars(self, step: int, values: dict) -> None:
        self._tracker.scalars(step, values)
        if self._tb is None:
            # Here, at the first scalar: tensorboard's writer is slow to import.
            from torch.utils.tensorboard import SummaryWriter

            with writing(self.path / TB):
                self._tb = SummaryWriter(str(self.path / TB))
        with writing(self.path / TB):
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def write_metrics(self, metrics: dict, name: str = METRICS, step: int = 0) -> None:
        """``metrics`` into ``name``; metrics.json's numbers go to the tracker too (at ``step``)."""
        write_text(self.path / name, json.dumps(metrics, indent=2))
        if name == METRICS:
            self._tracker.metrics(numbers_of(metrics), step)

    def discard(self) -> None:
        """Remove the folder of a run that failed before training started (and its tracker run)."""
        tracker, self._tracker = self._tracker, NoTracker()
        try:
            tracker.discard()
        finally:
            self.close()
            shutil.rmtree(self.path, ignore_errors=True)

    def close(self, tracker: bool = True) -> None:
        """Close the TensorBoard writer and log.txt; with ``tracker``, end the tracker's run if still
        open (as stopped: a finished run ends it with :meth:`track_files`)."""
        tb, self._tb = self._tb, None
        active = NoTracker()
        if tracker:
            active, self._tracker = self._tracker, NoTracker()
        try:
            try:
                active.end(ok=False)
            finally:
                if tb is not None:
                    with writing(self.path / TB):
                        tb.close()
        finally:
            if not self._log.closed:
                try:
                    self._log.close()
                except OSError as e:  # its last flush
                    raise write_error(self.path / LOG, e) from e


class NullRun:
    """What ranks other than 0 get under torchrun: the folder's path, and no writing."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, msg: str, console: bool = True) -> None:
        pass

    def log_error(self, msg: str) -> None:
        pass

    def track(self, cfg: C.Config, resume: bool) -> None:
        pass  # rank 0 alone logs to the tracker

    def track_files(self, names: list[str]) -> None:
        pass

    def scalars(self, step: int, values: dict) -> None:
        pass

    def write_metrics(self, metrics: dict, name: str = METRICS, step: int = 0) -> None:
        pass

    def discard(self) -> None:
        pass

    def close(self, tracker: bool = True) -> None:
        pass


def read_metrics(run_dir: str | Path) -> dict:
    """The metrics of a finished run."""
    return json.loads((check_run(run_dir) / METRICS).read_text())


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: /proc, in clock ticks since boot), to tell a reused PID
    from the lock's owner; None where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _running(owner: dict) -> bool:
    """Is the lock's owner (a process on this host) still running?"""
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    started, now = owner.get("process_start"), _process_start(pid)
    return not (started and now and started != now)  # the same PID, another process: the owner is gone


class RunLock:
    """The lock of a run folder: ``run.lock`` holds the owner's PID, host, start time and command.

    Taken before anything in the folder is written (``train``, ``train --resume``, ``tailtune
    report``) and released on every way out of the process's work (:meth:`release` in a
    ``finally``). A second process is refused by name. A lock left by a process of this host
    that no longer runs (killed by SIGKILL, a crash) is named in a note and taken over; one of
    another host cannot be checked from here: it is refused with the way out (``break_lock``, or
    deleting the file).
    """

    def __init__(self, path: Path, owner: dict, note: str | None = None, created: list[Path] = ()):
        self.path, self.owner, self.note = path, owner, note
        self._created = list(created)  # folders the lock made: removed again if they stay empty

    @classmethod
    def take(cls, folder: str | Path, break_lock: bool = False,
             way_out: str = "delete that file") -> RunLock:
        """Lock ``folder`` (created if missing) for this process, or raise FolderInUse.

        ``break_lock``: take over a lock whose owner cannot be checked (another host, an unreadable
        file); a running process of this host is refused even then. ``way_out``: how the user
        clears a lock by hand, for the messages (e.g. "pass --break-lock").
        """
        folder = Path(folder)
        lock = folder / LOCK
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot write to output folder {folder}: {e.strerror}. "
                              "Set output_dir=... to a writable folder.") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv)}
        note = None
        for _ in range(5):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                note = cls._judge(lock, break_lock, way_out)  # raises while the owner may run
                continue
            except OSError as e:
                raise ConfigError(f"cannot write the lock {lock}: {e.strerror}. Set output_dir=... to a "
                                  "writable folder.") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            if note:
                _log.warning(note)
            return cls(lock, me, note, created)
        raise FolderInUse(f"run folder {folder}: another process keeps taking its lock {lock}; "
                          "make sure one process alone runs in it, then run the command again.")

    @staticmethod
    def _judge(lock: Path, break_lock: bool, way_out: str) -> str | None:
        """The lock exists: raise if its owner may still run, else remove it; returns the note."""
        try:
            text = lock.read_text()
        except FileNotFoundError:
            return None  # released meanwhile: try again
        except OSError as e:
            text = f"<unreadable: {e.strerror}>"
        try:
            owner = json.loads(text)
            if not isinstance(owner, dict):
                raise ValueError
        except ValueError:
            owner = None
        folder = lock.parent
        if owner is None:
            if not break_lock:
                raise FolderInUse(f"run folder {folder} holds a lock {lock} that cannot be read ({text[:80]!r}): "
                                  "another process may be writing the folder. If none is, "
                                  f"{way_out} and run the command again.")
            note = f"note: the unreadable lock {lock} is broken (break_lock)."
        else:
            who = (f"process {owner.get('pid')} on host {owner.get('host')} since {owner.get('since')} "
                   f"({owner.get('command') or 'no command recorded'})")
            if owner.get("host") == socket.gethostname():
                if _running(owner):
                    raise FolderInUse(f"run folder {folder} is in use by {who}: two processes writing one run "
                                      f"folder would mix their files. Wait for it to end, or stop it "
                                      f"(kill {owner.get('pid')}) and run the command again.")
                note = (f"note: run folder {folder} was locked by {who}, which no longer runs (killed or "
                        "crashed); its lock is taken over.")
            elif break_lock:
                note = f"note: the lock of {who} on run folder {folder} is broken (break_lock)."
            else:
                raise FolderInUse(f"run folder {folder} is locked by {who}; from this host "
                                  f"({socket.gethostname()}) tailtune cannot tell whether that process still "
                                  f"runs. If it does not, {way_out}, and run the command again.")
        try:
            if lock.read_text() == text:  # still the lock judged (not one another process just took)
                lock.unlink()
        except FileNotFoundError:
            pass
        return note

    def release(self) -> None:
        """Remove the lock if it is still this process's (a discarded folder took it with it), and
        the folders taking it created if nothing else was written in them (a run that failed early)."""
        try:
            if json.loads(self.path.read_text()) == self.owner:
                self.path.unlink()
        except (FileNotFoundError, ValueError):
            pass
        for folder in self._created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote it) or gone: kept as it is
                break

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
