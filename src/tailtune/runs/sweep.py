"""Sweeps: a grid of ordinary runs over config keys, and one comparison of them.

    tailtune sweep lift peft.r=4,8,16 loss=ce,la seeds=0,1,2 data.root=DIR

An argument ``key=v1,v2,...`` (commas outside brackets and quotes) is an axis of the grid,
``key=value`` a fixed override of every point, and ``seeds=0,1,2`` the axis over
``train.seed`` whose runs are summarised as mean and spread. A recipe's ``recipe.sweep`` field
gives its own axes (an argument for the same key replaces one). The points are the product
of the axes in the order given, the last axis and then the seed changing fastest.

Each point is an ordinary run folder ``<sweep folder>/<point name>/`` trained by
:func:`tailtune.fit`. A point whose folder holds ``metrics.json`` is finished and skipped;
one with a saved training state is resumed; so a sweep that stopped continues when the same
command runs again. At the end the sweep folder gets one comparison report
(``report.html``, ``comparison.json``) with a plot of each swept key against overall,
balanced and per-group accuracy.

Points run one after another in this process by default. With ``parallel > 1`` or a
launcher (``torchrun``) each point is a ``python -m tailtune.cli train`` subprocess.
Clusters keep their own scheduler: :meth:`Sweep.command` is each pending point's command
line, to hand to an existing launcher (submitit, a SLURM array), and :meth:`Sweep.report`
writes the comparison once they are done.

Post-hoc axes need no training: ``posthoc=none,la,taunorm`` and ``posthoc.tau=0,0.5,1,auto``
(default ``auto``) are evaluation-only. The points are the product of the other axes; each
finished point's run is adjusted on its test logits by :func:`tailtune.runs.posthoc.posthoc_eval`
(one test forward per method, every tau from it; tau ``auto`` chosen on the validation split),
cached in ``<sweep folder>/posthoc/<point>.json``, and the sweep's results get one row per
(point, method, tau): ``sweep.json`` ``"posthoc"`` and a table on the page. ``none`` is the run's
own test evaluation. The posthoc keys are not part of the folder names, so adding them to a
finished sweep evaluates its runs without training any again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tailtune import config as C
from tailtune.config.recipes import recipe_info
from tailtune.errors import ConfigError, TailtuneError
from tailtune.evaluation.posthoc import AUTO, METHODS, check_taunorm, no_val_error
from tailtune.experiment import validate
from tailtune.report.compare import compare_runs
from tailtune.report.record import balanced
from tailtune.report.sweep import sweep_sections
from tailtune.runs.posthoc import parse_taus, posthoc_eval
from tailtune.runs.run import fit, resume
from tailtune.runtime.checkpoint import stored_sha256
from tailtune.runtime.files import write_text
from tailtune.runtime.rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    PREDICTIONS,
    STATE,
    SWEEP,
    SWEEP_LOGS,
    comparable_config,
    read_metrics,
)
from tailtune.training.trainer import TrainingInterrupted

_log = logging.getLogger(__name__)
SEEDS = "seeds"
# Evaluation-only axes: post-hoc adjustment of each point's finished run (no config key).
POSTHOC, POSTHOC_TAU, NONE = "posthoc", "posthoc.tau", "none"
POSTHOC_DIR = "posthoc"  # folder of the sweep's cached post-hoc results, one file per point


def _torchrun(nproc: int) -> list[str]:
    # --standalone: a rendezvous on a free local port, so several points can launch at once.
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


# How a point's training process is started, by launcher name: the arguments between the
# Python interpreter and ``-m tailtune.cli``.
LAUNCHERS: dict[str, Callable[[int], list[str]]] = {"torchrun": _torchrun}


@dataclass(frozen=True)
class Axis:
    """One swept key: ``key`` as typed, ``target`` the config key, its values in order."""

    key: str
    target: str
    values: tuple[str, ...]

    @property
    def seeds(self) -> bool:
        return self.key == SEEDS

    @property
    def posthoc(self) -> bool:
        return self.key in (POSTHOC, POSTHOC_TAU)


@dataclass(frozen=True)
class Posthoc:
    """The post-hoc axes of a sweep: methods (``none`` = no adjustment) and taus, as given."""

    methods: tuple[str, ...]
    taus: tuple[str, ...]  # for la / taunorm; "auto" or a number

    @property
    def adjusted(self) -> list[str]:
        return [m for m in self.methods if m != NONE]

    @property
    def tau_values(self) -> list:
        return parse_taus(",".join(self.taus))


@dataclass
class Point:
    """One run of the grid."""

    name: str
    values: dict[str, str]  # axis key -> value
    setting: str  # the point without its seed: runs of one setting differ only in train.seed
    overrides: list[str]  # key=value overrides of this point (fixed ones, then its axis values)
    run_dir: Path
    cfg: C.Config

    @property
    def finished(self) -> bool:
        return (self.run_dir / METRICS).exists()

    @property
    def interrupted(self) -> bool:
        return not self.finished and (self.run_dir / STATE).exists()


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,...`` at the commas outside brackets and quotes (``[0,6]`` is one value)."""
    parts, current, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_arguments(args: list[str] | tuple[str, ...]) -> tuple[list[Axis], list[str]]:
    """Axes (``key=v1,v2``, ``seeds=...``) and fixed overrides (``key=value``) from arguments."""
    axes: list[Axis] = []
    fixed: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"sweep argument {arg!r} is not of the form key=value or key=v1,v2,... "
                              "(e.g. peft.r=4,8,16).")
        if key.split(".")[0] == POSTHOC:
            axes.append(_posthoc_axis(arg, key, value))
            continue
        values = split_values(value)
        if any(v == "" for v in values):
            raise ConfigError(f"sweep argument {arg!r} has an empty value; separate values by single commas.")
        if key == SEEDS:
            if not all(re.fullmatch(r"\d+", v) for v in values):
                raise ConfigError(f"seeds={value} must list whole numbers, e.g. seeds=0,1,2.")
            axes.append(Axis(SEEDS, "train.seed", tuple(values)))
        elif len(values) > 1:
            axes.append(Axis(key, C.SHORTHANDS.get(key, key), tuple(values)))
        else:
            fixed.append(f"{C.SHORTHANDS.get(key, key)}={value}")
    return axes, fixed


