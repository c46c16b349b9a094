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
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import header, peak_mb, reset_peak, save_json, table
from PIL import Image

from tailtune.config import DataConfig
from tailtune.data.base import FileDataset, Transformed
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
    args = p.parse_args()
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
            for path, r in rates.items():
                results.append({"view": view, "path": path, "img/s": float(np.median(r)),
                                "runs": " ".join(f"{v:.0f}" for v in r), "peak_rss_mb": peaks[path]})
                print(f"   {view:<10} {path:<12} {results[-1]['img/s']:8.1f} img/s (runs: {results[-1]['runs']})",
                      flush=True)
    print()
    print(table(results, ["view", "path", "img/s", "runs", "peak_rss_mb"]))
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
                          "store_build_s": build})


if __name__ == "__main__":
    main()
