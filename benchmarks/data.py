"""Training input pipeline: images/s from JPEG files vs the preprocessed uint8 store.

    python benchmarks/data.py                       # 256 synthetic 500x375 JPEGs, batch 32
    python benchmarks/data.py --images 1024 --workers 2

Synthetic full-size photos (500x375, JPEG quality 90, smooth gradients plus noise) are
written to a temporary folder. The raw path decodes each file every time (``FileDataset``);
the store path reads decoded pixels, resized to a 256-pixel short side, from a memory map
(``tailtune data cache``) as uint8 tensors, which the transforms crop, resize and normalise
without PIL. A third path, the store's pixels handed to the transforms as PIL images, splits
the gain between skipping the decode and the uint8 tensor path. All feed the same DataLoader
and the backbone's transforms at 224 pixels: the training view (random-resized crop + flip)
and the test view (resize + center crop). The store's one-time build is timed too.

A fourth training path, ``data.decode=gpu``: the loader reads the JPEG bytes and draws the crops,
and the batch is decoded on ``--device`` with torchvision's batched ``decode_jpeg`` (nvJPEG on
CUDA; on a CPU device libjpeg, the fallback), then cropped, resized and normalised there.

Next to the loader rates it prints the model's training-step images/s on the same machine
(``--model-method`` on ``--model-name`` at ``--batch``, random weights, built by tailtune; or
``--model-rate N`` taken from benchmarks/train_step.py's output) and names, for each training
path, the bottleneck: ``loader`` if the pipeline delivers fewer images/s than the model trains
on, else ``model``. On a CPU device loader and model share the cores, so there a real run is
slower than either rate alone.

    python benchmarks/data.py --device cuda --workers 16 --batch 128 --json data.json
    python benchmarks/data.py --model-rate 3.9                 # the model's rate from train_step.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import header, peak_mb, reset_peak, save_json, table
from PIL import Image

from tailtune.config import DataConfig
from tailtune.data.base import FileDataset, SeededTransformed, Transformed
from tailtune.data.gpu_decode import DeviceViews, JpegFiles, PlannedView
from tailtune.data.sources.base import LTData
from tailtune.data.store import DEFAULT_SHORT_SIDE, StoreSplit, write_store
from tailtune.data.transforms import Preprocess, test_transform, train_transform

CLIP = Preprocess(224, (0.481, 0.458, 0.408), (0.269, 0.261, 0.276))


def write_jpegs(folder: Path, n: int, size=(500, 375), seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy + 37 * i) % 256], -1)
        img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(img).save(paths[-1], quality=90)
    return paths


class AsPIL(torch.utils.data.Dataset):
    """The store's items as PIL images (the path before the transforms took uint8 tensors)."""

    def __init__(self, base):
        self.base, self.targets = base, base.targets

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return Image.fromarray(x.permute(1, 2, 0).numpy()), y


