"""The GPU rows of issue 18 in one command, for a machine with a CUDA GPU for a few minutes.

    python benchmarks/gpu_check.py --out gpu-figures            # everything, within --budget seconds (480)
    python benchmarks/gpu_check.py --out gpu-figures --only agree,data

Installs nothing and downloads nothing (random weights; synthetic JPEGs). Refuses at once, with
exit code 3, where no CUDA device is present. Steps, each bounded by its share of ``--budget``
(CAPS: 45, 150, 90, 75 and 120 s of the default 480; a step past it is killed and recorded as
timed out, and the next steps still run):

  agree       logits of a random ViT-B/16 AdaptFormer on CUDA (precision auto: bf16, or fp16
              without bf16) against the CPU in fp32, within bf16 tolerance (benchmarks/model_rate.py)
  train_step  benchmarks/train_step.py --device cuda --batches 128 --json (classifier-only,
              AdaptFormer, LoRA, full, ... as that script's rows)
  eval        benchmarks/eval.py --device cuda --batches 128 --json
  data        benchmarks/data.py --device cuda --batch 128: loader images/s (JPEG decode on the
              CPU, data.decode=gpu, the uint8 store) next to the model's, and the bottleneck
  run         a short real training run on synthetic JPEGs: `tailtune data cache` of a folder
              dataset, then `tailtune train` from the store, and one more with data.decode=gpu

Everything lands in ``--out``: one JSON / log per step and summary.json (the machine, each step's
exit code, seconds and files). Exit code: 0 if every step ran and the agreement check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
STEPS = ("agree", "train_step", "eval", "data", "run")
# Each step's share of the default 480 s budget: one slow step cannot starve the others.
CAPS = {"agree": 45, "train_step": 150, "eval": 90, "data": 75, "run": 120}
NO_CUDA = 3


def cuda_present() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def cuda_machine() -> dict:
    """The machine and its first GPU (name, capability, memory, bf16), for the figures' record."""
    sys.path.insert(0, str(SRC))
    import torch

    from tailtune.runtime.device import default_workers
    from tailtune.runtime.hardware import describe_machine

    props = torch.cuda.get_device_properties(0)
    return dict(describe_machine(), gpu_capability=f"{props.major}.{props.minor}",
                gpu_memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                loader_workers=default_workers(torch.device("cuda")),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def synthetic_folder(root: Path, classes: int = 10, per_class: int = 64, test_per_class: int = 8,
                     size=(320, 240)) -> Path:
    """root/{train,test}/c<k>/<i>.jpg: smooth gradients plus noise, a different hue per class
    (the model has something to learn), JPEG quality 90."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for split, n in (("train", per_class), ("test", test_per_class)):
        for k in range(classes):
            d = root / split / f"c{k}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 25 * k)], -1)
                img = np.clip(base + rng.normal(0, 16, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.jpg", quality=90)
    return root


def run_commands(root: Path, out: Path, device: str = "cuda", model: tuple[str, ...] = ("model.name=ViT-B-16",),
                 epochs: int = 2, batch: int = 128) -> dict[str, list[str]]:
    """The CLI calls of the ``run`` step: cache the folder into a store, train from it, train with data.decode=gpu."""
    cli = [sys.executable, "-m", "tailtune.cli"]
    data = ["data.name=folder", f"data.root={root}", "data.imb_ratio=1", "data.val=none"]
    common = [*data, "model.provider=open_clip", *model, "model.pretrained=none", "peft.method=adaptformer",
              "head.init=class_mean", "eval.tte=none", f"train.epochs={epochs}", f"train.batch_size={batch}",
              f"train.device={device}", "train.cache_features=never", "quiet=true"]
    return {
        "cache": [*cli, "data", "cache", "folder", *data, "--out", str(out / "store"), "--quiet"],
        "train_store": [*cli, "train", "-r", "lift", *common, f"data.store={out / 'store'}",
                        "--run-dir", str(out / "run_store")],
        "train_gpu_decode": [*cli, "train", "-r", "lift", *common, "data.decode=gpu",
                             "--run-dir", str(out / "run_gpu_decode")],
    }


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _call(name: str, argv: list[str], out: Path, deadline: float, records: list) -> bool:
    """Run ``argv`` within what is left before ``deadline``; its output goes to out/<name>.log."""
    left = max(0.0, deadline - time.monotonic())
    rec = {"step": name, "argv": argv}
    if left < 1:
        rec.update(rc=None, status="skipped: no time left")
        records.append(rec)
        print(f"-- {name}: skipped (no time left)", flush=True)
        return False
    print(f"-- {name} (at most {left:.0f} s): {' '.join(argv)}", flush=True)
    t0 = time.monotonic()
    with open(out / f"{name}.log", "w") as log:
        # Its own process group: the benchmarks measure in child processes, which a timeout must end too.
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=HERE,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=left)
            status = "ok" if rc == 0 else f"failed (exit code {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timed out"
    rec.update(rc=rc, status=status, seconds=round(time.monotonic() - t0, 1))
    records.append(rec)
    print(f"   {status} in {rec['seconds']} s (log: {out / (name + '.log')})", flush=True)
    return rc == 0


def steps(out: Path, workers: int) -> dict[str, list[tuple[str, list[str]]]]:
    py = sys.executable
    return {
        "agree": [("agree", [py, "model_rate.py", "--agree", "cuda", "--json", str(out / "agreement.json")])],
        "train_step": [("train_step", [py, "train_step.py", "--device", "cuda", "--batches", "128",
                                       "--json", str(out / "train_step.json")])],
        "eval": [("eval", [py, "eval.py", "--device", "cuda", "--batches", "128", "--json", str(out / "eval.json")])],
        "data": [("data", [py, "data.py", "--device", "cuda", "--batch", "128", "--images", "1024",
                           "--repeats", "2", "--workers", str(workers), "--json", str(out / "data.json")])],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu-figures", help="folder of every figure and log (created)")
    p.add_argument("--budget", type=float, default=480, help="seconds for all steps together")
    p.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps: {', '.join(STEPS)}")
    p.add_argument("--workers", type=int, default=None, help="loader workers of the data step (default: tailtune's)")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        p.error(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
    if not cuda_present():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): this script measures the "
              "GPU path only; run it on a machine with a CUDA GPU (the CPU figures come from "
              "benchmarks/train_step.py and benchmarks/eval.py).", file=sys.stderr)
        return NO_CUDA
    deadline = time.monotonic() + args.budget
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    machine = cuda_machine()
    workers = args.workers if args.workers is not None else machine["loader_workers"]
    print(f"gpu_check on {machine['gpu']} (capability {machine['gpu_capability']}), {machine['cores']} cores; "
          f"figures in {out}", flush=True)
    records: list[dict] = []
    planned = steps(out, workers)
    scale = min(1.0, args.budget / sum(CAPS[s] for s in chosen))  # a smaller --budget shrinks every share
    for step in chosen:
        until = min(deadline, time.monotonic() + CAPS[step] * scale)
        if step == "run":
            root = synthetic_folder(out / "jpegs")
            for name, cmd in run_commands(root, out).items():
                if not _call(f"run_{name}", cmd, out, until, records) and name == "cache":
                    break  # no store: nothing to train from
        else:
            for name, cmd in planned[step]:
                _call(name, cmd, out, until, records)
    summary = {"machine": machine, "steps": records}
    agreement = out / "agreement.json"
    if agreement.exists():
        summary["agreement"] = json.loads(agreement.read_text())
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"summary: {out / 'summary.json'}")
    failed = [r["step"] for r in records if r["rc"] != 0]
    if failed:
        print(f"steps not finished: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
