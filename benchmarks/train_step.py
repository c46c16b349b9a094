"""Training-step throughput of every model path the recipes use: stock fp32 vs tailtune fp32 / bf16 / auto.

    python benchmarks/train_step.py                          # the full table (about 25 min on 2 cores)
    python benchmarks/train_step.py --steps 1 --batches 32 --methods none,adaptformer --timm ''
    python benchmarks/train_step.py --device cuda --batches 128 --small-methods ''

Rows: open_clip ViT-B/16 (random weights) with classifier-only (``none``), adaptformer,
lora, vpt_deep and full fine-tuning at every batch of ``--batches``; to keep a run's time
sane the smaller batches (batch 8 by default) and the timm ViT-B/16
(``vit_base_patch16_224``, random weights) run only ``--small-methods`` / ``--timm-methods``
(none and adaptformer by default). (The CNN row of earlier versions, EfficientNet-Lite0 BN
tuning, is gone: precision=auto keeps CNNs in fp32 on CPU, so it had nothing to compare here.)

Paths (``_common.PATHS``): ``stock fp32`` (the model as open_clip / timm build it: tailtune's
attention and cast-once layers undone, fp32, eager, glibc's default allocator), ``tailtune
fp32`` and ``tailtune bf16`` (build_backbone's model, tune_cpu_allocator()); ``precision=auto``
resolves to one of them (printed) and shares its figures. Every (row, path) is measured in a
fresh process started by this one (the allocator setting is process-wide and cannot be
undone), the paths of a row one after the other, in ABBA order over the rows, so a drift in
machine load weighs on all alike. Each measurement: one untimed step at batch
``--warmup-batch``, ``--warmup`` untimed full steps, then the median of ``--steps``. Ratios
compare images per CPU-second of the measuring process on CPU (robust on a shared machine),
wall-clock on GPU.

The end of the run: "auto never slower than fp32" over every row, and the issue's targets
(adaptformer at the largest batch >= 3.5x the stock fp32 baseline, also against tailtune fp32;
a frozen-backbone step faster than full fine-tuning).

A precision probe opens the run: a 1024^3 matmul and a ViT-B/16 forward in fp32 and bf16,
which shows whether this CPU computes bf16 natively (where auto picks bf16) or emulates it.
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import (
    BASELINE,
    DTYPES,
    add_run_args,
    auto_check,
    auto_path,
    build_model,
    compare,
    compared_paths,
    cuda_sync,
    default_threads,
    enter_path,
    header,
    interleaved,
    make_step,
    median_time,
    peak_mb,
    rate_basis,
    report,
    reset_peak,
    run_isolated,
    save_json,
    table,
    target,
)

from tailtune.models.accel import compile_model
from tailtune.models.peft.base import PEFT_METHODS
from tailtune.runtime.precision import autocast

__all__ = ["DTYPES", "build_model", "make_step"]  # cache.py and eval.py import these from here

VIT_METHODS = ("none", "adaptformer", "lora", "vpt_deep", "full")
FROZEN = ("none", "adaptformer", "lora", "vpt_deep")  # the frozen-backbone methods of "faster than full"


def measure(row: dict, path: str, args, device) -> dict:
    """In a child process: the median step of ``row`` on ``path``."""
    dtype, tuned = enter_path(path, device, row["kind"])
    stock = path == BASELINE
    model = build_model(row["provider"], row["model"], row["method"], device, stock=stock)
    if args.compile and not stock:
        compile_model(model)
    reset_peak()
    make_step(model, args.warmup_batch, row["res"], device, dtype, stock=stock)()  # kernels, buffers
    for _ in range(args.warmup):
        make_step(model, row["batch"], row["res"], device, dtype, stock=stock)()
    step = make_step(model, row["batch"], row["res"], device, dtype, stock=stock)
    wall, cpu = median_time(step, args.steps, cuda_sync())
    return {"row": row["label"], "path": path, "precision": DTYPES[dtype], "allocator_tuned": tuned,
            "img/s": row["batch"] / wall, "s/step": wall, "img/cpu-s": row["batch"] / cpu, "cpu-s/step": cpu,
            **peak_mb()}


def precision_probe(device) -> list[dict]:
    """Matmul GFLOP/s and a ViT-B/16 forward (batch 2) in fp32 and bf16: is bf16 native here?"""
    rows = []
    n = 1024
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n, device=device, dtype=dtype)
        a @ a
        s = median_time(lambda a=a: a @ a, 3, cuda_sync())[0]
        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        rows.append({"probe": f"matmul {n}^3", "precision": name, "rate": f"{2 * n ** 3 / s / 1e9:.1f} GFLOP/s"})
    model = build_model("open_clip", "ViT-B-16", "none", device).eval()
    x = torch.randn(2, 3, 224, 224, device=device)
    for dtype in (None, torch.bfloat16):
        with torch.no_grad(), autocast(device, dtype):
            model(x)
            s = median_time(lambda: model(x), 2, cuda_sync())[0]
        rows.append({"probe": "ViT-B/16 forward (tailtune), batch 2", "precision": DTYPES[dtype],
                     "rate": f"{2 / s:.2f} img/s"})
    return rows


def plan_rows(args) -> list[dict]:
    """The rows of this run (see the module docstring)."""
    batches = [int(b) for b in args.batches.split(",") if b]
    largest = max(batches)
    rows = []

    def add(provider, model, methods, batch, res, tag=""):
        for m in methods:
            if m not in PEFT_METHODS:
                print(f"   {m}: not a registered PEFT method here, skipped")
                continue
            rows.append({"label": f"{tag or model} {m} b{batch}", "tag": tag or model, "provider": provider,
                         "model": model,
                         "method": m, "batch": batch, "res": res, "kind": "vit"})

    split = lambda s: [m for m in s.split(",") if m]  # noqa: E731
    for b in sorted(batches, reverse=True):
        add("open_clip", args.model, split(args.methods) if b == largest else split(args.small_methods), b, args.res)
        if args.timm:
            add("timm", args.timm, split(args.timm_methods), b, args.res, tag=f"timm {args.timm}")
    return rows


def checks(lines: list[dict], rows: list[dict], auto: str) -> dict:
    """The end-of-run checks: auto never slower than fp32, the adaptformer target, frozen faster than full."""
    print()
    out = {"auto_never_slower_than_fp32": auto_check(lines)}
    largest = max(r["batch"] for r in rows)
    adapt = next((r["label"] for r in rows if r["method"] == "adaptformer" and r["batch"] == largest
                  and r["provider"] == "open_clip"), None)
    out["targets"] = [target(f"train adaptformer, batch {largest}", lines, adapt, 3.5)] if adapt else []
    by = {x["row"]: x for x in lines}
    for r in rows:
        if r["method"] != "full":
            continue
        full = by[r["label"]].get(auto)
        frozen = {x["method"]: by[x["label"]].get(auto) for x in rows
                  if x["method"] in FROZEN and x["batch"] == r["batch"] and x["model"] == r["model"]}
        slower = [f"{m} {v:.2f}" for m, v in frozen.items() if v is not None and full and v <= full]
        print(f"   frozen step faster than full fine-tuning ({r['tag']}, batch {r['batch']}, "
              f"{auto}, full {full:.2f}; " + ", ".join(f"{m} {v:.2f}" for m, v in frozen.items() if v)
              + f"): {'no (' + ', '.join(slower) + ')' if slower else 'yes'}")
        out.setdefault("frozen_faster_than_full", {})[r["label"]] = not slower
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model (random weights)")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--methods", default=",".join(VIT_METHODS), help="PEFT methods of the open_clip rows")
    p.add_argument("--batches", default="32,8", help="batch sizes; the smaller ones run --small-methods only")
    p.add_argument("--small-methods", default="none,adaptformer", help="methods of the smaller batches")
    p.add_argument("--timm", default="vit_base_patch16_224", help="timm ViT of the timm rows ('' to skip)")
    p.add_argument("--timm-methods", default="none,adaptformer", help="methods of the timm rows")
    p.add_argument("--steps", type=int, default=2, help="timed steps per row (median)")
    p.add_argument("--warmup", type=int, default=0, help="untimed full-batch steps per row")
    p.add_argument("--warmup-batch", type=int, default=2, help="one untimed step at this batch first")
    p.add_argument("--no-probe", action="store_true", help="skip the precision probe")
    add_run_args(p, "(row, path)")
    args = p.parse_args()
    default_threads(args.threads)
    device = torch.device(args.device)
    if args.measure:
        spec = json.loads(args.measure)
        report(measure(spec["row"], spec["path"], args, device))
        return
    header("train_step: images/s of one training step, stock fp32 vs tailtune fp32 / bf16 / auto", args)

    probe = [] if args.no_probe else precision_probe(device)
    if probe:
        print(table(probe, ["probe", "precision", "rate"]))
    rows = plan_rows(args)
    paths = compared_paths(device)
    auto = auto_path(device)
    print(f"   precision=auto resolves to bf16 or fp32 per machine: here {auto} (its figures are auto's)")
    results = []
    for row, path in interleaved(rows, paths):
        results.append(run_isolated({"row": row, "path": path}))
        r = results[-1]
        print(f"   {r['row']:<34} {r['path']:<14} {r['img/cpu-s']:6.2f} img/CPU-s  {r['img/s']:6.2f} img/s "
              f"({r['s/step']:.1f} s/step wall, {r['cpu-s/step']:.1f} CPU-s/step, peak RSS {r['peak_rss_mb']} MiB)",
              flush=True)
    print()
    print(table(results, ["row", "path", "precision", "allocator_tuned", "img/s", "s/step", "img/cpu-s",
                          "cpu-s/step", "peak_rss_mb", "cuda_max_alloc_mb"]))
    key = "img/cpu-s" if rate_basis(device) == "cpu" else "img/s"
    lines = compare(results, paths, auto, key)
    found = checks(lines, rows, auto)
    save_json(args.json, {"probe": probe, "auto": auto, "basis": key, "results": results, "ratios": lines, **found})


if __name__ == "__main__":
    main()
