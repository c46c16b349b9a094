"""Which attention a bf16 ViT-B/16 should run: bmm + softmax, fused SDPA, fp32 attention, or stock MHA.

    python benchmarks/attention.py                 # all rows and the profiles (about 8 min on 2 cores)
    python benchmarks/attention.py --steps 1 --batches 8 --no-profile

Part 1 backs the choice in ``tailtune/models/attention.py`` with a measurement. Rows (all
bf16 autocast, open_clip ViT-B/16 with random weights): an AdaptFormer training step at each
of ``--batches`` and a no-grad classifier-only forward at batch ``--eval-batch``. Variants:

- ``bmm+softmax``: ``attend``'s two batched matmuls and a softmax (tailtune's choice where a
  bf16 CPU backward follows: ``_UNFUSED_BF16_BACKWARD=True``; for the eval row it is forced);
- ``fused SDPA``: PyTorch's fused ``scaled_dot_product_attention`` (``_UNFUSED_BF16_BACKWARD=False``;
  tailtune's choice without a backward);
- ``fp32 attention``: ``attend`` run in fp32 inside autocast (q, k, v upcast, the result cast back);
- ``stock MHA``: open_clip's own ``nn.MultiheadAttention`` (FastAttention undone; frozen weights
  still cast once), the strided path the issue found.

Each (row, variant) runs in a fresh process, ABBA over the rows; ratios on CPU seconds.

Part 2 answers "why is classifier-only evaluation slower in bf16 than in fp32": one no-grad
forward at batch ``--eval-batch`` of the stock model and of tailtune's, each in fp32 and bf16,
timed (median of ``--steps``) and then profiled; the profiler's top ops of each are printed.
"""

from __future__ import annotations

import argparse
import json

import torch
from _common import (
    add_run_args,
    build_model,
    default_threads,
    header,
    interleaved,
    median_time,
    profile_ops,
    report,
    run_isolated,
    save_json,
    stock_model,
    table,
    top_ops_table,
)
from train_step import make_step

import tailtune.models.attention as attention
import tailtune.models.peft.targets as targets
from tailtune.runtime.device import tune_cpu_allocator
from tailtune.runtime.precision import autocast

VARIANTS = ("bmm+softmax", "fused SDPA", "fp32 attention", "stock MHA")
CPU = torch.device("cpu")


def fp32_attend(original):
    """``attend`` computed in fp32 inside autocast, its result handed back in the input's dtype."""
    def attend(qkv, heads, attn_mask=None, dropout_p=0.0):
        with torch.autocast(qkv.device.type, enabled=False):
            return original(qkv.float(), heads, attn_mask, dropout_p).to(qkv.dtype)
    return attend


def use_variant(variant: str, model) -> None:
    """Switch ``model`` (and tailtune's attention module) to ``variant``, in this process only."""
    if variant == "bmm+softmax":
        attention._UNFUSED_BF16_BACKWARD = True
        attention.unfused_backward = lambda x: x.device.type == "cpu" and x.dtype == torch.bfloat16
    elif variant == "fused SDPA":
        attention._UNFUSED_BF16_BACKWARD = False
    elif variant == "fp32 attention":
        attention.attend = targets.attend = fp32_attend(attention.attend)
    elif variant == "stock MHA":
        stock_model(model, attention=True, casts=False)


def measure_variant(row: dict, variant: str, args) -> dict:
    """In a child process: the median step (or forward) of ``row`` with ``variant``."""
    tune_cpu_allocator()
    model = build_model("open_clip", args.model, row["method"], CPU)
    use_variant(variant, model)
    if row["train"]:
        make_step(model, 2, 224, CPU, torch.bfloat16)()
        fn = make_step(model, row["batch"], 224, CPU, torch.bfloat16)
    else:
        model.eval()
        x = torch.randn(row["batch"], 3, 224, 224)

        def fn():
            with torch.no_grad(), autocast(CPU, torch.bfloat16):
                model(x)
        fn()
    wall, cpu = median_time(fn, args.steps)
    return {"row": row["label"], "variant": variant, "img/cpu-s": row["batch"] / cpu, "cpu-s": cpu,
            "img/s": row["batch"] / wall}