def images_per_s(dataset, batch: int, workers: int) -> tuple[float, float]:
    """Images per second of iterating a DataLoader over ``dataset`` once (first batch untimed).

    Without workers the pipeline runs in this process and is timed in CPU seconds, which a
    busy machine does not inflate the way it inflates wall-clock time; with workers, wall-clock.
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers,
                                         persistent_workers=False)
    it = iter(loader)
    first = next(it)
    clock = time.process_time if workers == 0 else time.perf_counter
    t0 = clock()
    seen = 0
    for x, _ in it:
        seen += len(x)
    seconds = clock() - t0
    del first
    return seen / seconds, seconds


def device_decode_rate(files: FileDataset, batch: int, workers: int, device: torch.device) -> float:
    """Images/s of ``data.decode=gpu``'s pipeline: the loader's bytes and crop plans, decoded and
    cropped on ``device`` batch by batch (first batch untimed); in CPU seconds as the other paths
    when all of it runs in this process (a CPU device, no workers), else wall clock."""
    views = DeviceViews(CLIP)
    loader = torch.utils.data.DataLoader(SeededTransformed(JpegFiles(files), PlannedView()), batch_size=batch,
                                         num_workers=workers, collate_fn=views.collate,
                                         pin_memory=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    it = iter(loader)
    views(next(it)[0], device)
    sync()
    clock = time.process_time if workers == 0 and device.type == "cpu" else time.perf_counter
    t0, seen = clock(), 0
    for images, _ in it:
        seen += len(views(images, device))
    sync()
    return seen / (clock() - t0)


def bottleneck(loader_rate: float, model_rate: float | None) -> str | None:
    """``loader`` if the pipeline feeds fewer images/s than the model trains on, else ``model``."""
    if model_rate is None:
        return None
    return "loader" if loader_rate < model_rate else "model"


def model_rate(args, device: torch.device) -> float | None:
    """The model's training-step images/s: ``--model-rate``, or measured here (``--model-method``)."""
    if args.model_rate is not None:
        return args.model_rate
    if args.model_method == "none-measured":
        return None
    from _common import build_model
    from model_rate import train_rate

    model = build_model(args.model_provider, args.model_name, args.model_method, device)
    rate = train_rate(model, args.batch, device, "auto", steps=args.model_steps)
    del model
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="passes per path, alternating (median)")
    p.add_argument("--workers", type=int, default=0, help="loader workers (tailtune uses 0 on <= 4 CPU cores)")
    p.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1, as in a DataLoader worker; more only adds contention to these small ops)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where data.decode=gpu decodes, and where the model step is timed")
    p.add_argument("--model-rate", type=float, default=None,
                   help="the model's training images/s (e.g. from benchmarks/train_step.py); skips measuring it")
    p.add_argument("--model-provider", default="open_clip")
    p.add_argument("--model-name", default="ViT-B-16")
    p.add_argument("--model-method", default="adaptformer",
                   help="PEFT method of the timed model step; none-measured: no model rate, no bottleneck")
    p.add_argument("--model-steps", type=int, default=2)
    p.add_argument("--model-threads", type=int, default=None, help="torch threads of the model step (default: all cores)")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.model_threads or os.cpu_count() or 1)
    rate_of_model = model_rate(args, device)
    if rate_of_model is not None:
        print(f"   model: {args.model_method} training step, batch {args.batch}, on {device}: "
              f"{rate_of_model:.1f} img/s", flush=True)
    torch.set_num_threads(args.threads)
    header("data: images per second of the input pipeline (CPU time without workers), "
           "JPEG decoding vs the preprocessed store", args)
    with tempfile.TemporaryDirectory(prefix="tailtune-bench-") as tmp:
        folder = Path(tmp)
        (folder / "jpg").mkdir()
        paths = write_jpegs(folder / "jpg", args.images)
        labels = [i % 10 for i in range(len(paths))]
        raw = FileDataset(paths, labels)
        jpeg_mb = sum(p.stat().st_size for p in paths) / 2**20
        t0 = time.perf_counter()
        data = LTData(raw, FileDataset(paths[:1], labels[:1]), [str(i) for i in range(10)], np.zeros(10, int))
        meta = write_store(data, DataConfig(name="folder"), folder / "store", args.short_side, workers=args.workers)
        build = time.perf_counter() - t0
        store = StoreSplit(folder / "store", "train")
        print(f"   {len(paths)} JPEGs ({jpeg_mb:.1f} MiB); store built in {build:.1f} s "
              f"({meta['splits']['train']['bytes'] / 2**20:.1f} MiB of pixels at short side {args.short_side})",
              flush=True)
        results = []
        for view, tf in (("train view", train_transform(CLIP)), ("test view", test_transform(CLIP))):
            rates: dict[str, list[float]] = {"JPEG decode": [], "store as PIL": [], "uint8 store": []}
            peaks: dict[str, int] = {}
            for _ in range(args.repeats):  # alternate the paths so that a change in load hits both
                for path, base in (("JPEG decode", raw), ("store as PIL", AsPIL(store)), ("uint8 store", store)):
                    reset_peak()
                    rates[path].append(images_per_s(Transformed(base, tf), args.batch, args.workers)[0])
                    peaks[path] = max(peaks.get(path, 0), peak_mb()["peak_rss_mb"])
            if view == "train view":
                rates[f"decode on {device.type}"] = [device_decode_rate(raw, args.batch, args.workers, device)
                                                     for _ in range(args.repeats)]
                peaks[f"decode on {device.type}"] = peak_mb()["peak_rss_mb"]
            for path, r in rates.items():
                results.append({"view": view, "path": path, "img/s": float(np.median(r)),
                                "runs": " ".join(f"{v:.0f}" for v in r), "peak_rss_mb": peaks[path],
                                "model img/s": rate_of_model if view == "train view" else None,
                                "bottleneck": bottleneck(float(np.median(r)), rate_of_model)
                                if view == "train view" else None})
                print(f"   {view:<10} {path:<12} {results[-1]['img/s']:8.1f} img/s (runs: {results[-1]['runs']})",
                      flush=True)
    print()
    print(table(results, ["view", "path", "img/s", "runs", "peak_rss_mb", "model img/s", "bottleneck"]))
    if device.type == "cpu" and rate_of_model is not None:
        print("   (a CPU device: the loader and the model share the cores, so training runs slower than both)")
    print("\n   ratios vs JPEG decoding (same process, same images): store as PIL, uint8 store")
    ratios, pil_ratios = {}, {}
    for view in ("train view", "test view"):
        rate = {r["path"]: r["img/s"] for r in results if r["view"] == view}
        ratios[view] = rate["uint8 store"] / rate["JPEG decode"]
        pil_ratios[view] = rate["store as PIL"] / rate["JPEG decode"]
        print(f"   {view:<10} {pil_ratios[view]:.2f}x  {ratios[view]:.2f}x")
    print(f"   target: training pipeline >= 3x: {ratios['train view']:.2f}x "
          f"({'met' if ratios['train view'] >= 3 else 'not met'})")
    save_json(args.json, {"results": results, "ratios": ratios, "store_as_pil_ratios": pil_ratios,
                          "store_build_s": build, "model_rate": rate_of_model, "device": str(device)})


if __name__ == "__main__":
    main()
