"""One entry point for 1 to N processes: read torchrun's environment, gather results.

Under ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK set) the process group is started with
NCCL on GPU and gloo on CPU; without it everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tailtune.errors import ConfigError, TailtuneError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment variables."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def setup(device: torch.device) -> DistInfo:
    """Start the process group when launched by torchrun; returns this process's place in it."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each process drives the GPU of its local rank."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shard_indices(n: int, info: DistInfo) -> list[int]:
    """Rank r's share of range(n) for evaluation: every world_size-th index from r.

    Shares are disjoint and cover range(n) exactly; :func:`gather_ordered` puts the
    per-rank outputs back in the original order, so no sample is counted twice or dropped.
    """
    return list(range(info.rank, n, info.world_size))


def gather_ordered(local: torch.Tensor, n: int, info: DistInfo) -> torch.Tensor:
    """Outputs of :func:`shard_indices` shards from every rank, in the original sample order.

    Shards differ in length by at most one; each is padded to the longest before the
    all-gather and the padding is dropped afterwards (pad-and-trim).
    """
    if not info.enabled:
        return local
    longest = -(-n // info.world_size)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype)
    padded[: len(local)] = local
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    gathered = [p.to(backend_device) for p in parts]
    dist.all_gather(gathered, padded.to(backend_device))
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(gathered):
        count = len(range(r, n, info.world_size))
        out[r::info.world_size] = part[:count].cpu()
    return out


def on_main(fn, info: DistInfo, fallback=None):
    """Run ``fn`` on rank 0 only; a TailtuneError there is raised on every rank.

    Without this, the other ranks would wait forever at their next collective call when
    rank 0 refuses, say, an output folder.
    """
    if not info.enabled:
        return fn()
    result, error = fallback, None
    if info.is_main:
        try:
            result = fn()
        except TailtuneError as e:
            error = str(e)
    box = [error]
    dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        if info.is_main and error is not None:
            raise ConfigError(error)
        raise ConfigError(f"rank 0 stopped: {box[0]}")
    return result
