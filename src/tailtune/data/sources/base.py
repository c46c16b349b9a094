"""Registry of dataset sources. Each source turns a :class:`DataConfig` into :class:`LTData`."""

from __future__ import annotations

import gzip
import pickle
import struct
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tailtune.config import DataConfig
from tailtune.data.base import ArrayDataset, Subset
from tailtune.data.holdout import with_val
from tailtune.data.longtail import (
    GROUPS,
    THIRDS,
    class_counts,
    exp_profile,
    shot_groups,
    subsample,
    third_groups,
)
from tailtune.data.splits import read_classnames
from tailtune.data.validate import check_image_files
from tailtune.errors import DataError
from tailtune.registry import Registry

SOURCES: Registry = Registry("dataset")
# Sources that read data.classnames_file themselves (their labels may come from it); for every
# other source the file replaces the source's class names after it is built (build_data).
NAMES_FROM_FILE = ("folder", "csv")


@dataclass
class LTData:
    """A long-tailed dataset ready for training and evaluation."""

    train: object  # Dataset of (PIL image or (3, H, W) uint8 tensor, label) with .targets
    test: object
    classnames: list[str]
    groups: np.ndarray  # group index per class (into group_names)
    group_names: tuple[str, ...] = GROUPS
    notes: list[str] = field(default_factory=list)  # shown to the user and saved in metrics.json
    val: object | None = None  # validation split (model selection), never the test set
    val_source: str | None = None  # "val split" (the dataset's own) or "held-out slice of train"
    record: dict = field(default_factory=dict)  # how held-out splits were made (saved as splits.json)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def train_counts(self) -> np.ndarray:
        return class_counts(self.train.targets, self.num_classes)

    def splits(self) -> dict:
        """The splits that exist, by name: train, val (if any), test."""
        out = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in out.items() if v is not None}

    def check(self) -> None:
        """Start-up checks: labels in range, every class has training images, names match."""
        if not self.classnames:
            raise DataError("the dataset has no class names.")
        for split, ds in self.splits().items():
            t = np.asarray(ds.targets)
            if len(t) == 0:
                raise DataError(f"the {split} split is empty.")
            if t.min() < 0 or t.max() >= self.num_classes:
                bad = int(t.max() if t.max() >= self.num_classes else t.min())
                raise DataError(f"{split} label {bad} is out of range for {self.num_classes} classes "
                                f"({self.num_classes} class names: labels must be 0..{self.num_classes - 1}); "
                                "check the labels or the class-name list.")
        empty = np.where(self.train_counts == 0)[0]
        if len(empty):
            names = ", ".join(self.classnames[i] for i in empty[:5])
            raise DataError(f"{len(empty)} classes have no training image (e.g. {names}); "
                            "remove them or add images.")
        if len(self.groups) != self.num_classes:
            raise DataError(f"{len(self.groups)} group entries for {self.num_classes} classes.")


def build_data(cfg: DataConfig, check_files: bool = True) -> LTData:
    """Build the dataset named by ``cfg.name``, settle its validation split and check it.

    The checks run before any model is touched: labels in range, no empty class, class
    names matching, and (``check_files``) every listed image present and, with
    ``data.verify_images``, decodable (``data.skip_corrupt`` drops the ones that are not).
    """
    data = SOURCES.get(cfg.name)(cfg)
    if cfg.classnames_file and cfg.name not in NAMES_FROM_FILE:
        data = renamed(data, cfg)
    data = with_val(data, cfg)
    data.check()
    if check_files:
        data = check_image_files(data, cfg.verify_images, cfg.skip_corrupt)
        data.check()  # again: dropping corrupt images can empty a class
    return data


def renamed(data: LTData, cfg: DataConfig) -> LTData:
    """``data`` with the class names of ``data.classnames_file`` (one per line, in label order).

    Only the names change (what the text prompts say); images, labels and groups stay the
    source's. The run's notes say how many names differ from the source's own.
    """

    names = read_classnames(cfg.classnames_file, data.num_classes, f"classes of {cfg.name}")

    def spoken(name: str) -> str:  # as the prompts read a name (models.prompts.clean_classname)
        return name.replace("_", " ").strip()

    changed = [i for i, (a, b) in enumerate(zip(data.classnames, names)) if spoken(a) != spoken(b)]
    note = (f"class names from {cfg.classnames_file} (data.classnames_file): {len(changed)} of {len(names)} "
            f"prompts differ from {cfg.name}'s own names")
    if changed:
        note += f" (e.g. class {changed[0]}: {names[changed[0]]!r}, not {data.classnames[changed[0]]!r})"
    return replace(data, classnames=names, notes=[*data.notes, note + "."])


def _groups_for(counts, cfg: DataConfig, n_max: int, notes: list[str]) -> np.ndarray:
    if cfg.group_imb_ratio is not None and cfg.group_imb_ratio != cfg.imb_ratio:
        ref = exp_profile(n_max, len(counts), cfg.group_imb_ratio)
        notes.append(f"many/medium/few groups use the class counts of imbalance ratio "
                     f"{cfg.group_imb_ratio:g} (the benchmark's convention), not {cfg.imb_ratio:g}.")
        return shot_groups(ref)
    return shot_groups(counts)


def _head_count(targets, num_classes: int, standard: int, name: str) -> int:
    """Images per class of a balanced source (the head of the profile); says so if not standard."""
    per_class = class_counts(targets, num_classes)
    if per_class.min() != per_class.max() or per_class.min() == 0:
        raise DataError(f"the {name} training files are not balanced ({per_class.min()} to {per_class.max()} "
                        "images per class); the long-tail protocol starts from the full training set.")
    if per_class[0] != standard:
        warnings.warn(f"{name} training files hold {per_class[0]} images per class, not the standard "
                      f"{standard}: the long-tailed profile starts from {per_class[0]}.", stacklevel=3)
    return int(per_class[0])