def _posthoc_axis(arg: str, key: str, value: str) -> Axis:
    """``posthoc=none,la,taunorm`` or ``posthoc.tau=0,0.5,auto``: an axis even with one value."""
    values = [v.strip() for v in value.split(",")]
    if key == POSTHOC:
        choices = (NONE, *METHODS)
        if any(v not in choices for v in values) or len(set(values)) != len(values):
            raise ConfigError(f"sweep argument {arg!r}: list post-hoc methods among {', '.join(choices)}, each "
                              "once (none: the run as trained), e.g. posthoc=none,la.")
    elif key == POSTHOC_TAU:
        try:
            parse_taus(value)
        except ConfigError as e:
            raise ConfigError(f"sweep argument {arg!r}: {e}".replace("--tau", "posthoc.tau")) from None
    else:
        raise ConfigError(f"sweep argument {arg!r}: the post-hoc axes are posthoc=none,la,taunorm and "
                          "posthoc.tau=0,0.5,1,auto (evaluation only, no training).")
    return Axis(key, key, tuple(values))


def _posthoc_spec(axes: list[Axis]) -> Posthoc | None:
    """The sweep's post-hoc methods and taus (tau auto when only methods are given), or None."""
    given = {a.key: a.values for a in axes if a.posthoc}
    if not given:
        return None
    methods = given.get(POSTHOC)
    if methods is None:
        raise ConfigError("posthoc.tau=... sets the tau of post-hoc adjustment; give the methods too, e.g. "
                          "posthoc=none,la posthoc.tau=0,1.")
    if POSTHOC_TAU in given and all(m == NONE for m in methods):
        raise ConfigError("posthoc.tau=... applies to posthoc=la or taunorm, and posthoc lists only none; add a "
                          "method (posthoc=none,la) or drop posthoc.tau.")
    return Posthoc(tuple(methods), tuple(given.get(POSTHOC_TAU, (AUTO,))))


