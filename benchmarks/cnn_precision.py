"""CNNs in fp32 vs bf16 autocast: train step and evaluation, batch 8 and 32, on this machine.

    python benchmarks/cnn_precision.py                          # the default rows below, 224 px
    python benchmarks/cnn_precision.py --rows lite0 --res 64    # the demo's model at the demo's resolution
    python benchmarks/cnn_precision.py --json /tmp/cnn.json

This settles what ``train.precision=auto`` should pick for CNNs (``kind == "cnn"``) on the
machine it runs on. Rows: EfficientNet-Lite0 BN tuning (the demo's model and method) and
CLIP RN50 (open_clip, random weights) with bitfit and with the methods of the lift_rn50_*
recipes (ssf_pool, bitfit+ssf_pool). Every row is one fresh process (the model is built
once, random weights), channels_last and tune_cpu_allocator() as tailtune's default CNN
path. Inside it, for each (mode, batch), fp32 and bf16 alternate over ``--repeats`` rounds
in ABBA order, so a drift in machine load weighs on both alike; each measurement is one
untimed call followed by the median of ``--steps`` timed ones. On CPU the rates are
images per CPU-second of the process (robust to other work on a shared machine).

The last table compares bf16 with fp32 per (row, mode, batch) (``bf16/fp32 > 1``: bf16 is
faster in every round) and shows what ``auto`` picks today for the path.
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import (
    NUM_CLASSES,
    add_run_args,
    cuda_sync,
    default_threads,
    header,
    median_time,
    rate_basis,
    report,
    run_isolated,
    save_json,
    table,
)
from torch import nn
from train_step import build_model

from tailtune.runtime.device import tune_cpu_allocator
from tailtune.runtime.precision import (
    autocast,
    precision_name,
    resolve_eval_precision,
    resolve_precision,
)

ROWS = {
    "lite0": {"label": "efficientnet_lite0 bn_tuning", "provider": "packaged", "model": "efficientnet_lite0",
              "method": "bn_tuning"},
    "rn50_bitfit": {"label": "RN50 bitfit", "provider": "open_clip", "model": "RN50", "method": "bitfit"},
    "rn50_ssf_pool": {"label": "RN50 ssf_pool", "provider": "open_clip", "model": "RN50", "method": "ssf_pool"},
    "rn50_bitfit_ssf": {"label": "RN50 bitfit+ssf_pool", "provider": "open_clip", "model": "RN50",
                        "method": "bitfit+ssf_pool"},
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def train_call(model, batch: int, res: int, device, dtype):
    """One SGD step (autocast forward, loss, backward, update) on a fixed channels_last random batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, res, res, generator=g).to(device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    loss_fn = nn.CrossEntropyLoss()

    def call():
        model.train()
        with autocast(device, dtype):
            logits = model(x)
        loss_fn(logits.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return call


def eval_call(model, batch: int, res: int, device, dtype):
    """One evaluation forward (eval mode, inference_mode, autocast) of a fixed channels_last batch."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, res, res, generator=g).to(device).contiguous(memory_format=torch.channels_last)

    def call():
        model.eval()
        with torch.inference_mode(), autocast(device, dtype):
            model(x).float()

    return call


CALLS = {"train": train_call, "eval": eval_call}


def measure_row(row: dict, args, device) -> list[dict]:
    """All (mode, batch, precision, round) measurements of one row, in this process."""
    model = build_model(row["provider"], row["model"], row["method"], device).to(memory_format=torch.channels_last)
    out = []
    for mode in args.modes.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            order = list(PRECISIONS)
            for rnd in range(args.repeats):
                for name in (order if rnd % 2 == 0 else order[::-1]):
                    call = CALLS[mode](model, batch, args.res, device, PRECISIONS[name])
                    call()  # kernels, buffers
                    wall, cpu = median_time(call, args.steps, cuda_sync())
                    r = {"row": row["label"], "mode": mode, "batch": batch, "precision": name, "round": rnd + 1,
                         "img/s": batch / wall, "img/cpu-s": batch / cpu}
                    print(f"   {r['row']:<30} {mode:<5} b{batch:<3} {name} round {rnd + 1}: "
                          f"{r['img/cpu-s']:.2f} img/CPU-s ({r['img/s']:.2f} img/s wall)", flush=True)
                    out.append(r)
    return out


def compare(results: list[dict], key: str, device, kind: str = "cnn") -> list[dict]:
    """bf16/fp32 per (row, mode, batch) and round; whether bf16 won every round; auto's pick today."""
    rows = []
    seen = []
    for r in results:
        k = (r["row"], r["mode"], r["batch"])
        if k not in seen:
            seen.append(k)
    for row, mode, batch in seen:
        same = [r for r in results if (r["row"], r["mode"], r["batch"]) == (row, mode, batch)]
        fp32 = {r["round"]: r[key] for r in same if r["precision"] == "fp32"}
        bf16 = {r["round"]: r[key] for r in same if r["precision"] == "bf16"}
        ratios = [bf16[i] / fp32[i] for i in sorted(fp32) if i in bf16]
        auto = (resolve_precision("auto", device, kind) if mode == "train"
                else resolve_eval_precision("auto", "auto", device, kind))
        rows.append({"row": row, "mode": mode, "batch": batch,
                     "fp32": " / ".join(f"{fp32[i]:.2f}" for i in sorted(fp32)),
                     "bf16": " / ".join(f"{bf16[i]:.2f}" for i in sorted(bf16)),
                     "bf16/fp32": " / ".join(f"{x:.2f}" for x in ratios),
                     "bf16 wins": all(x > 1 for x in ratios), "auto picks": precision_name(auto)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    p.add_argument("--modes", default="train,eval")
    p.add_argument("--batches", default="8,32")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--repeats", type=int, default=2, help="ABBA rounds of fp32 and bf16 per (mode, batch)")
    p.add_argument("--steps", type=int, default=1, help="timed calls per measurement (median)")
    add_run_args(p, "row")
    args = p.parse_args()
    default_threads(args.threads)
    device = torch.device(args.device)
    if args.measure:
        if device.type == "cpu":
            tune_cpu_allocator()
        report({"results": measure_row(json.loads(args.measure), args, device)})
        return
    header("cnn_precision: CNN train step and evaluation, fp32 vs bf16 autocast", args)
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    results = []
    for name in args.rows.split(","):
        results += run_isolated(ROWS[name])["results"]
    key = "img/cpu-s" if rate_basis(device) == "cpu" else "img/s"
    print(f"\n   {key}, rounds separated by '/' (resolution {args.res} px, channels_last):")
    summary = compare(results, key, device)
    print(table(summary, ["row", "mode", "batch", "fp32", "bf16", "bf16/fp32", "bf16 wins", "auto picks"]))
    save_json(args.json, {"results": results, "summary": summary})


if __name__ == "__main__":
    main()
