"""Reading a safetensors file that another process keeps replacing: time, peak memory, mixed reads.

    python benchmarks/snapshot_read.py            # 100 MB file, 3000 reads under a rewriting process

Why ``tailtune.runtime.checkpoint.read_snapshot`` is ``safe_open(..., backend="pread")``. Each way
of reading runs in its own child process, so its peak RSS (over the child's baseline) is its
own (Linux: /proc/self/status). ``hand-written`` is the reader tailtune had before (one ``readinto`` of the file, tensors
as views of that buffer), kept here as the yardstick.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import struct
import subprocess
import sys
import tempfile
import time

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save_file

WAYS = ("pread", "mmap", "load_bytes", "hand-written")
_DTYPES = {"F32": torch.float32}


def read(way: str, path: str):
    if way in ("pread", "mmap"):
        with safe_open(path, framework="pt", backend=way) as f:
            return f.metadata() or {}, f.get_tensors()
    with open(path, "rb") as f:
        buf = f.read() if way == "load_bytes" else bytearray(os.fstat(f.fileno()).st_size)
        if way == "hand-written":
            f.readinto(buf)
    (n,) = struct.unpack_from("<Q", buf, 0)
    header = json.loads(bytes(buf[8:8 + n]))
    meta = header.pop("__metadata__", {})
    if way == "load_bytes":
        return meta, load(buf)
    return meta, {k: torch.frombuffer(buf, dtype=_DTYPES[v["dtype"]], offset=8 + n + v["data_offsets"][0],
                                      count=(v["data_offsets"][1] - v["data_offsets"][0]) // 4).view(v["shape"])
                  for k, v in header.items()}


def _writer(path: str, stop) -> None:
    step = 0
    while not stop.is_set():  # sizes and metadata change every step: a mixed read shows
        save_file({"w": torch.full((1 + step % 7, 1000), float(step))}, path + ".tmp", metadata={"step": str(step)})
        os.replace(path + ".tmp", path)
        step += 1


def _mixed(way: str, path: str, reads: int) -> tuple[int, int]:
    bad = failed = 0
    for _ in range(reads):
        try:
            meta, t = read(way, path)
            step = int(meta["step"])
            bad += not torch.equal(t["w"], torch.full((1 + step % 7, 1000), float(step)))
        except (SafetensorError, RuntimeError, OSError, ValueError, KeyError):
            failed += 1
    return bad, failed


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def child(way: str, path: str) -> None:
    base = _peak_mb()
    t0 = time.perf_counter()
    _, tensors = read(way, path)
    dt = time.perf_counter() - t0
    for v in tensors.values():  # touch every page (a memory map reads lazily)
        v.view(-1)[::1024].sum()
    print(json.dumps({"ms": 1000 * dt, "peak_mb": _peak_mb() - base}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2], sys.argv[3])
    reads = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    with tempfile.TemporaryDirectory() as tmp:
        big = os.path.join(tmp, "big.safetensors")
        g = torch.Generator().manual_seed(0)
        save_file({f"t{i}": torch.randn(1_250_000, generator=g) for i in range(20)}, big, metadata={"k": "v"})
        print(f"file: {os.path.getsize(big) / 1e6:.0f} MB; cpu: {torch.backends.cpu.get_cpu_capability()}")
        path = os.path.join(tmp, "state.safetensors")
        save_file({"w": torch.zeros(1, 1000)}, path, metadata={"step": "0"})
        stop = mp.Event()
        writer = mp.Process(target=_writer, args=(path, stop))
        writer.start()
        try:
            mixed = {way: _mixed(way, path, reads) for way in WAYS}
        finally:
            stop.set()
            writer.join()
        print(f"{'way':14s} {'ms':>7s} {'peak MB':>8s}  mixed / failed of {reads} reads during rewrites")
        for way in WAYS:
            runs = [json.loads(subprocess.run([sys.executable, __file__, "--child", way, big], check=True,
                                              capture_output=True, text=True).stdout) for _ in range(3)]
            best = min(r["ms"] for r in runs)
            print(f"{way:14s} {best:7.1f} {max(r['peak_mb'] for r in runs):8.1f}  {mixed[way][0]} / {mixed[way][1]}")


if __name__ == "__main__":
    main()
