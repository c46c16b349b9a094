"""DataLoaders with the run's defaults, and a function applied to every batch of one (no gradients)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tailtune.runtime.precision import autocast
from tailtune.runtime.progress import ImageProgress

IN_FLIGHT = 8  # batches a training loader's workers keep ready between them (at least 2 each)


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device,
                generator: torch.Generator | None = None, sampler=None,
                persistent: bool = False, collate_fn=None) -> torch.utils.data.DataLoader:
    """Every loader the library feeds a model from: pinned batches for a CUDA device (so that
    :func:`to_device` copies them asynchronously). ``persistent``: a training loader, whose
    workers live across epochs and keep at least ``IN_FLIGHT`` batches ready between them, so a
    slow image does not stall the device."""
    extra = {}
    if workers > 0 and persistent:
        extra = {"persistent_workers": True, "prefetch_factor": max(2, -(-IN_FLIGHT // workers))}
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
        sampler=sampler, pin_memory=device.type == "cuda", drop_last=False, collate_fn=collate_fn, **extra,
    )


def to_device(images, device: torch.device, channels_last: bool):
    """A batch on ``device``: asynchronous from pinned memory; channels_last for CNNs (4-D batches)."""
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@torch.no_grad()
def predict_logits(fn: Callable[[torch.Tensor], torch.Tensor], loader, device: torch.device,
                   dtype: torch.dtype | None, quiet: bool = True, desc: str = "eval",
                   channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of ``fn`` over a loader, averaged over views when batches are (B, V, C, H, W)."""
    outs, labels = [], []
    for images, y in ImageProgress(loader, desc, quiet):
        views = images.shape[1] if images.dim() == 5 else 1
        if views > 1:
            images = images.flatten(0, 1)
        with autocast(device, dtype):
            out = fn(to_device(images, device, channels_last)).float()
        if views > 1:
            out = out.view(-1, views, out.shape[-1]).mean(1)
        outs.append(out.cpu())
        labels.append(y)
    return torch.cat(outs), torch.cat(labels)
