"""CIFAR-100-LT: the python version of CIFAR-100 (torchvision's layout), subsampled to a long tail."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from tailtune.config import DataConfig
from tailtune.data.base import ArrayDataset, Subset
from tailtune.data.longtail import GROUPS, exp_profile, subsample
from tailtune.data.roots import reader_of, root_folder
from tailtune.data.sources.base import SOURCES, LTData, groups_for, head_count, reads
from tailtune.errors import DataError


def _latin1_bytes(*args) -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes under protocols 0-2: ``encode(str, 'latin1')``.

    Any other call (another encoding, a non-str, more or fewer arguments) is refused.
    """
    if len(args) != 2 or type(args[0]) is not str or args[1] != "latin1":
        raise pickle.UnpicklingError("refusing _codecs.encode with arguments other than (str, 'latin1') "
                                     "in a dataset file")
    return args[0].encode("latin1")


def _empty_bytes(*args) -> bytes:
    """``bytes()`` as Python 3 pickles ``b''`` under protocols 0-2; any argument is refused."""
    if args:
        raise pickle.UnpicklingError("refusing bytes(...) with arguments in a dataset file")
    return b""


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python files while refusing anything but plain data and arrays.

    Besides numpy's array reconstruction, the two calls through which Python 3 writes
    ``bytes`` under pickle protocols 0-2 are allowed, each only with the arguments
    pickle itself writes (``_codecs.encode(str, 'latin1')``, ``bytes()``).
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }
    # Restricted stand-ins, not the functions themselves (the names as a protocol-2 file has them).
    CHECKED = {("_codecs", "encode"): _latin1_bytes, ("__builtin__", "bytes"): _empty_bytes,
               ("builtins", "bytes"): _empty_bytes}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if (module, name) in self.CHECKED:
            return self.CHECKED[module, name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_cifar_file(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"{path} is not a valid CIFAR-100 python file ({e}); "
                        "download it again (data.download=true).") from None


def read_cifar100(root: str | Path, download: bool = False):
    """Read CIFAR-100 from torchvision's layout: ``root/cifar-100-python/{train,test,meta}``."""
    root = Path(root)
    if root.exists() or root.is_symlink():  # a missing root is fine: the download makes it, or the error below says
        root_folder(root, "cifar-100-python/ (CIFAR-100's python version)")
    folder = root / "cifar-100-python"
    if not folder.exists() and download:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(root), train=True, download=True)
    missing = [n for n in ("train", "test", "meta") if not (folder / n).exists()]
    if missing:
        hint = f" data.root={root}: {reader_of(root)}" if root.is_dir() and not folder.exists() else ""
        raise DataError(
            f"CIFAR-100 files {', '.join(missing)} not found in {folder}. Put the python version of "
            "CIFAR-100 there (cifar-100-python.tar.gz, extracted) or set data.download=true when online." + hint
        )
    out = {}
    for split in ("train", "test"):
        d = _read_cifar_file(folder / split)
        images = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        out[split] = (np.ascontiguousarray(images), list(d["fine_labels"]))
    names = [n.replace("_", " ") for n in _read_cifar_file(folder / "meta")["fine_label_names"]]
    return out["train"], out["test"], names


@SOURCES.register("cifar100_lt")
@reads("root", "download", "group_imb_ratio")
def cifar100_lt(cfg: DataConfig) -> LTData:
    """CIFAR-100-LT: exponential profile from 500 images, the standard subsampling (seed 0)."""
    (xtr, ytr), (xte, yte), names = read_cifar100(cfg.root or "data/cifar100", cfg.download)
    n_max = head_count(ytr, 100, 500, "CIFAR-100")
    counts = exp_profile(n_max, 100, cfg.imb_ratio)
    keep = subsample(ytr, counts, cfg.subset_seed)
    notes: list[str] = []
    groups = groups_for(counts, cfg, n_max, notes)
    return LTData(Subset(ArrayDataset(xtr, ytr), keep), ArrayDataset(xte, yte), names, groups, GROUPS, notes)
