"""Shared pieces of the benchmarks: timing, peak memory per row, models, the paths compared, tables.

Benchmarks print; they never fail on timing and are not part of the test run.

The model benchmarks (train_step.py, eval.py) compare the same paths (:data:`PATHS`):

- ``stock fp32``: the baseline, the model exactly as open_clip / timm build it
  (:func:`stock_model` undoes tailtune's attention and cast-once layers), fp32, eager,
  glibc's default allocator;
- ``tailtune fp32`` and ``tailtune bf16``: tailtune's model path (``build_backbone``) with
  ``tune_cpu_allocator()``, in each precision;
- ``precision=auto`` is not measured apart: it resolves to one of the two tailtune paths
  (:func:`auto_path`), whose figures it shares; the summary says which.
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

from torch import nn  # noqa: E402

from tailtune.config import HeadConfig, ModelConfig, PeftConfig  # noqa: E402
from tailtune.models.attention import FastAttention  # noqa: E402
from tailtune.models.backbones.base import build_backbone  # noqa: E402
from tailtune.models.casts import CastOnceLinear  # noqa: E402
from tailtune.models.heads import build_head  # noqa: E402
from tailtune.models.model import TailModel  # noqa: E402
from tailtune.models.peft.base import apply_peft, trains_bn_stats  # noqa: E402
from tailtune.runtime.device import tune_cpu_allocator  # noqa: E402
from tailtune.runtime.hardware import describe_machine  # noqa: E402
from tailtune.runtime.precision import precision_name, resolve_precision  # noqa: E402

NUM_CLASSES = 100  # CIFAR-100-sized head and bottleneck
DTYPES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

# The paths every model benchmark compares (see the module docstring); BASELINE is the reference.
PATHS = {
    "stock fp32": {"precision": "fp32", "stock": True, "tune": False},
    "tailtune fp32": {"precision": "fp32", "stock": False, "tune": True},
    "tailtune bf16": {"precision": "bf16", "stock": False, "tune": True},
    "tailtune fp16": {"precision": "fp16", "stock": False, "tune": True},  # only where auto picks it (old GPUs)
}
BASELINE = "stock fp32"


def auto_path(device: torch.device, kind: str = "vit") -> str:
    """The measured path that ``precision=auto`` resolves to on this machine, e.g. 'tailtune bf16'."""
    return f"tailtune {precision_name(resolve_precision('auto', device, kind))}"


def compared_paths(device: torch.device, kind: str = "vit") -> list[str]:
    """The paths to measure: the baseline, tailtune fp32 and bf16, and auto's if it is neither."""
    names = [BASELINE, "tailtune fp32"] + ([] if device.type == "cpu" and kind == "cnn" else ["tailtune bf16"])
    auto = auto_path(device, kind)
    return names + ([auto] if auto not in names else [])


def stock_model(model: nn.Module, attention: bool = True, casts: bool = True) -> dict:
    """Undo tailtune's model changes in place: the model as open_clip / timm build it.

    ``attention``: every :class:`FastAttention` back to ``nn.MultiheadAttention`` (a subclass
    holding the same parameters, so a class swap restores it exactly); ``casts``: every
    :class:`CastOnceLinear` back to ``nn.Linear`` (attention output projections to their own
    ``NonDynamicallyQuantizableLinear``). PEFT surgery stays: an open_clip LoRA keeps its
    ``SelfAttention`` (``peft/targets.py``), which has no stock form. Returns the counts.
    """
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

    counts = {"attention": 0, "linear": 0}
    for module in model.modules():
        if attention and type(module) is FastAttention:
            module.__class__ = nn.MultiheadAttention
            counts["attention"] += 1
        if casts:
            for name, child in module.named_children():
                if type(child) is CastOnceLinear:
                    in_mha = isinstance(module, nn.MultiheadAttention) and name == "out_proj"
                    child.__class__ = NonDynamicallyQuantizableLinear if in_mha else nn.Linear
                    counts["linear"] += 1
    return counts


def build_model(provider: str, name: str, method: str, device: torch.device, stock: bool = False,
                resolution: int | None = None) -> TailModel:
    """Backbone (random weights) + PEFT + cosine head, as api.build makes them (without its side
    effects); ``stock``: with tailtune's attention and cast-once layers undone (:func:`stock_model`)."""
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(provider=provider, name=name, pretrained="none", resolution=resolution))
    peft = PeftConfig(method=method)
    apply_peft(backbone, peft, NUM_CLASSES)
    head = build_head(HeadConfig(), backbone.feature_dim, NUM_CLASSES)
    model = TailModel(backbone, head, bn_train=trains_bn_stats(peft)).to(device)
    if stock:
        stock_model(model)
    return model


