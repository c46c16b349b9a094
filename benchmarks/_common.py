"""Shared pieces of the benchmarks: timing, peak memory per row, models, tables.

Benchmarks print; they never fail on timing and are not part of the test run.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tailtune.runtime.hardware import describe_machine  # noqa: E402

NUM_CLASSES = 100  # CIFAR-100-sized head and bottleneck


def header(title: str, args) -> None:
    """Print what runs where: the benchmark, its settings and the machine (with its load now)."""
    m = describe_machine()
    print(f"== {title}")
    print(f"   settings: {json.dumps(vars(args), default=str)}")
    print(f"   machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
          f"{m['cpu_capability']}, native CPU bf16: {m['cpu_bf16_native']}, GPU: {m['gpu'] or 'none'}, "
          f"torch {m['torch']}, load average {m['load_avg_1m']}")


def reset_peak() -> None:
    """Start a new peak-memory window: Linux resets VmHWM on writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak then covers the process so far
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_mb() -> dict:
    """Peak resident memory since :func:`reset_peak` (MiB), and CUDA's max allocated when on GPU."""
    rss = None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    rss = int(line.split()[1]) / 1024
    except OSError:  # not Linux
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"peak_rss_mb": round(rss or 0.0)}
    if torch.cuda.is_available():
        out["cuda_max_alloc_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def median_time(fn, repeats: int, sync=None) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``repeats`` calls of ``fn``.

    CPU seconds are this process's (all threads, user + system): on a machine shared with
    other work they vary far less than wall-clock time, which waits whenever others run.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        if sync:
            sync()
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        if sync:
            sync()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def rate_basis(device: torch.device) -> str:
    """What the ratios compare: CPU seconds on CPU (robust to a busy machine), wall-clock on GPU."""
    return "cpu" if device.type == "cpu" else "wall"


def cuda_sync():
    return torch.cuda.synchronize if torch.cuda.is_available() else None


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (missing cells shown as '-')."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def save_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(dict(payload, machine=describe_machine()), indent=2, default=str))
        print(f"   results written to {path}")


def add_run_args(p, measured: str) -> None:
    """Arguments every model benchmark shares; ``measured`` names what one child process times."""
    import argparse

    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="also time the default path with train.compile")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or all cores)")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # one {measured}, in a child process


def default_threads(threads: int | None = None) -> None:
    """Use ``threads`` torch threads; by default OMP_NUM_THREADS if set, else all cores."""
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)


def run_isolated(spec: dict) -> dict:
    """Measure ``spec`` in a fresh process: this script again, with ``--measure SPEC``.

    Each (row, path) starts from the same cold process, so the allocator setting of one
    path (process-wide, irreversible) and warm-up effects never leak into another.
    """
    import subprocess

    argv = [a for a in sys.argv[1:]]
    cmd = [sys.executable, sys.argv[0], *argv, "--measure", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    results = [line[len("RESULT "):] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not results:
        print(done.stdout[-2000:], done.stderr[-4000:], sep="\n")
        raise SystemExit(f"measurement {spec} failed (exit code {done.returncode})")
    return json.loads(results[-1])


def report(result: dict) -> None:
    """Hand a child's measurement to the parent (see :func:`run_isolated`)."""
    print("RESULT " + json.dumps(result), flush=True)


def interleaved(rows: list, paths: list) -> list[tuple]:
    """(row, path) pairs with the path order reversed on every other row (ABBA): a drift in
    machine load over the run then weighs on both paths alike."""
    return [(row, path) for i, row in enumerate(rows) for path in (paths if i % 2 == 0 else paths[::-1])]