def profile_eval(spec: dict, args) -> dict:
    """In a child process: a classifier-only forward (no grad) timed, then profiled."""
    tune_cpu_allocator()
    model = build_model("open_clip", args.model, "none", CPU, stock=spec["stock"]).eval()
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else None
    x = torch.randn(args.eval_batch, 3, 224, 224)

    def fn():
        with torch.no_grad(), autocast(CPU, dtype):
            model(x)
    fn()
    wall, cpu = median_time(fn, args.steps)
    ops = profile_ops(fn)
    return {"model": spec["model"], "precision": spec["precision"], "img/cpu-s": args.eval_batch / cpu,
            "cpu-s": cpu, "profiled_ms": sum(o["self_ms"] for o in ops), "ops": ops[:12]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model (random weights)")
    p.add_argument("--batches", default="8,32", help="batches of the AdaptFormer training rows")
    p.add_argument("--eval-batch", type=int, default=16, help="batch of the evaluation row and the profiles")
    p.add_argument("--steps", type=int, default=2, help="timed steps per measurement (median)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--no-profile", action="store_true", help="skip part 2 (the eval profiles)")
    add_run_args(p, "(row, variant)")
    args = p.parse_args()
    default_threads(args.threads)
    if args.measure:
        spec = json.loads(args.measure)
        report(profile_eval(spec, args) if "stock" in spec else measure_variant(spec["row"], spec["variant"], args))
        return
    header("attention: bf16 ViT-B/16 with bmm+softmax, fused SDPA, fp32 attention or open_clip's MHA", args)
    rows = [{"label": f"train adaptformer b{b}", "method": "adaptformer", "batch": int(b), "train": True}
            for b in args.batches.split(",") if b]
    rows.append({"label": f"eval classifier-only b{args.eval_batch}", "method": "none", "batch": args.eval_batch,
                 "train": False})
    variants = [v for v in args.variants.split(",") if v]
    results = []
    for row, variant in interleaved(rows, variants):
        results.append(run_isolated({"row": row, "variant": variant}))
        r = results[-1]
        print(f"   {r['row']:<28} {r['variant']:<15} {r['img/cpu-s']:6.2f} img/CPU-s ({r['cpu-s']:.1f} CPU-s)",
              flush=True)
    by = {(r["row"], r["variant"]): r["img/cpu-s"] for r in results}
    lines = []
    for row in rows:
        best = max(variants, key=lambda v: by[(row["label"], v)])
        line = {"row": row["label"], **{v: by[(row["label"], v)] for v in variants}, "fastest": best}
        lines.append(line)
    print("\n   bf16, img/CPU-s per variant (fresh processes, ABBA):")
    print(table(lines, ["row", *variants, "fastest"]))
    chosen = {True: "bmm+softmax", False: "fused SDPA"}
    for row, line in zip(rows, lines):
        mine = chosen[row["train"]]
        if mine in variants:
            print(f"   {row['label']}: tailtune runs {mine}; fastest measured: {line['fastest']} "
                  f"({line[mine] / line[line['fastest']]:.2f}x of it)")
    profiles = []
    if not args.no_profile:
        print(f"\n   classifier-only evaluation, no grad, batch {args.eval_batch}: stock open_clip vs tailtune")
        for model, prec in [("stock", "fp32"), ("stock", "bf16"), ("tailtune", "bf16"), ("tailtune", "fp32")]:
            r = run_isolated({"stock": model == "stock", "model": model, "precision": prec})
            profiles.append(r)
            print(f"\n   {model} {prec}: {r['img/cpu-s']:.2f} img/CPU-s ({r['cpu-s']:.1f} CPU-s); top ops:")
            print(top_ops_table(r["ops"], total=r["profiled_ms"]))
        rate = {(r["model"], r["precision"]): r["img/cpu-s"] for r in profiles}
        for model in ("stock", "tailtune"):
            print(f"   {model}: bf16 / fp32 = {rate[(model, 'bf16')] / rate[(model, 'fp32')]:.2f}x")
    save_json(args.json, {"results": results, "table": lines, "profiles": profiles})


if __name__ == "__main__":
    main()
