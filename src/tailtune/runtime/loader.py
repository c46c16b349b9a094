"""DataLoaders with the run's defaults, and a function applied to every batch of one (no gradients)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from tailtune.runtime.precision import autocast
from tailtune.runtime.progress import ImageProgress


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, device: torch.device,
                generator: torch.Generator | None = None, sampler=None,
                persistent: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
        sampler=sampler, pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0,
        drop_last=False,
    )


def to_device(images, device: torch.device, channels_last: bool):
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