def _fingerprint(run_dir: Path) -> str:
    """What identifies a finished run's test outputs: a hash of predictions.npz (else of metrics.json)
    and of the checkpoint's sha256. Post-hoc adjusts the logits (stored in logits.safetensors or
    computed), which come from the checkpoint: two checkpoints with the same predicted classes
    have other logits."""
    path = run_dir / PREDICTIONS if (run_dir / PREDICTIONS).exists() else run_dir / METRICS
    h = hashlib.sha256(path.read_bytes())
    if (run_dir / CHECKPOINT).is_file():
        h.update(str(stored_sha256(run_dir / CHECKPOINT, "checkpoint")).encode())
    return h.hexdigest()[:16]


def _measures(test: dict, groups: list[str]) -> dict:
    """The numbers of a post-hoc row from a run's own test evaluation (posthoc=none)."""
    return {"overall": test.get("overall"), "balanced": balanced(test), **{g: test.get(g) for g in groups},
            **{k: test.get(k) for k in ("top5", "ece", "nll")}}


def merge_axes(recipe_axes: list[Axis], axes: list[Axis], fixed: list[str]) -> list[Axis]:
    """The recipe's axes, replaced by arguments for the same key (an axis or a fixed value);
    checks that no key is swept twice or both swept and fixed; the seed axis goes last."""
    fixed_keys = {f.partition("=")[0] for f in fixed}
    given = {a.target for a in axes}
    merged = [a for a in recipe_axes if a.target not in given and a.target not in fixed_keys] + axes
    seen: set[str] = set()
    for a in merged:
        if a.target in seen:
            raise ConfigError(f"{a.target} is swept twice (as {a.key}); give each key one list of values.")
        if a.target in fixed_keys:
            raise ConfigError(f"{a.target} is both swept ({a.key}=...) and fixed; keep one.")
        if len(set(a.values)) != len(a.values):
            raise ConfigError(f"{a.key}={','.join(a.values)} repeats a value; list each value once.")
        seen.add(a.target)
    # Each point's folder is <sweep folder>/<point name>; a fixed output_dir only places the sweep folder.
    if "name" in fixed_keys or seen & {"name", "output_dir"}:
        raise ConfigError("name (and output_dir) are set per point by the sweep; choose the sweep's folder "
                          "with --out DIR.")
    return [a for a in merged if not a.seeds] + [a for a in merged if a.seeds]


