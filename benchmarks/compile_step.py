"""Does ``train.compile`` pay for a training step on this machine? Eager vs compiled, side by side.

    python benchmarks/compile_step.py                          # timm ViT-Tiny/16 AdaptFormer, batch 16, 224 px
    python benchmarks/compile_step.py --device cuda --batch 128 --mode max-autotune

Each path runs in its own fresh process (a compiled graph and its caches never leak into the
eager measurement): a few untimed warm-up steps (the compiled path compiles in them; their
time is printed), then the median of ``--steps`` steps. Prints images/s of both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import (
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

from tailtune.config import HeadConfig, ModelConfig, PeftConfig
from tailtune.models.accel import compile_model
from tailtune.models.backbones.base import build_backbone
from tailtune.models.heads import build_head
from tailtune.models.model import TailModel
from tailtune.models.peft.base import apply_peft
from tailtune.runtime.precision import autocast, resolve_precision

CLASSES = 100


def measure(args, compiled: bool) -> dict:
    device = torch.device(args.device)
    dtype = resolve_precision(args.precision, device, "vit")
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(provider=args.provider, name=args.model, pretrained="none",
                                          resolution=args.res))
    apply_peft(backbone, PeftConfig(method=args.method), CLASSES)
    model = TailModel(backbone, build_head(HeadConfig(), backbone.feature_dim, CLASSES)).to(device)
    if compiled:
        compile_model(model, args.mode)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.res, args.res, generator=g).to(device)
    y = torch.randint(0, CLASSES, (args.batch,), generator=g).to(device)
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step():
        with autocast(device, dtype):
            logits = model(x)
        loss_fn(logits.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync = cuda_sync()
    if sync:
        sync()
    warm = time.perf_counter() - t0
    wall, cpu = median_time(step, args.steps, sync)
    basis = rate_basis(device)
    return {"path": "compiled" if compiled else "eager", "precision": args.precision,
            "warm-up s": warm, "img/s": args.batch / wall, "img/cpu-s": args.batch / cpu,
            "rate": args.batch / (cpu if basis == "cpu" else wall), "basis": basis}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--provider", default="timm")
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--method", default="adaptformer")
    p.add_argument("--res", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16 | auto")
    p.add_argument("--mode", default="default", help="train.compile_mode: default | reduce-overhead | max-autotune")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    default_threads(args.threads)
    if args.measure:
        report(measure(args, json.loads(args.measure) == "compiled"))
        return
    header("torch.compile vs eager: one training step", args)
    rows = [run_isolated(path) for path in ("eager", "compiled")]
    print(table(rows, ["path", "precision", "warm-up s", "img/s", "img/cpu-s"]))
    print(f"   compiled / eager ({rows[0]['basis']} basis): {rows[1]['rate'] / rows[0]['rate']:.2f}x")
    save_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
