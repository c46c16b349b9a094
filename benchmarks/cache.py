"""Classifier-only training: seconds per epoch from the feature cache vs recomputing features.

    python benchmarks/cache.py                         # ViT-B/16 (random weights), CIFAR-100-LT size
    python benchmarks/cache.py --model TT-Tiny-ViT --res 32 --full-epoch   # both epochs for real

CIFAR-sized data: 10,847 images of 32x32 (CIFAR-100-LT at imbalance 100), upsampled to the
backbone's resolution by its training augmentation, batch 128, LA loss, cosine head, the
tailtune Trainer on both paths. The cached epoch runs in full; the recomputing epoch is
timed on ``--sample`` images (after a warm-up batch) and scaled to the dataset, unless
``--full-epoch``. The one-time cost of the cache (one prefix pass per image and view) is
printed with the number of epochs after which it has paid for itself.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _common import NUM_CLASSES, default_threads, header, peak_mb, reset_peak, save_json, table
from train_step import DTYPES, build_model

from tailtune.config import LossConfig, TrainConfig
from tailtune.data.base import ArrayDataset, Subset, Transformed
from tailtune.data.longtail import exp_profile
from tailtune.data.transforms import train_transform
from tailtune.losses import build_loss
from tailtune.runtime.device import tune_cpu_allocator
from tailtune.runtime.precision import resolve_precision
from tailtune.training.feature_cache import CachedInputModel, CachedViews, PooledSplit, ViewPlan
from tailtune.training.trainer import Trainer


def cifar_like(seed: int = 0) -> ArrayDataset:
    """32x32 random images with CIFAR-100-LT's class counts (500 ... 5, 10,847 in all)."""
    counts = exp_profile(500, NUM_CLASSES, 100)
    labels = np.repeat(np.arange(NUM_CLASSES), counts)
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 255, (len(labels), 32, 32, 3), dtype=np.uint8), labels.tolist())


def epoch_seconds(model, dataset, counts, args, device, dtype, workers: int) -> tuple[float, int]:
    """Seconds and images of one Trainer epoch over ``dataset``."""
    cfg = TrainConfig(epochs=1, batch_size=args.batch, precision="fp32", device=device.type, log_every=10**9)
    loss = build_loss(LossConfig(), counts).to(device)
    stats = Trainer(model, loss, dataset, cfg, device, dtype, workers, quiet=True, log=lambda _: None).train_epoch()
    return stats.seconds, stats.images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model (random weights)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--sample", type=int, default=64, help="images timed on the recomputing path")
    p.add_argument("--full-epoch", action="store_true", help="time the recomputing epoch in full")
    p.add_argument("--views", type=int, default=1, help="cached views per image (build cost only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    default_threads()
    device = torch.device(args.device)
    header("cache: seconds per epoch of classifier-only training, feature cache vs recomputing", args)
    if device.type == "cpu":
        tune_cpu_allocator()
    data = cifar_like()
    counts = np.bincount(data.targets, minlength=NUM_CLASSES)
    model = build_model("open_clip", args.model, "none", device)
    dtype = resolve_precision("auto", device, "vit")
    images = Transformed(data, train_transform(model.backbone.preprocess))
    n = len(data)

    # Recomputing: every epoch runs the frozen backbone on every augmented image.
    sample = n if args.full_epoch else min(args.sample, n)
    epoch_seconds(model, Subset(images, range(min(args.batch, 8))), counts, args, device, dtype, 0)  # warm-up
    reset_peak()
    s, seen = epoch_seconds(model, Subset(images, range(sample)), counts, args, device, dtype, 0)
    recompute = {"path": "recompute features", "precision": DTYPES[dtype], "images_timed": seen,
                 "s/epoch": s / seen * n, "measured": "full epoch" if seen == n else f"{seen} images, scaled",
                 **peak_mb()}
    print(f"   recompute: {seen} images in {s:.1f} s -> {recompute['s/epoch']:.0f} s per epoch of {n:,}", flush=True)

    # Cached: the pooled features of every image (the prefix is the whole frozen backbone).
    split = PooledSplit(model.backbone)
    feats = torch.randn(1, n, model.backbone.feature_dim).to(torch.bfloat16)  # values do not change the cost
    cached_ds = CachedViews(feats, data.targets, ViewPlan(1, 1, True))
    cached_model = CachedInputModel(model, split)
    epoch_seconds(cached_model, Subset(cached_ds, range(args.batch)), counts, args, device, dtype, 0)  # warm-up
    reset_peak()
    s, seen = epoch_seconds(cached_model, cached_ds, counts, args, device, dtype, 0)
    cached = {"path": "feature cache", "precision": DTYPES[dtype], "images_timed": seen, "s/epoch": s,
              "measured": "full epoch", **peak_mb()}
    print(f"   cached: {seen:,} images in {s:.2f} s", flush=True)

    # Building the cache: one no-grad forward of the prefix per image and view.
    sub = Subset(images, range(min(args.sample, n)))
    loader = torch.utils.data.DataLoader(sub, batch_size=min(args.batch, 32))
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for x, _ in loader:
            split.prefix(x.to(device))
    build = (time.perf_counter() - t0) / len(sub) * n * args.views
    results = [recompute, cached]
    print()
    print(table(results, ["path", "precision", "images_timed", "measured", "s/epoch", "peak_rss_mb",
                          "cuda_max_alloc_mb"]))
    ratio = recompute["s/epoch"] / cached["s/epoch"]
    saved = recompute["s/epoch"] - cached["s/epoch"]
    print(f"\n   cached epoch is {ratio:.0f}x faster than recomputing "
          f"(target >= 50x: {'met' if ratio >= 50 else 'not met'})")
    print(f"   building the cache ({args.views} view(s) of {n:,} images): about {build:.0f} s, repaid after "
          f"{math.ceil(build / saved) if saved > 0 else '-'} epoch(s) when each epoch reuses the views")
    save_json(args.json, {"results": results, "ratio": ratio, "cache_build_s": build})


if __name__ == "__main__":
    main()