def _safe(value: str) -> str:
    """``value`` for a folder name: each run of other characters than letters, digits, ._+- becomes '-'."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", value) or "empty"


@dataclass
class Sweep:
    """A planned grid: its base config, axes, folder and points (see the module docstring)."""

    base: str
    data: str | None
    files: tuple[str, ...]
    fixed: list[str]
    axes: list[Axis]
    dir: Path
    points: list[Point] = field(default_factory=list)
    posthoc: Posthoc | None = None  # evaluation-only axes (not in axes, not in folder names)

    @property
    def grid_axes(self) -> list[Axis]:
        """The axes other than the seeds."""
        return [a for a in self.axes if not a.seeds]

    @property
    def has_seeds(self) -> bool:
        return any(a.seeds for a in self.axes)

    def pending(self) -> list[Point]:
        return [p for p in self.points if not p.finished]

    def command(self, point: Point, launcher: str | None = None, nproc: int = 1) -> list[str]:
        """The command line that trains (or resumes) ``point``, for a subprocess or a cluster job."""
        prefix = [sys.executable]
        if launcher is not None:
            prefix += _launcher(launcher)(nproc)
        prefix += ["-m", "tailtune.cli", "train"]
        if point.interrupted:
            return [*prefix, "--resume", str(point.run_dir)]
        args = ["--recipe", self.base, *(["--data", self.data] if self.data else [])]
        for f in self.files:
            args += ["--config", f]
        return [*prefix, *args, "--run-dir", str(point.run_dir), *point.overrides]

    def describe(self) -> dict:
        """What ``sweep.json`` holds: the spec and every point with its folder and state."""
        return {"base": self.base, "data": self.data, "files": list(self.files), "fixed": self.fixed,
                "axes": [{"key": a.key, "target": a.target, "values": list(a.values)} for a in self.axes],
                "points": [{"name": p.name, "values": p.values, "setting": p.setting, "run_dir": str(p.run_dir),
                            "overrides": p.overrides, "finished": p.finished} for p in self.points],
                **({"posthoc": {"methods": list(self.posthoc.methods), "taus": list(self.posthoc.taus),
                                "rows": self.posthoc_rows([p for p in self.points if p.finished])}}
                   if self.posthoc else {})}

    def posthoc_file(self, point: Point) -> Path:
        return self.dir / POSTHOC_DIR / f"{point.name}.json"

    def _posthoc_key(self, point: Point) -> dict:
        return {"methods": self.posthoc.adjusted, "taus": list(self.posthoc.taus), "run": _fingerprint(point.run_dir)}

    def posthoc_results(self, point: Point) -> list[dict] | None:
        """The cached posthoc_eval results of a finished point for this sweep's methods and taus, if any."""
        path = self.posthoc_file(point)
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        return saved["results"] if saved.get("key") == self._posthoc_key(point) else None

    def evaluate_posthoc(self, log: Callable[[str], None] = _log.info) -> dict[str, str]:
        """Adjust every finished point not evaluated yet (one posthoc_eval per point: each method's test
        forward once, all taus from it); returns the points that failed and why."""
        failed: dict[str, str] = {}
        if self.posthoc is None or not self.posthoc.adjusted:
            return failed
        for p in self.points:
            if not p.finished or self.posthoc_results(p) is not None:
                continue
            log(f"post-hoc {','.join(self.posthoc.adjusted)} (tau {','.join(self.posthoc.taus)}): {p.name}")
            try:
                results = posthoc_eval(p.run_dir, self.posthoc.adjusted, self.posthoc.tau_values)
            except TailtuneError as e:  # e.g. tau auto and the run has no validation split
                failed[f"{p.name} (posthoc)"] = str(e)
                log(f"post-hoc {p.name} failed: {e}")
                continue
            self.posthoc_file(p).parent.mkdir(parents=True, exist_ok=True)
            write_text(self.posthoc_file(p), json.dumps({"key": self._posthoc_key(p), "results": results}, indent=2))
        return failed

    def posthoc_rows(self, points: list[Point]) -> list[dict]:
        """One row per (finished point, method, tau): the point's axis values, ``posthoc``,
        ``posthoc.tau`` (as given; None for none), ``tau`` (the value used: the chosen one for
        auto), ``tau_from`` and the test numbers. Points not evaluated yet have only their none row."""
        rows: list[dict] = []
        for p in points:
            metrics = read_metrics(p.run_dir)
            groups = list(metrics["data"]["group_names"])
            results = {r["method"]: r for r in self.posthoc_results(p) or []}
            for method in self.posthoc.methods:
                base = {"point": p.name, **p.values, POSTHOC: method}
                if method == NONE:
                    rows.append({**base, POSTHOC_TAU: None, "tau": None, "tau_from": None,
                                 **_measures(metrics["test"], groups)})
                for given, r in zip(self.posthoc.taus, results[method]["rows"] if method in results else []):
                    rows.append({**base, POSTHOC_TAU: given, "tau": r["tau"], "tau_from": r["tau_from"], **r["after"]})
        return rows

    def write_plan(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.dir / SWEEP, json.dumps(self.describe(), indent=2))

    def run(self, parallel: int = 1, launcher: str | None = None, nproc: int = 1,
            log: Callable[[str], None] = _log.info) -> dict:
        """Train the pending points, then write the comparison; returns what ran and failed."""
        if parallel < 1 or nproc < 1:
            raise ConfigError(f"--parallel {parallel} / --nproc-per-node {nproc} must be >= 1.")
        if launcher is not None:
            _launcher(launcher)
        self.write_plan()
        pending = self.pending()
        log(f"sweep {self.dir}: {len(self.points)} points, {len(self.points) - len(pending)} finished "
            f"(skipped), {len(pending)} to run")
        if parallel == 1 and launcher is None:
            failed = self._run_here(pending, log)
        else:
            failed = self._run_processes(pending, parallel, launcher, nproc, log)
        failed.update(self.evaluate_posthoc(log))
        self.write_plan()
        report = self.report(evaluate=False)
        if report is not None:
            log(f"comparison: {report}")
        else:
            log("comparison: needs two finished points; none written yet")
        return {"ran": [p.name for p in pending], "failed": failed, "report": report}

    def _run_here(self, pending: list[Point], log) -> dict[str, str]:
        failed = {}
        for i, point in enumerate(pending, 1):
            log(f"[{i}/{len(pending)}] {point.name}" + (" (resuming)" if point.interrupted else ""))
            try:
                if point.interrupted:
                    resume(point.run_dir)
                else:
                    fit(point.cfg, point.run_dir)
            except TrainingInterrupted:
                raise  # a signal stops the whole sweep; running the command again continues it
            except TailtuneError as e:  # e.g. one learning rate diverges: the other points still run
                failed[point.name] = str(e)
                log(f"[{i}/{len(pending)}] {point.name} failed: {e}")
        return failed

    def _run_processes(self, pending: list[Point], parallel: int, launcher: str | None, nproc: int,
                       log) -> dict[str, str]:
        logs = self.dir / SWEEP_LOGS
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        # N processes on one machine: share the cores rather than each taking all of them.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // (parallel * nproc))))
        commands = {p.name: self.command(p, launcher, nproc) for p in pending}

        def launch(point: Point) -> tuple[str, int]:
            log(f"start {point.name}: log in {logs / (point.name + '.log')}")
            with open(logs / f"{point.name}.log", "w", encoding="utf-8") as out:
                rc = subprocess.run(commands[point.name], stdout=out, stderr=subprocess.STDOUT, env=env).returncode
            log(f"{'done' if rc == 0 else f'failed (exit {rc})'}: {point.name}")
            return point.name, rc

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            results = list(pool.map(launch, pending))
        return {name: f"exit status {rc}, see {logs / (name + '.log')}" for name, rc in results if rc != 0}

    def report(self, evaluate: bool = True) -> Path | None:
        """Write the comparison of the finished points into the sweep folder (None if under two);
        first (``evaluate``) adjusts the finished points post hoc that are not evaluated yet."""
        if evaluate:
            self.evaluate_posthoc()
        done = [p for p in self.points if p.finished]
        if len(done) < 2:
            return None
        keys = ", ".join(a.key for a in self.axes) + (f", {POSTHOC}" if self.posthoc else "")
        posthoc = self.posthoc_rows(done) if self.posthoc else None
        return compare_runs([p.run_dir for p in done], self.dir,
                            settings=[p.setting for p in done] if self.has_seeds else None,
                            extra=lambda page, rows, groups: sweep_sections(self, done, page, rows, groups, posthoc),
                            title=f"tailtune sweep of {Path(self.base).stem} over {keys}")


