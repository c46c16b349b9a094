"""The model's side of the input-pipeline question: training-step images/s of one tailtune model,
and the CUDA-vs-CPU logit agreement check of benchmarks/gpu_check.sh.

    python benchmarks/model_rate.py --method adaptformer --batch 32        # one rate, printed
    python benchmarks/model_rate.py --agree cuda --json agree.json         # logits on cuda vs CPU fp32
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import build_model, cuda_sync, make_step

from tailtune.models.model import TailModel
from tailtune.runtime.precision import autocast, precision_name, resolve_precision

# bf16 keeps 8 bits of mantissa (relative error 2^-8 per rounding); over a ViT's blocks the logits of
# a random model drift by a few percent of their spread. Agreement: max |cuda - cpu| within this
# fraction of the CPU logits' standard deviation, and the same top-1 class for most images.
BF16_TOLERANCE = 0.1
MIN_TOP1_AGREEMENT = 0.9


def train_rate(model: TailModel, batch: int, device: torch.device, precision: str = "auto",
               steps: int = 3, warmup: int = 1) -> float:
    """Images/s (wall clock) of full training steps (autocast forward, loss, backward, SGD) on a random batch."""
    dtype = resolve_precision(precision, device, model.backbone.kind)
    res = model.backbone.preprocess.resolution
    step = make_step(model, batch, res, device, dtype)
    sync = cuda_sync() if device.type == "cuda" else None
    for _ in range(warmup):
        step()
    if sync:
        sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if sync:
        sync()
    return batch * steps / (time.perf_counter() - t0)


@torch.no_grad()
def agreement(device: torch.device, precision: str = "auto", provider: str = "open_clip", name: str = "ViT-B-16",
              method: str = "adaptformer", batch: int = 8, resolution: int | None = None,
              reference: torch.device | None = None) -> dict:
    """Logits of one random model and batch on ``device`` (under ``precision``) against the CPU in fp32.

    Returns the figures and ``ok``: max abs difference within ``BF16_TOLERANCE`` of the reference
    logits' standard deviation and top-1 agreement >= ``MIN_TOP1_AGREEMENT``.
    """
    reference = reference or torch.device("cpu")
    model = build_model(provider, name, method, reference, resolution=resolution).eval()
    res = model.backbone.preprocess.resolution
    x = torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(1))
    ref = model(x).float()
    dtype = resolve_precision(precision, device, model.backbone.kind)
    model.to(device)
    with autocast(device, dtype):
        out = model(x.to(device)).float().cpu()
    diff = (out - ref).abs().max().item()
    scale = ref.std().item()
    top1 = (out.argmax(1) == ref.argmax(1)).float().mean().item()
    ok = diff <= BF16_TOLERANCE * scale and top1 >= MIN_TOP1_AGREEMENT
    return {"device": str(device), "precision": precision_name(dtype), "model": f"{provider} {name} {method}",
            "batch": batch, "max_abs_diff": diff, "ref_logit_std": scale, "relative": diff / max(scale, 1e-12),
            "tolerance": BF16_TOLERANCE, "top1_agreement": top1, "ok": bool(ok)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--provider", default="open_clip")
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--method", default="adaptformer")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", default="auto")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--agree", default=None, metavar="DEVICE", help="check logits on DEVICE against CPU fp32 instead")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.agree:
        out = agreement(torch.device(args.agree), args.precision, args.provider, args.model, args.method)
    else:
        device = torch.device(args.device)
        model = build_model(args.provider, args.model, args.method, device)
        out = {"model": f"{args.provider} {args.model} {args.method}", "device": str(device), "batch": args.batch,
               "img/s": train_rate(model, args.batch, device, args.precision, args.steps)}
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if args.agree and not out["ok"]:
        raise SystemExit(f"logits on {args.agree} disagree with CPU fp32 beyond the bf16 tolerance: {out}")


if __name__ == "__main__":
    main()