# ---------------------------------------------------------------- CIFAR-100-LT


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
    folder = root / "cifar-100-python"
    if not folder.exists() and download:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(root), train=True, download=True)
    missing = [n for n in ("train", "test", "meta") if not (folder / n).exists()]
    if missing:
        raise DataError(
            f"CIFAR-100 files {', '.join(missing)} not found in {folder}. Put the python version of "
            "CIFAR-100 there (cifar-100-python.tar.gz, extracted) or set data.download=true when online."
        )
    out = {}
    for split in ("train", "test"):
        d = _read_cifar_file(folder / split)
        images = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        out[split] = (np.ascontiguousarray(images), list(d["fine_labels"]))
    names = [n.replace("_", " ") for n in _read_cifar_file(folder / "meta")["fine_label_names"]]
    return out["train"], out["test"], names


@SOURCES.register("cifar100_lt")
def cifar100_lt(cfg: DataConfig) -> LTData:
    """CIFAR-100-LT: exponential profile from 500 images, the standard subsampling (seed 0)."""
    (xtr, ytr), (xte, yte), names = read_cifar100(cfg.root or "data/cifar100", cfg.download)
    n_max = _head_count(ytr, 100, 500, "CIFAR-100")
    counts = exp_profile(n_max, 100, cfg.imb_ratio)
    keep = subsample(ytr, counts, cfg.subset_seed)
    notes: list[str] = []
    groups = _groups_for(counts, cfg, n_max, notes)
    return LTData(Subset(ArrayDataset(xtr, ytr), keep), ArrayDataset(xte, yte), names, groups, GROUPS, notes)


# ---------------------------------------------------------------- Fashion-MNIST-LT

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

    Looks in ``root`` (if set), ``root/FashionMNIST/raw`` (torchvision's layout) and the
    Debian package's folder; downloads with torchvision when ``download`` is set.
    """
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    candidates = []
    if root:
        candidates += [Path(root), Path(root) / "FashionMNIST" / "raw"]
    candidates.append(Path(FASHION_MNIST_DEBIAN))
    if download and root:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root, train=True, download=True)
        FashionMNIST(root, train=False, download=True)
    for folder in candidates:
        files = [_find_idx(folder, s) for s in stems]
        if all(files):
            xtr, ytr, xte, yte = (read_idx(f) for f in files)
            return (xtr, ytr.astype(np.int64)), (xte, yte.astype(np.int64))
    where = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"Fashion-MNIST not found (looked in {where}). Install it with "
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four IDX files "
        "(train-images-idx3-ubyte[.gz], ...) in a folder and set data.root to it, "
        "or set data.root=DIR data.download=true when online."
    )


@SOURCES.register("fashion_mnist_lt")
def fashion_mnist_lt(cfg: DataConfig) -> LTData:
    """Fashion-MNIST-LT: 10 classes, n_i = int(6000 * (1/IR)^(i/9)), balanced 10k test set."""
    (xtr, ytr), (xte, yte) = read_fashion_mnist(cfg.root, cfg.download)
    counts = exp_profile(_head_count(ytr, 10, 6000, "Fashion-MNIST"), 10, cfg.imb_ratio)
    keep = subsample(ytr, counts, cfg.subset_seed)
    notes = ["Fashion-MNIST-LT has 10 classes, so the benchmark's many/medium/few thresholds "
             "(100/20 images) do not apply: groups are head / middle / tail thirds by class count "
             "(3 / 4 / 3 classes)."]
    return LTData(Subset(ArrayDataset(xtr, ytr), keep), ArrayDataset(xte, yte),
                  list(FASHION_MNIST_CLASSES), third_groups(counts), THIRDS, notes)


# ---------------------------------------------------------------- synthetic (tests, smoke runs)


@SOURCES.register("synthetic")
def synthetic(cfg: DataConfig) -> LTData:
    """Generated images whose colour and stripe pattern depend on the class (tests, smoke runs)."""
    c = cfg.num_classes or 4
    counts = exp_profile(cfg.train_per_class, c, cfg.imb_ratio)
    counts = [max(1, n) for n in counts]
    rng = np.random.default_rng(cfg.subset_seed)

    def make(n_per_class: list[int]):
        images, labels = [], []
        s = cfg.image_size
        yy, xx = np.mgrid[0:s, 0:s]
        for k, n in enumerate(n_per_class):
            hue = np.array([(k * 97) % 256, (k * 57 + 80) % 256, (k * 31 + 160) % 256], dtype=np.float32)
            stripes = ((xx * (k % 3 + 1) + yy * (k // 3 % 3)) // 4 % 2)[..., None] * 60.0
            for _ in range(n):
                noise = rng.normal(0, 20, (s, s, 3))
                images.append(np.clip(hue * 0.7 + stripes + noise, 0, 255).astype(np.uint8))
                labels.append(k)
        return np.stack(images), labels

    xtr, ytr = make(counts)
    xte, yte = make([cfg.test_per_class] * c)
    names = [f"class {k}" for k in range(c)]
    return LTData(ArrayDataset(xtr, ytr), ArrayDataset(xte, yte), names, shot_groups(counts), GROUPS, [])


__all__ = ["SOURCES", "LTData", "build_data", "read_idx", "read_cifar100", "read_fashion_mnist"]
