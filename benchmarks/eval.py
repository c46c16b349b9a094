"""Evaluation throughput of every model path, single view and five-crop: stock fp32 vs tailtune fp32 / bf16 / auto.

    python benchmarks/eval.py                           # the full table (about 15 min on 2 cores)
    python benchmarks/eval.py --batches 32 --methods none --fivecrop-methods none --timm ''
    python benchmarks/eval.py --device cuda --batches 128 --images 512
    python benchmarks/eval.py --precisions --images 16  # eval.precision: fp32 vs bf16 autocast, one process

The whole evaluation path runs: ``--images`` synthetic 500x375 test images -> the
backbone's test view (or five crops) -> ``predict_logits`` (views averaged), the model in
eval mode. Images/s counts test images (a five-crop image costs five forwards).

Rows: open_clip ViT-B/16 (random weights) with classifier-only (``none``), adaptformer, lora,
vpt_deep and full at the largest of ``--batches`` (loader batch); to keep a run's time sane
the smaller batches (8 by default) run ``--small-methods``, five-crop runs
``--fivecrop-methods`` at every batch, and the timm ViT-B/16 runs ``--timm-methods``
(defaults: none and adaptformer; five-crop: none). Paths, fresh processes, ABBA order and
CPU-second ratios as in train_step.py (``_common.PATHS``): stock fp32 (open_clip as built,
fp32, eager, glibc's allocator), tailtune fp32, tailtune bf16; precision=auto shares the
figures of the one it resolves to. The end of the run: "auto never slower than fp32" and the
issue's targets (evaluation and five-crop >= 3.5x the stock fp32 baseline).

``--precisions`` answers what ``eval.precision`` costs: one process, one model, one batch of
already transformed images (the transform is the same for both, so it is left out), and
``predict_logits`` timed in fp32 and under bf16 autocast in turn (ABBA, ``--repeats`` rounds);
it also prints how far the bf16 logits are from the fp32 ones.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
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

from tailtune.data.base import ArrayDataset, Transformed
from tailtune.data.transforms import eval_transform
from tailtune.models.accel import compile_model
from tailtune.models.peft.base import PEFT_METHODS
from tailtune.runtime.loader import make_loader, predict_logits


def test_images(n: int, seed: int = 0) -> ArrayDataset:
    """``n`` random 375x500 RGB images (a typical photo size) with labels."""
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 255, (n, 375, 500, 3), dtype=np.uint8), rng.integers(0, 100, n).tolist())


def measure(row: dict, path: str, args, device) -> dict:
    """In a child process: ``predict_logits`` over ``--images`` test images of ``row`` on ``path``."""
    dtype, tuned = enter_path(path, device)
    stock = path == BASELINE
    model = build_model(row["provider"], row["model"], row["method"], device, stock=stock).eval()
    if args.compile and not stock:
        compile_model(model)
    view = eval_transform(model.backbone.preprocess, row["tte"])
    loader = make_loader(Transformed(test_images(args.images), view), row["batch"], False, args.workers, device)
    # One untimed batch of the timed size first: oneDNN builds its kernels per shape, the
    # allocator maps the batch's buffers and the frozen weights are cast once; with one timed
    # batch (32 images at batch 32) all of that would otherwise fall into the timing.
    warm = make_loader(Transformed(test_images(row["batch"], seed=1), view), row["batch"], False, 0, device)
    predict_logits(model, warm, device, dtype)
    reset_peak()
    wall, cpu = median_time(lambda: predict_logits(model, loader, device, dtype), 1, cuda_sync())
    return {"row": row["label"], "path": path, "precision": DTYPES[dtype], "allocator_tuned": tuned,
            "img/s": args.images / wall, "s": wall, "img/cpu-s": args.images / cpu, "cpu-s": cpu, **peak_mb()}


def plan_rows(args) -> list[dict]:
    """The rows of this run (see the module docstring)."""
    batches = sorted((int(b) for b in args.batches.split(",") if b), reverse=True)
    split = lambda s: [m for m in s.split(",") if m]  # noqa: E731
    rows = []

    def add(provider, model, methods, tte, batch, tag):
        for m in methods:
            if m not in PEFT_METHODS:
                print(f"   {m}: not a registered PEFT method here, skipped")
                continue
            rows.append({"label": f"{tag} {m}{' fivecrop' if tte == 'fivecrop' else ''} b{batch}", "method": m,
                         "provider": provider, "model": model, "tte": tte, "batch": batch})

    for b in batches:
        add("open_clip", args.model, split(args.methods if b == batches[0] else args.small_methods), "none", b,
            args.model)
        add("open_clip", args.model, split(args.fivecrop_methods), "fivecrop", b, args.model)
        if args.timm:
            add("timm", args.timm, split(args.timm_methods), "none", b, f"timm {args.timm}")
    return rows


def checks(lines: list[dict], rows: list[dict]) -> dict:
    """The end-of-run checks: auto never slower than fp32, and the evaluation targets."""
    print()
    out = {"auto_never_slower_than_fp32": auto_check(lines), "targets": []}
    for r in rows:
        if r["provider"] == "open_clip" and r["method"] in ("none", "adaptformer"):
            what = "five-crop" if r["tte"] == "fivecrop" else "eval"
            out["targets"].append(target(f"{what} {r['method']}, batch {r['batch']}", lines, r["label"], 3.5))
    return out


def compare_precisions(args, device: torch.device) -> None:
    """fp32 vs bf16 autocast evaluation of the same images by the same model, interleaved in one process."""
    header("eval precision: predict_logits in fp32 vs under bf16 autocast (one process, interleaved)", args)
    model = build_model("open_clip", args.model, "none", device).eval()
    view = eval_transform(model.backbone.preprocess, args.tte)
    images = test_images(args.images)
    x = torch.stack([view(images[i][0]) for i in range(len(images))])
    loader = make_loader(torch.utils.data.TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), args.batch,
                         False, 0, device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    logits = {name: predict_logits(model, loader, device, dtype)[0] for name, dtype in dtypes.items()}  # warm-up
    sync = cuda_sync()
    times = {name: [] for name in dtypes}
    for name in interleaved(range(args.repeats), list(dtypes)):
        name = name[1]
        if sync:
            sync()
        t0, c0 = time.perf_counter(), time.process_time()
        predict_logits(model, loader, device, dtypes[name])
        if sync:
            sync()
        times[name].append((time.perf_counter() - t0, time.process_time() - c0))
        print(f"   {name}: {len(x) / times[name][-1][0]:.2f} img/s wall, {times[name][-1][1]:.1f} CPU-s", flush=True)
    rows = []
    for name, runs in times.items():
        wall, cpu = float(np.median([w for w, _ in runs])), float(np.median([c for _, c in runs]))
        rows.append({"precision": name, "img/s": len(x) / wall, "s": wall, "img/cpu-s": len(x) / cpu, "cpu-s": cpu})
    print()
    print(table(rows, ["precision", "img/s", "s", "img/cpu-s", "cpu-s"]))
    key = "img/cpu-s" if rate_basis(device) == "cpu" else "img/s"
    ratio = rows[1][key] / rows[0][key]
    diff = (logits["fp32"] - logits["bf16"]).abs()
    print(f"\n   bf16 / fp32 ({key}, medians of {args.repeats}): {ratio:.2f}x")
    print(f"   logits: max |bf16 - fp32| {diff.max().item():.4f} (largest |fp32 logit| "
          f"{logits['fp32'].abs().max().item():.2f}); top-1 agrees on "
          f"{(logits['fp32'].argmax(1) == logits['bf16'].argmax(1)).float().mean().item():.0%} of the images")
    save_json(args.json, {"results": rows, "bf16_over_fp32": ratio, "max_abs_logit_diff": diff.max().item()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model (random weights)")
    p.add_argument("--images", type=int, default=32, help="test images per measurement")
    p.add_argument("--batches", default="32,8", help="loader batches; the smaller ones run --small-methods only")
    p.add_argument("--methods", default="none,adaptformer,lora,vpt_deep,full", help="methods at the largest batch")
    p.add_argument("--small-methods", default="none,adaptformer", help="methods of the smaller batches")
    p.add_argument("--fivecrop-methods", default="none", help="methods evaluated with five crops (every batch)")
    p.add_argument("--timm", default="vit_base_patch16_224", help="timm ViT of the timm rows ('' to skip)")
    p.add_argument("--timm-methods", default="none,adaptformer", help="methods of the timm rows")
    p.add_argument("--batch", type=int, default=32, help="--precisions: test images per loader batch")
    p.add_argument("--workers", type=int, default=0, help="loader workers (tailtune uses 0 on <= 4 CPU cores)")
    p.add_argument("--precisions", action="store_true", help="eval.precision: fp32 vs bf16 autocast in one process")
    p.add_argument("--tte", default="none", help="--precisions: the test view (none) or crops (fivecrop)")
    p.add_argument("--repeats", type=int, default=3, help="--precisions: timed rounds per precision")
    add_run_args(p, "(TTE, path)")
    args = p.parse_args()
    default_threads(args.threads)
    device = torch.device(args.device)
    if args.precisions:
        compare_precisions(args, device)
        return
    if args.measure:
        spec = json.loads(args.measure)
        report(measure(spec["row"], spec["path"], args, device))
        return
    header("eval: test images/s, single view and five-crop, stock fp32 vs tailtune fp32 / bf16 / auto", args)
    rows = plan_rows(args)
    paths = compared_paths(device)
    auto = auto_path(device)
    print(f"   precision=auto resolves to bf16 or fp32 per machine: here {auto} (its figures are auto's)")
    results = []
    for row, path in interleaved(rows, paths):
        results.append(run_isolated({"row": row, "path": path}))
        r = results[-1]
        print(f"   {r['row']:<34} {r['path']:<14} {r['img/cpu-s']:6.2f} img/CPU-s  {r['img/s']:6.2f} img/s "
              f"({r['s']:.1f} s wall, {r['cpu-s']:.1f} CPU-s, peak RSS {r['peak_rss_mb']} MiB)", flush=True)
    print()
    print(table(results, ["row", "path", "precision", "allocator_tuned", "img/s", "s", "img/cpu-s", "cpu-s",
                          "peak_rss_mb", "cuda_max_alloc_mb"]))
    key = "img/cpu-s" if rate_basis(device) == "cpu" else "img/s"
    lines = compare(results, paths, auto, key)
    found = checks(lines, rows)
    save_json(args.json, {"auto": auto, "basis": key, "results": results, "ratios": lines, **found})


if __name__ == "__main__":
    main()
