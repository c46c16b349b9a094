"""Evaluation throughput without and with five-crop TTE: fp32 eager vs tailtune's default path.

    python benchmarks/eval.py                          # ViT-B/16 (random weights), 32 test images
    python benchmarks/eval.py --images 128 --compile   # more images, plus a torch.compile column
    python benchmarks/eval.py --device cuda --batch 128
    python benchmarks/eval.py --precisions --images 16  # eval.precision: fp32 vs bf16 autocast, one process

The whole evaluation path runs: synthetic 500x375 test images -> the backbone's test view
(or five crops) -> ``predict_logits`` (views averaged) with the classifier-only model.
Images/s counts test images (a five-crop image costs five forwards). Paths: the baseline
(fp32, glibc's default allocator) and the default path (train.precision=auto,
tune_cpu_allocator(), train.compile with --compile), each (TTE, path) in a fresh process
started by this one, in ABBA order (see train_step.py).

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
    add_run_args,
    cuda_sync,
    default_threads,
    header,
    interleaved,
    peak_mb,
    rate_basis,
    report,
    reset_peak,
    run_isolated,
    save_json,
    table,
)
from train_step import DTYPES, build_model

from tailtune.data.base import ArrayDataset, Transformed
from tailtune.data.transforms import eval_transform
from tailtune.models.accel import compile_model
from tailtune.runtime.device import tune_cpu_allocator
from tailtune.runtime.loader import make_loader, predict_logits
from tailtune.runtime.precision import resolve_precision


def test_images(n: int, seed: int = 0) -> ArrayDataset:
    """``n`` random 375x500 RGB images (a typical photo size) with labels."""
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 255, (n, 375, 500, 3), dtype=np.uint8), rng.integers(0, 100, n).tolist())


def measure(model, images, preprocess, tte: str, args, device, dtype, path: str) -> dict:
    ds = Transformed(images, eval_transform(preprocess, tte))
    loader = make_loader(ds, args.batch, False, args.workers, device)
    warm = make_loader(Transformed(test_images(2, seed=1), eval_transform(preprocess, tte)), 2, False, 0, device)
    predict_logits(model, warm, device, dtype)  # kernels and buffers, not timed
    reset_peak()
    sync = cuda_sync()
    if sync:
        sync()
    t0, c0 = time.perf_counter(), time.process_time()
    predict_logits(model, loader, device, dtype)
    if sync:
        sync()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"tte": tte, "path": path, "precision": DTYPES[dtype], "img/s": len(images) / seconds,
           "s": seconds, "img/cpu-s": len(images) / cpu, "cpu-s": cpu, **peak_mb()}
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
    p.add_argument("--batch", type=int, default=32, help="test images per loader batch")
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
        tuned = spec["tune"] and device.type == "cpu" and tune_cpu_allocator()
        dtype = resolve_precision(spec["precision"], device, "vit")
        model = build_model("open_clip", args.model, "none", device).eval()
        if spec["compile"]:
            compile_model(model)
        out = measure(model, test_images(args.images), model.backbone.preprocess, spec["tte"], args, device, dtype,
                      spec["path"])
        report(dict(out, allocator_tuned=tuned))
        return
    header("eval: test images/s without and with five-crop TTE, fp32 eager vs tailtune's default path", args)
    paths = [{"path": "fp32 eager", "precision": "fp32", "tune": False, "compile": False},
             {"path": "default", "precision": "auto", "tune": True, "compile": False}]
    if args.compile:
        paths.append({"path": "default + compile", "precision": "auto", "tune": True, "compile": True})
    results = []
    for tte, path in interleaved(["none", "fivecrop"], paths):
        results.append(run_isolated({"tte": tte, **path}))
        r = results[-1]
        print(f"   {tte:<9} {r['path']:<20} {r['precision']:<5} {r['img/s']:8.2f} img/s  ({r['s']:.1f} s wall, "
              f"{r['cpu-s']:.1f} CPU-s, peak RSS {r['peak_rss_mb']} MiB)", flush=True)
    print()
    print(table(results, ["tte", "path", "precision", "allocator_tuned", "img/s", "s", "img/cpu-s", "cpu-s",
                          "peak_rss_mb", "cuda_max_alloc_mb"]))
    key = "img/cpu-s" if rate_basis(device) == "cpu" else "img/s"
    print(f"\n   ratios below compare {key} (CPU seconds of the measuring process on CPU, wall-clock on GPU)")
    base = {r["tte"]: r[key] for r in results if r["path"] == "fp32 eager"}
    print("\n   ratios to the fp32 eager baseline (same run, same images, interleaved fresh processes):")
    best = 0.0
    for r in results:
        if r["path"] != "fp32 eager":
            ratio = r[key] / base[r["tte"]]
            best = max(best, ratio)
            print(f"   {r['tte']:<9} {r['path']:<26} {ratio:.2f}x")
    print(f"   five-crop costs {base['none'] / base['fivecrop']:.2f}x the single view (fp32 eager)")
    print(f"   target: >= 2.5x the fp32 eager baseline: {best:.2f}x ({'met' if best >= 2.5 else 'not met'})")
    save_json(args.json, {"results": results})


if __name__ == "__main__":
    main()
