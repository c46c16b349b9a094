"""Fashion-MNIST-LT: the four IDX files (Debian's package, torchvision's layout or a folder)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from tailtune.config import DataConfig
from tailtune.data.base import ArrayDataset, Subset
from tailtune.data.longtail import THIRDS, exp_profile, subsample, third_groups
from tailtune.data.roots import root_folder, unread_root
from tailtune.data.sources.base import SOURCES, LTData, head_count, reads
from tailtune.errors import DataError

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_DEBIAN = "/usr/share/datasets/fashion-mnist"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the MNIST / Fashion-MNIST format."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (header).")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path} is truncated or padded: {len(raw) - header} data bytes, "
                        f"expected {expected} for shape {shape}.")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def read_fashion_mnist(root: str | None, download: bool = False):
    """Find and read the four Fashion-MNIST IDX files.

    With ``root`` (``data.root``), only there: ``root`` or ``root/FashionMNIST/raw`` (torchvision's
    layout), downloaded with torchvision when ``download`` is set; a root without them is an error
    saying which data preset reads what it holds (never a silent fall-back to another copy).
    Without ``root``, the Debian package's folder.
    """
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    if root:
        folder = root_folder(root, "the four Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...)")
        candidates = [folder, folder / "FashionMNIST" / "raw"]
    else:
        candidates = [Path(FASHION_MNIST_DEBIAN)]
    if download and root:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root, train=True, download=True)
        FashionMNIST(root, train=False, download=True)
    for folder in candidates:
        files = [_find_idx(folder, s) for s in stems]
        if all(files):
            xtr, ytr, xte, yte = (read_idx(f) for f in files)
            return (xtr, ytr.astype(np.int64)), (xte, yte.astype(np.int64))
    if root:
        where = " or ".join(str(c) for c in candidates)
        raise unread_root(root, "fashion_mnist_lt (the demo's dataset, the default when no -d is given)",
                          "Fashion-MNIST IDX files", f"looked in {where}; without data.root it reads the system copy "
                          f"in {FASHION_MNIST_DEBIAN}; data.download=true fetches it when online")
    raise DataError(
        f"Fashion-MNIST not found (looked in {FASHION_MNIST_DEBIAN}). Install it with "
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX files "
        "(train-images-idx3-ubyte[.gz], ...) in a folder and set data.root to it, "
        "or set data.root=DIR data.download=true when online."
    )


@SOURCES.register("fashion_mnist_lt")
@reads("root", "download")
def fashion_mnist_lt(cfg: DataConfig) -> LTData:
    """Fashion-MNIST-LT: 10 classes, n_i = int(6000 * (1/IR)^(i/9)), balanced 10k test set."""
    (xtr, ytr), (xte, yte) = read_fashion_mnist(cfg.root, cfg.download)
    counts = exp_profile(head_count(ytr, 10, 6000, "Fashion-MNIST"), 10, cfg.imb_ratio)
    keep = subsample(ytr, counts, cfg.subset_seed)
    notes = ["Fashion-MNIST-LT has 10 classes, so the benchmark's many/medium/few thresholds "
             "(100/20 images) do not apply: groups are head / middle / tail thirds by class count "
             "(3 / 4 / 3 classes)."]
    return LTData(Subset(ArrayDataset(xtr, ytr), keep), ArrayDataset(xte, yte),
                  list(FASHION_MNIST_CLASSES), third_groups(counts), THIRDS, notes)
