"""Progress bars (tqdm) that count images, silent when quiet."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress(iterable, desc: str, quiet: bool, total: int | None = None, unit: str = "item"):
    """A progress bar with throughput and ETA over ``iterable``'s items (batches: ImageProgress)."""
    return tqdm(iterable, desc=desc, total=total, disable=quiet, unit=unit, dynamic_ncols=True, leave=False)


class ImageProgress:
    """Iterates a loader's ``(images, labels, ...)`` batches behind a progress bar counted in images
    (the sampler's length: images, not batches times the batch size), with images/s and ETA."""

    def __init__(self, loader, desc: str, quiet: bool):
        sampler = getattr(loader, "sampler", None)
        total = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else None
        self.loader = loader
        self.bar = tqdm(total=total, desc=desc, disable=quiet, unit="img", dynamic_ncols=True, leave=False)

    def __iter__(self):
        try:
            for batch in self.loader:
                yield batch
                self.bar.update(len(batch[1]))
        finally:
            self.bar.close()

    def set_postfix(self, **values) -> None:
        self.bar.set_postfix(**values)
