"""Training-step throughput: fp32 eager baseline vs tailtune's default path, side by side.

    python benchmarks/train_step.py                      # ViT-B/16 (random weights), batch 32, 5 methods
    python benchmarks/train_step.py --steps 3 --compile  # median of 3 steps, plus a torch.compile column
    python benchmarks/train_step.py --device cuda --batch 128

Rows: classifier-only, adaptformer, lora, vpt_deep, full (each if registered) on CLIP
ViT-B/16, and EfficientNet-Lite0 BN tuning (the CNN row: channels_last and the glibc
allocator tuning). Paths: the baseline (fp32, eager, glibc's default allocator) and
tailtune's default path (train.precision=auto, channels_last for CNNs,
tune_cpu_allocator(), and train.compile with --compile). Every (row, path) is measured in
a fresh process started by this one (the allocator setting is process-wide and cannot be
undone), the two paths of a row one after the other, in ABBA order over the rows, so a
drift in machine load weighs on both alike. Each measurement: one untimed step at batch
``--warmup-batch``, ``--warmup`` untimed full steps, then the median of ``--steps``.

A precision probe opens the run: a 1024^3 matmul and a ViT-B/16 forward in fp32 and bf16,
which shows whether this CPU computes bf16 natively (where auto picks bf16) or emulates it.
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
    interleaved,
    median_time,
    peak_mb,
    rate_basis,
    report,
    reset_peak,
    run_isolated,
    save_json,
    table,
)
from torch import nn

from tailtune.config import HeadConfig, ModelConfig, PeftConfig
from tailtune.models.accel import compile_model
from tailtune.models.backbones.base import build_backbone
from tailtune.models.heads import build_head
from tailtune.models.model import TailModel
from tailtune.models.peft.base import PEFT_METHODS, apply_peft, trains_bn_stats
from tailtune.runtime.device import tune_cpu_allocator
from tailtune.runtime.precision import autocast, resolve_precision

VIT_METHODS = ("none", "adaptformer", "lora", "vpt_deep", "full")
DTYPES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def build_model(provider: str, name: str, method: str, device: torch.device) -> TailModel:
    """Backbone (random weights) + PEFT + cosine head, as api.build makes them (without its side effects)."""
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(provider=provider, name=name, pretrained="none"))
    peft = PeftConfig(method=method)
    apply_peft(backbone, peft, NUM_CLASSES)
    head = build_head(HeadConfig(), backbone.feature_dim, NUM_CLASSES)
    return TailModel(backbone, head, bn_train=trains_bn_stats(peft)).to(device)


def make_step(model: TailModel, batch: int, res: int, device, dtype, channels_last: bool):
    """One SGD step (forward under autocast, loss, backward, update) on a fixed random batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, res, res, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step():
        with autocast(device, dtype):
            logits = model(x)
        scaler.scale(loss_fn(logits.float(), y)).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step


def measure(row: dict, path: str, args, device, dtype, channels_last: bool, compiled: bool) -> dict:
    model = build_model(row["provider"], row["model"], row["method"], device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compiled:
        compile_model(model)
    reset_peak()
    make_step(model, args.warmup_batch, row["res"], device, dtype, channels_last)()  # kernels, buffers
    for _ in range(args.warmup):
        make_step(model, args.batch, row["res"], device, dtype, channels_last)()
    step = make_step(model, args.batch, row["res"], device, dtype, channels_last)
    wall, cpu = median_time(step, args.steps, cuda_sync())
    out = {"row": row["label"], "path": path, "precision": DTYPES[dtype], "img/s": args.batch / wall,
           "s/step": wall, "img/cpu-s": args.batch / cpu, "cpu-s/step": cpu, **peak_mb()}
    return out


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
        rows.append({"probe": "ViT-B/16 forward, batch 2", "precision": DTYPES[dtype], "rate": f"{2 / s:.2f} img/s"})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model (random weights)")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--methods", default=",".join(VIT_METHODS), help="PEFT methods of the ViT rows")
    p.add_argument("--cnn", default="efficientnet_lite0", help="packaged CNN of the allocator row ('' to skip)")
    p.add_argument("--cnn-res", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
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
        row = spec["row"]
        tuned = spec["tune"] and device.type == "cpu" and tune_cpu_allocator()
        dtype = resolve_precision(spec["precision"], device, row["kind"])
        result = measure(row, spec["path"], args, device, dtype, spec["optimised"] and row["kind"] == "cnn",
                         spec["compile"])
        report(dict(result, allocator_tuned=tuned))
        return
    header("train_step: images/s of one training step, fp32 eager vs tailtune's default path", args)

    probe = [] if args.no_probe else precision_probe(device)
    if probe:
        print(table(probe, ["probe", "precision", "rate"]))

    rows = []
    for m in args.methods.split(","):
        if m not in PEFT_METHODS:
            print(f"   {m}: not a registered PEFT method here, skipped")
            continue
        rows.append({"label": f"{args.model} {m}", "provider": "open_clip", "model": args.model, "method": m,
                     "res": args.res, "kind": "vit"})
    if args.cnn:
        rows.append({"label": f"{args.cnn} bn_tuning (CNN)", "provider": "packaged", "model": args.cnn,
                     "method": "bn_tuning", "res": args.cnn_res, "kind": "cnn"})

    paths = [{"path": "fp32 eager", "precision": "fp32", "tune": False, "optimised": False, "compile": False},
             {"path": "default", "precision": "auto", "tune": True, "optimised": True, "compile": False}]
    if args.compile:
        paths.append({"path": "default + compile", "precision": "auto", "tune": True, "optimised": True,
                      "compile": True})
    results = []
    for row, path in interleaved(rows, paths):
        results.append(run_isolated({"row": row, **path}))
        r = results[-1]
        print(f"   {r['row']:<28} {r['path']:<20} {r['precision']:<5} {r['img/s']:8.2f} img/s  "
              f"({r['s/step']:.1f} s/step wall, {r['cpu-s/step']:.1f} CPU-s/step, peak RSS {r['peak_rss_mb']} MiB)",
              flush=True)
    results.sort(key=lambda r: ([p["path"] for p in paths].index(r["path"]), [x["label"] for x in rows].index(r["row"])))
    print()
    print(table(results, ["row", "path", "precision", "allocator_tuned", "img/s", "s/step", "img/cpu-s",
                          "cpu-s/step", "peak_rss_mb", "cuda_max_alloc_mb"]))
    key = "img/cpu-s" if rate_basis(device) == "cpu" else "img/s"
    print(f"\n   ratios below compare {key} (CPU seconds of the measuring process on CPU, wall-clock on GPU)")
    base = {r["row"]: r[key] for r in results if r["path"] == "fp32 eager"}
    print("\n   ratios to the fp32 eager baseline (same run, same batch, interleaved fresh processes):")
    for r in results:
        if r["path"] != "fp32 eager":
            print(f"   {r['row']:<28} {r['path']:<26} {r[key] / base[r['row']]:.2f}x")
    adapt = [r for r in results if r["row"].endswith(" adaptformer") and r["path"] != "fp32 eager"]
    if adapt:
        best = max(r[key] for r in adapt) / base[adapt[0]["row"]]
        print(f"   target: adaptformer >= 3x the fp32 eager baseline: {best:.2f}x "
              f"({'met' if best >= 3 else 'not met'})")
    save_json(args.json, {"probe": probe, "results": results})


if __name__ == "__main__":
    main()
