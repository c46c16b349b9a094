"""Where one bf16 AdaptFormer training step spends its time, and how far it is from its matmul bound.

    python benchmarks/profile_step.py                  # ViT-B/16 AdaptFormer, bf16, batch 32 (about 2 min)
    python benchmarks/profile_step.py --batch 8 --steps 1 --method lora

One process, tailtune's model path (open_clip ViT-B/16, random weights, tune_cpu_allocator()):

1. the step timed: median of ``--steps`` (after a warm-up step at batch 2 and one at full batch);
2. the same step under torch.profiler, op by op (self CPU time; FLOPs of the matmuls as the
   profiler counts them for ``mm``/``addmm``/``bmm``);
3. the matmul limit: the step's matmul shapes (every linear layer's weight at ``batch x
   tokens`` rows, forward and its activation-gradient transpose) timed alone in
   ``--precision``; limit = their FLOPs / their CPU seconds;
4. the bound: the step's matmul FLOPs / that limit, and a table of what remains between the
   measured step and the bound, per op group (matmuls, attention, copies/casts, norms, GELU,
   elementwise, other): a group's time in the step (its share of the profile applied to the
   timed step) against its time at the bound (its matmul FLOPs at the limit; 0 for the rest).

Times are CPU seconds of this process (both cores' worth), so the bound and the step compare
on the same basis on a shared machine.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    build_model,
    default_threads,
    header,
    median_time,
    profile_ops,
    save_json,
    table,
    top_ops_table,
)
from torch import nn
from train_step import make_step

from tailtune.runtime.device import tune_cpu_allocator
from tailtune.runtime.precision import resolve_precision

CPU = torch.device("cpu")
GROUPS = {  # op group -> aten op names (anything else: "other")
    "matmuls": {"aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::mkldnn_convolution",
                "aten::convolution", "aten::_convolution", "aten::conv2d"},
    "attention": {"aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data",
                  "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"},
    "copies/casts": {"aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous", "aten::cat",
                     "aten::stack"},
    "norms": {"aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::layer_norm"},
    "GELU": {"aten::gelu", "aten::gelu_backward"},
    "elementwise": {"aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::div", "aten::div_", "aten::sub",
                    "aten::fill_", "aten::zero_", "aten::masked_fill", "aten::sum", "aten::neg", "aten::addcmul_",
                    "aten::addcdiv_", "aten::lerp_", "aten::sqrt", "aten::exp", "aten::mean", "aten::norm",
                    "aten::linalg_vector_norm", "aten::clamp", "aten::clamp_min", "aten::where"},
}
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


def group_of(op: str) -> str:
    return next((g for g, names in GROUPS.items() if op in names), "other")


def matmul_limit(model: nn.Module, rows: int, dtype, repeats: int) -> tuple[float, list[dict]]:
    """GFLOP per CPU-second of the step's linear-layer matmuls, timed alone (and per shape)."""
    shapes = sorted({tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)
                     and m.weight.dim() == 2 and min(m.weight.shape) >= 256}, reverse=True)
    dt = dtype or torch.float32
    out, flops, seconds = [], 0.0, 0.0
    for n_out, n_in in shapes:
        for k, n, what in ((n_in, n_out, "forward"), (n_out, n_in, "activation grad")):
            a, b = torch.randn(rows, k, dtype=dt), torch.randn(k, n, dtype=dt)
            a @ b
            cpu = median_time(lambda a=a, b=b: a @ b, repeats)[1]
            f = 2 * rows * k * n
            flops, seconds = flops + f, seconds + cpu
            out.append({"matmul": f"({rows}, {k}) x ({k}, {n})", "pass": what, "GFLOP/CPU-s": f / cpu / 1e9})
    return flops / seconds / 1e9, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16", help="open_clip model (random weights)")
    p.add_argument("--method", default="adaptformer")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="timed steps (median)")
    p.add_argument("--top", type=int, default=15, help="ops listed from the profile")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    default_threads(args.threads)
    header(f"profile_step: one {args.precision} {args.method} training step, op by op, against its matmul bound",
           args)
    tune_cpu_allocator()
    dtype = resolve_precision(args.precision, CPU)
    model = build_model("open_clip", args.model, args.method, CPU)
    make_step(model, 2, 224, CPU, dtype)()
    step = make_step(model, args.batch, 224, CPU, dtype)
    step()
    wall, cpu = median_time(step, args.steps)
    print(f"   step: {cpu:.2f} CPU-s ({wall:.2f} s wall), {args.batch / cpu:.2f} img/CPU-s")

    t0 = time.process_time()
    ops = profile_ops(step, record_shapes=True)
    profiled_cpu = time.process_time() - t0
    total_ms = sum(o["self_ms"] for o in ops)
    print(f"\n   profile of one step ({profiled_cpu:.2f} CPU-s under the profiler; the ops' self times, "
          f"which the profiler takes by the clock, add up to {total_ms / 1e3:.2f} s); top {args.top} ops by self time:")
    print(top_ops_table(ops, args.top, total=total_ms))

    visual = getattr(model.backbone.encoder, "visual", model.backbone.encoder)  # not CLIP's text tower
    tokens = visual.positional_embedding.shape[0]
    limit, per_shape = matmul_limit(visual, args.batch * tokens, dtype, 3)
    print(f"\n   matmul limit ({args.precision}, the step's linear-layer shapes at {args.batch} x {tokens} rows, "
          f"alone): {limit:.0f} GFLOP/CPU-s")
    print(table(per_shape, ["matmul", "pass", "GFLOP/CPU-s"]))

    groups: dict[str, dict] = {}
    for o in ops:
        g = groups.setdefault(group_of(o["op"]), {"group": group_of(o["op"]), "self_ms": 0.0, "gflop": 0.0})
        g["self_ms"] += o["self_ms"]
        if o["op"] in MATMUL_OPS:
            g["gflop"] += o["flops"] / 1e9
    mm_gflop = sum(g["gflop"] for g in groups.values())
    bound = mm_gflop / limit
    lines = []
    for name in [*GROUPS, "other"]:
        g = groups.get(name)
        if g is None:
            continue
        step_s = cpu * g["self_ms"] / total_ms
        at_bound = g["gflop"] / limit
        lines.append({"op group": name, "CPU-s in step": step_s, "share": f"{100 * g['self_ms'] / total_ms:.0f}%",
                      "GFLOP": g["gflop"] or None, "GFLOP/CPU-s": g["gflop"] / step_s if g["gflop"] else None,
                      "CPU-s at bound": at_bound, "remains": step_s - at_bound})
    lines.append({"op group": "step", "CPU-s in step": cpu, "share": "100%", "GFLOP": mm_gflop,
                  "GFLOP/CPU-s": mm_gflop / cpu, "CPU-s at bound": bound, "remains": cpu - bound})
    print(f"\n   what remains between the measured step and the bound (bound = {mm_gflop:.0f} GFLOP of matmuls / "
          f"{limit:.0f} GFLOP/CPU-s = {bound:.2f} CPU-s; the step: {cpu:.2f} CPU-s, so it runs at {100 * bound / cpu:.0f}% "
          f"of the bound's speed):")
    print(table(lines, ["op group", "CPU-s in step", "share", "GFLOP", "GFLOP/CPU-s", "CPU-s at bound", "remains"]))
    save_json(args.json, {"step_cpu_s": cpu, "step_wall_s": wall, "img_per_cpu_s": args.batch / cpu,
                          "matmul_limit_gflop_per_cpu_s": limit, "matmul_gflop": mm_gflop, "bound_cpu_s": bound,
                          "groups": lines, "limit_shapes": per_shape, "top_ops": ops[:args.top]})


if __name__ == "__main__":
    main()