def _launcher(name: str) -> Callable[[int], list[str]]:
    if name not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {name!r}; choose {', '.join(LAUNCHERS)} (or none: points run here).")
    return LAUNCHERS[name]


def default_dir(cfg: C.Config, base: str, axes: list[Axis]) -> Path:
    """``<output_dir>/sweep_<base>_<keys>``: the same command finds the same folder again."""
    keys = "_".join(_safe(a.key) for a in axes)
    return Path(cfg.output_dir) / f"sweep_{_safe(Path(base).stem)}_{keys}"


def plan(base: str, data: str | None = None, files: tuple[str, ...] | list[str] = (),
         args: list[str] | tuple[str, ...] = (), out: str | Path | None = None) -> Sweep:
    """Expand a sweep into points and check every point's config before anything runs.

    Args:
        base: recipe name (``tailtune list recipes``) or YAML file; its ``recipe.sweep`` field adds axes.
        data: data preset or YAML file; ``files``: more YAML files, as for ``tailtune train``.
        args: ``key=v1,v2,...`` axes, ``seeds=0,1,2`` and ``key=value`` fixed overrides.
        out: the sweep folder (default ``<output_dir>/sweep_<base>_<swept keys>``).
    """
    axes, fixed = parse_arguments(args)
    recipe_axes, _ = parse_arguments(recipe_info(base).sweep)
    axes = merge_axes(recipe_axes, axes, fixed)
    posthoc = _posthoc_spec(axes)
    axes = [a for a in axes if not a.posthoc]
    if not axes and posthoc:
        raise ConfigError("posthoc=... adjusts the runs of a sweep's training points, and this sweep has no "
                          "training axis; add one (e.g. seeds=0,1 or loss=ce,la), or adjust one run with "
                          "`tailtune eval RUN --posthoc la,taunorm --tau 0,0.5,1,auto`.")
    if not axes:
        raise ConfigError("a sweep needs at least one axis: key=v1,v2,... (e.g. peft.r=4,8,16) or seeds=0,1,2; "
                          "one setting is `tailtune train`.")
    # Options of one choice of a swept key (loss.ldam.drw_epoch with loss=ce,ldam) are checked per point.
    first = C.load_config(base, data, files, fixed, check_options=False)
    folder = Path(out) if out else default_dir(first, base, axes)
    sweep = Sweep(base, data, tuple(files), fixed, axes, folder, posthoc=posthoc)
    names: set[str] = set()
    applied: set[str] = set()  # fixed overrides taken by at least one point
    unapplied: dict[str, str] = {}  # fixed overrides left out of a point -> why (the first such point's)
    for combo in itertools.product(*[a.values for a in axes]):
        values = {a.key: v for a, v in zip(axes, combo)}
        grid = [f"{a.key}={_safe(values[a.key])}" for a in axes if not a.seeds]
        seed = [f"seed={values[SEEDS]}"] if SEEDS in values else []
        name = "__".join(grid + seed)
        if name in names:
            raise ConfigError(f"two points of the sweep get the folder name {name!r}; use values that differ "
                              "in letters, digits, '.', '+' or '-'.")
        names.add(name)
        run_dir = folder / name
        # The sweep places every point: a fixed output_dir only chose the sweep folder.
        point_fixed = [f for f in fixed if not f.startswith("output_dir=")]
        axis_values = [f"{a.target}={values[a.key]}" for a in axes]
        try:
            # A fixed option of an entry this point does not choose (loss.ldam.drw_epoch where
            # loss=ce) is left out of it: it applies at the other points (checked below).
            loose = C.load_config(base, data, files, [*point_fixed, *axis_values], check_options=False)
            unused = C.unchosen_overrides(loose, point_fixed)
            point_fixed = [f for f in point_fixed if f not in unused]
            for f, why in unused.items():
                unapplied.setdefault(f, why)
            applied.update(point_fixed)
            overrides = [*point_fixed, *axis_values, f"output_dir={folder}", f"name={name}"]
            cfg = C.load_config(base, data, files, overrides)
            validate(cfg)
            _check_posthoc(posthoc, cfg)
        except ConfigError as e:
            raise ConfigError(f"sweep point {name}: {e}") from None
        _check_folder(run_dir, cfg)
        sweep.points.append(Point(name, values, "__".join(grid) or Path(base).stem, overrides, run_dir, cfg))
    unused = [f for f in unapplied if f not in applied]
    if unused:  # every point would ignore it
        raise ConfigError(f"no point of this sweep uses {unused[0]}: {unapplied[unused[0]]}")
    return sweep


def _check_posthoc(posthoc: Posthoc | None, cfg: C.Config) -> None:
    """Refuse, before anything trains, a post-hoc method that cannot apply to a point's run."""
    if posthoc is None:
        return
    if "taunorm" in posthoc.methods:
        try:
            check_taunorm(cfg.head.type, "this point")
        except ConfigError as e:
            raise ConfigError(f"posthoc=taunorm: {e}".replace("--posthoc ", "posthoc=")) from None
    if AUTO in posthoc.taus and posthoc.adjusted and cfg.data.val == "none":
        e = no_val_error("this point (data.val=none)", posthoc.adjusted[0])
        raise ConfigError(str(e).replace("--posthoc ", "posthoc=").replace("--tau", "posthoc.tau")) from None


def _check_folder(run_dir: Path, cfg: C.Config) -> None:
    """A point's existing folder must hold a run of the same config (else skipping it would lie)."""
    saved = run_dir / CONFIG
    if saved.exists() and comparable_config(saved.read_text()) != comparable_config(C.to_yaml(C.with_absolute_paths(cfg))):
        raise ConfigError(f"{run_dir} holds a run of another config than this sweep's point; sweep into another "
                          "folder (--out DIR) or remove that folder.")