def enter_path(path: str, device: torch.device, kind: str = "vit") -> tuple[torch.dtype | None, bool]:
    """In a child process: set up ``path`` (the allocator, process-wide); returns (autocast dtype, allocator tuned)."""
    spec = PATHS[path]
    tuned = bool(spec["tune"] and device.type == "cpu" and tune_cpu_allocator())
    return resolve_precision(spec["precision"], device, kind), tuned


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
    p.add_argument("--compile", action="store_true", help="torch.compile the tailtune paths (train.compile)")
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


def rows_in_order(results: list[dict]) -> list[str]:
    """The row labels of ``results`` in the order they were first measured."""
    return list(dict.fromkeys(r["row"] for r in results))


def compare(results: list[dict], paths: list[str], auto: str, key: str) -> list[dict]:
    """One line per row: ``key`` for each path, and the ratios to the baseline and to tailtune fp32.

    Prints the table and returns its rows (for the checks and the JSON file).
    """
    by = {(r["row"], r["path"]): r[key] for r in results}
    out = []
    for row in rows_in_order(results):
        line = {"row": row, **{p: by.get((row, p)) for p in paths}}
        base, fp32, a = by.get((row, BASELINE)), by.get((row, "tailtune fp32")), by.get((row, auto))
        for p in paths:
            if p != BASELINE and by.get((row, p)) and base:
                line[f"{p.split()[-1]} / stock"] = by[(row, p)] / base
        line["auto / stock"] = a / base if a and base else None
        line["auto / tt fp32"] = a / fp32 if a and fp32 else None
        out.append(line)
    ratio_cols = [c for c in out[0] if c not in ("row", *paths)] if out else []
    print(f"\n   {key} per path, and ratios (same run, interleaved fresh processes; auto = {auto}):")
    print(table(out, ["row", *paths, *ratio_cols]))
    return out


def auto_check(lines: list[dict]) -> bool:
    """Print whether ``precision=auto`` was at least as fast as tailtune fp32 on every row."""
    slower = [f"{x['row']} ({x['auto / tt fp32']:.2f}x)" for x in lines
              if x["auto / tt fp32"] is not None and x["auto / tt fp32"] < 1.0]
    print(f"   auto never slower than fp32: {'no' if slower else 'yes'}"
          + (f" (rows where not: {', '.join(slower)})" if slower else ""))
    return not slower


def target(label: str, lines: list[dict], row: str, goal: float) -> dict | None:
    """Print a target "auto >= goal x the stock fp32 baseline" for ``row``: met / not met, with the figures."""
    line = next((x for x in lines if x["row"] == row), None)
    if line is None or line["auto / stock"] is None:
        print(f"   target: {label} >= {goal}x the stock fp32 baseline: not measured in this run")
        return None
    ratio, own = line["auto / stock"], line["auto / tt fp32"]
    print(f"   target: {label} >= {goal}x the stock fp32 baseline (open_clip as built, fp32, eager): "
          f"{ratio:.2f}x ({'met' if ratio >= goal else 'not met'}); against tailtune fp32: {own:.2f}x")
    return {"target": label, "goal": goal, "ratio_to_stock": ratio, "ratio_to_tailtune_fp32": own,
            "met": ratio >= goal}


def profile_ops(fn, record_shapes: bool = False) -> list[dict]:
    """Run ``fn`` once under torch.profiler (CPU); one dict per op: self CPU ms, calls, FLOPs (profiler's count).

    Self times add up to the profiled time, so they say where it went without double counting.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=record_shapes, with_flops=record_shapes) as prof:
        fn()
    ops = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count, "flops": e.flops or 0}
           for e in prof.key_averages()]
    return sorted(ops, key=lambda o: -o["self_ms"])


def top_ops_table(ops: list[dict], n: int = 8, total: float | None = None) -> str:
    """The ``n`` ops with the most self CPU time, with their share of ``total`` (default: all of ``ops``)."""
    total = total or sum(o["self_ms"] for o in ops) or 1.0
    rows = [{"op": o["op"], "self ms": o["self_ms"], "share": f"{100 * o['self_ms'] / total:.0f}%",
             "calls": o["calls"]} for o in ops[:n]]
    return table(rows, ["op", "self ms", "share", "calls"]) + f"\n   (all ops: {total:.0f} ms self CPU time)"


def make_step(model, batch: int, res: int, device, dtype, channels_last: bool = False, stock: bool = False,
              classes: int = NUM_CLASSES):
    """One SGD step (forward under autocast, loss, backward, update) on a fixed random batch.

    The optimizer is tailtune's (``training/optim.py``: fused on CUDA, the plain loop on CPU),
    or with ``stock`` PyTorch's default SGD, as the baseline path trains.
    """
    from torch import nn

    from tailtune.runtime.precision import autocast
    from tailtune.training.optim import make_sgd

    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=0.01, momentum=0.9) if stock
           else make_sgd([{"params": params}], torch.device(device), lr=0.01, momentum=0.9))
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, res, res, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step():
        with autocast(torch.device(device), dtype):
            logits = model(x)
        scaler.scale(loss_fn(logits.float(), y)).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step
