"""Feature caching: compute the frozen front of the backbone once per image and view.

When nothing before transformer block k trains (classifier only, a linear-probe or
class-mean head, or PEFT modules restricted to the last blocks), the encoder is cut in
two at block k: a *prefix* (patch embedding and blocks [0, k)) whose output never changes
during training, and a *suffix* (blocks [k, L), final norm and pooling) that trains. The
prefix runs once per (image, view) and its output is kept in bf16, in memory or in a disk
memmap; training then runs only the suffix and the head. When nothing in the backbone
trains, the cache holds the pooled features and training touches only the classifier.

Augmented training views are drawn ahead: ``train.cache_views`` = V views per image, view
v drawn with the same per-(seed, epoch, sample) seeding as :class:`SeededTransformed`, at
the augmentation epoch that first uses it; epoch e trains on view ``e * V // E`` of E
epochs. With V = E (the default) every epoch sees its own view, exactly the views of an
uncached run with seeded augmentation; V < E trades augmentation for fewer prefix passes;
``cache_views=0`` caches one un-augmented view (the test transform) for every epoch.

Where the cut is comes from ``requires_grad`` alone: the first block holding a trainable
parameter. Backbones are cut by a registry of splits (open_clip and timm ViTs), and any
backbone can cache its pooled features when none of it trains.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tailtune.config import to_dict
from tailtune.data.base import SeededTransformed, Transformed
from tailtune.data.transforms import AUGMENTATIONS, test_transform, train_transform
from tailtune.errors import ConfigError
from tailtune.models.backbones.base import is_local_file
from tailtune.models.model import TailModel
from tailtune.models.text import is_text_parameter
from tailtune.registry import Registry
from tailtune.runtime.files import write_error, write_text
from tailtune.runtime.hardware import available_memory
from tailtune.runtime.loader import make_loader, to_device
from tailtune.runtime.precision import autocast
from tailtune.runtime.progress import ImageProgress
from tailtune.training.mixing import mixup_options

SPLITS: Registry = Registry("backbone split")
_log = logging.getLogger(__name__)
CACHE_DTYPE = torch.bfloat16
CACHE_MODES = ("auto", "always", "never")  # not on/off: YAML reads those as booleans
# A memory cache may take this share of the memory available when training starts.
MEMORY_SHARE = 0.5
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


# ---------------------------------------------------------------- cutting a backbone


class Split:
    """A backbone's encoder cut before block ``depth``: ``prefix`` then ``suffix`` = ``backbone``.

    Subclasses give the encoder's pieces: ``leaving`` (images -> tokens leaving block i, the
    library's public ``forward_intermediates``), ``embed`` (images -> tokens before block 0),
    ``block_list``, ``finish`` (tokens after the last block -> features) and ``tail_names``,
    the encoder attributes used after the blocks (parameters there may train).
    """

    tail_names: tuple[str, ...] = ()

    def __init__(self, backbone, depth: int, grad_checkpointing: bool = False):
        self.backbone = backbone
        self.encoder = backbone.encoder
        self.depth = depth
        self.grad_checkpointing = grad_checkpointing

    @staticmethod
    def fits(backbone) -> bool:
        raise NotImplementedError

    def leaving(self, images: torch.Tensor, index: int) -> torch.Tensor:
        """Tokens leaving block ``index`` (batch first, prefix tokens first), blocks after it not run."""
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def block_list(self) -> list[nn.Module]:
        raise NotImplementedError

    def finish(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _run(self, x: torch.Tensor, blocks) -> torch.Tensor:
        for blk in blocks:  # called as modules, so PEFT hooks on blocks (VPT) still fire
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens entering block ``depth`` (batch first)."""
        if self.depth == 0:  # only asked for directly: cache_point never cuts here (nothing is frozen)
            return self.embed(images)
        return self.leaving(images, self.depth - 1)

    def suffix(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features from the tokens entering block ``depth``."""
        return self.finish(self._run(tokens, self.block_list()[self.depth:]))

    def prefix_modules(self) -> list[nn.Module]:
        """Modules the prefix runs (checked for dropout: the cached part must be deterministic)."""
        tail = {id(getattr(self.encoder, n)) for n in self.tail_names if isinstance(getattr(self.encoder, n, None), nn.Module)}
        blocks = self.block_list()
        later = {id(m) for b in blocks[self.depth:] for m in b.modules()} | tail
        return [m for m in self.encoder.modules() if id(m) not in later and m is not self.encoder]


@SPLITS.register("open_clip_vit",
                 help="open_clip VisionTransformer: forward_intermediates, transformer.resblocks, _pool")
class OpenClipViTSplit(Split):
    """open_clip's ``VisionTransformer.forward``: ``_embeds`` -> ``transformer`` -> ``_pool`` (-> proj).

    The frozen prefix is the public ``forward_intermediates``. Two private calls stay, as
    open_clip (3.3) has no public equivalent: ``_pool`` (ln_post / attentional pooling, then
    the class token or the mean) for the suffix, because every public path to pooled features
    starts from images and runs all blocks itself; and ``_embeds`` for a cut before block 0,
    because ``forward_intermediates`` returns only tokens leaving a block.
    """

    tail_names = ("ln_post", "attn_pool", "attn_pool_contrastive", "proj")

    @staticmethod
    def fits(backbone) -> bool:
        enc = backbone.encoder
        return all(hasattr(enc, a) for a in ("forward_intermediates", "_embeds", "_pool", "transformer")) and \
            hasattr(enc.transformer, "resblocks")

    @property
    def _batch_first(self) -> bool:
        return getattr(self.encoder.transformer, "batch_first", True)

    def leaving(self, images, index):
        out = self.encoder.forward_intermediates(images, indices=[index], stop_early=True, intermediates_only=True,
                                                 output_fmt="NLC", output_extra_tokens=True)
        # Batch first, split into the class token and the patch tokens: joined again as the blocks saw them.
        return torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)

    def embed(self, images):
        return self.encoder._embeds(images)

    def block_list(self):
        return list(self.encoder.transformer.resblocks)

    def _run(self, x, blocks):
        # Tokens are cached batch first; sequence-first transformers see their own layout.
        if self._batch_first:
            return super()._run(x, blocks)
        return super()._run(x.transpose(0, 1), blocks).transpose(0, 1)

    def finish(self, tokens):
        pooled, _ = self.encoder._pool(tokens)
        proj = getattr(self.encoder, "proj", None)
        return pooled @ proj if proj is not None else pooled


@SPLITS.register("timm_vit", help="timm VisionTransformer: forward_intermediates, blocks, norm, forward_head")
class TimmViTSplit(Split):
    """timm's ``forward_features`` (patch_embed, _pos_embed, patch_drop, norm_pre, blocks, norm) + ``forward_head``.

    The frozen prefix is the public ``forward_intermediates``, the suffix the blocks, ``norm``
    and the public ``forward_head``. One private call stays: ``_pos_embed`` for a cut before
    block 0, because ``forward_intermediates`` returns only tokens leaving a block.
    """

    tail_names = ("norm", "fc_norm", "attn_pool", "head_drop", "head")

    @staticmethod
    def fits(backbone) -> bool:
        enc = backbone.encoder
        return all(hasattr(enc, a) for a in ("forward_intermediates", "num_prefix_tokens", "patch_embed",
                                             "_pos_embed", "blocks", "norm", "forward_head"))

    def leaving(self, images, index):
        enc = self.encoder
        # Prefix tokens (class, registers) asked for only when there are some (timm 1.0.3 fails otherwise).
        with_prefix = bool(enc.num_prefix_tokens)
        (out,) = enc.forward_intermediates(images, indices=[index], return_prefix_tokens=with_prefix, stop_early=True,
                                           output_fmt="NLC", intermediates_only=True)
        return torch.cat([out[1], out[0]], dim=1) if with_prefix else out

    def embed(self, images):
        enc = self.encoder
        x = enc._pos_embed(enc.patch_embed(images))
        return enc.norm_pre(enc.patch_drop(x))

    def block_list(self):
        return list(self.encoder.blocks)

    def finish(self, tokens):
        return self.encoder.forward_head(self.encoder.norm(tokens))


class PooledSplit(Split):
    """Any backbone with nothing trainable: the prefix is the whole backbone, the suffix nothing."""

    def __init__(self, backbone, depth: int = 0, grad_checkpointing: bool = False):
        super().__init__(backbone, depth, grad_checkpointing)

    def prefix(self, images):
        return self.backbone(images)

    def suffix(self, tokens):
        return tokens

    def prefix_modules(self):
        return list(self.encoder.modules())


def find_split(backbone) -> type[Split] | None:
    """The registered split that can cut ``backbone``'s encoder, or None."""
    for name in SPLITS.names():
        cls = SPLITS.get(name)
        if cls.fits(backbone):
            return cls
    return None


@dataclass
class CachePoint:
    """Where the frozen part ends: ``split`` (None: no cache possible, ``reason`` says why)."""

    split: Split | None
    reason: str

    @property
    def what(self) -> str:
        if isinstance(self.split, PooledSplit):
            return "pooled features"
        return f"tokens entering block {self.split.depth}" if self.split else "nothing"


def _stochastic(modules) -> str | None:
    """Name of a module that would make the frozen part random in training mode (dropout)."""
    for m in modules:
        # nn.Dropout's p; open_clip's and timm's PatchDropout's prob; timm's DropPath's drop_prob
        p = m.p if isinstance(m, nn.modules.dropout._DropoutNd) else getattr(m, "prob", getattr(m, "drop_prob", 0.0))
        if isinstance(p, (int, float)) and p > 0:
            return f"{type(m).__name__}(p={p})"
    return None


def cache_point(model: TailModel, grad_checkpointing: bool = False) -> CachePoint:
    """How much of ``model``'s backbone is frozen in front of everything that trains."""
    backbone = model.backbone
    # CLIP's text side (text-side PEFT, CoOp: models/text.py) never touches the image features.
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad and not is_text_parameter(backbone, n)]
    has_bn = any(isinstance(m, _BN) for m in backbone.modules())
    if model.bn_train and has_bn:
        return CachePoint(None, "BatchNorm statistics train (peft.bn_mode), so the backbone's output changes")
    if not trainable:
        split: Split = PooledSplit(backbone)
    else:
        cls = find_split(backbone)
        if cls is None:
            return CachePoint(None, f"{backbone.info['name']!r} trains backbone parameters and tailtune cannot "
                                    "cut it into blocks (open_clip and timm ViTs only)")
        enc_name = next(n for n, m in backbone.named_modules() if m is backbone.encoder)
        enc_prefix = f"{enc_name}." if enc_name else ""
        block_prefixes = [f"{enc_prefix}{n}." for n, _ in backbone.blocks()]
        depth = len(block_prefixes)
        for name in trainable:
            index = next((i for i, b in enumerate(block_prefixes) if name.startswith(b)), None)
            if index is not None:
                depth = min(depth, index)
                continue
            rel = name[len(enc_prefix):] if name.startswith(enc_prefix) else None
            if rel is None or rel.split(".")[0] not in cls.tail_names:
                return CachePoint(None, f"backbone parameter {name} trains and is not inside a transformer "
                                        "block or after the last one")
        if depth == 0:
            return CachePoint(None, "the first transformer block trains: nothing in front of it is frozen")
        split = cls(backbone, depth, grad_checkpointing)
    random_part = _stochastic(split.prefix_modules())
    if random_part is not None:
        return CachePoint(None, f"the frozen part holds {random_part}, random in training")
    return CachePoint(split, "")


# ---------------------------------------------------------------- the cache


@dataclass
class ViewPlan:
    """Which cached view each epoch trains on."""

    views: int  # cached views per image (>= 1)
    epochs: int
    augmented: bool  # False: one un-augmented view (the test transform)

    @classmethod
    def from_config(cls, cache_views: int | None, epochs: int) -> ViewPlan:
        if cache_views == 0:
            return cls(1, epochs, False)
        return cls(min(cache_views or epochs, epochs), epochs, True)

    def view_of_epoch(self, epoch: int) -> int:
        return min(epoch, self.epochs - 1) * self.views // self.epochs

    def augment_epoch(self, view: int) -> int:
        """The first epoch that trains on ``view``: its augmentation is drawn as of that epoch."""
        return -(-view * self.epochs // self.views)


def view_dataset(base, plan: ViewPlan, view: int, preprocess, augment: str, seed: int, train=None):
    """The images of cached view ``view``: seeded augmentation as of its epoch, or the test view.
    ``train``: the run's train section (the augmentation's options, e.g. train.minimal.schedule)."""
    if not plan.augmented:
        return Transformed(base, test_transform(preprocess))
    ds = SeededTransformed(base, train_transform(preprocess, augment, plan.epochs, train), seed)
    ds.set_epoch(plan.augment_epoch(view))
    return ds


class CachedViews(torch.utils.data.Dataset):
    """(cached prefix output, label) pairs of the view the current epoch trains on."""

    def __init__(self, store: torch.Tensor, targets, plan: ViewPlan):
        self.store = store  # (views, N, ...) bf16, in memory or memory-mapped
        self.targets = list(targets)
        self.plan = plan
        self.view = 0

    def set_epoch(self, epoch: int) -> None:
        self.view = self.plan.view_of_epoch(epoch)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.store[self.view, i], self.targets[i]


class CachedInputModel(TailModel):
    """The trainable rest of a :class:`TailModel`: suffix + head on cached prefix outputs.

    Shares the backbone and head modules (and so the parameter names the trainer groups
    by and the checkpoint saves) with the full model; only its forward differs.
    """

    def __init__(self, model: TailModel, split: Split):
        nn.Module.__init__(self)
        self.backbone = model.backbone
        self.head = model.head
        self.bn_train = model.bn_train
        self.split = split  # a plain object: its modules are already registered under backbone

    def forward(self, cached: torch.Tensor) -> torch.Tensor:
        # bf16 storage; the suffix computes as the trainer's autocast says.
        return self.head(self.split.suffix(cached.float()))


def _available_memory() -> int:
    return available_memory()


def fingerprint(parts: dict) -> str:
    """A short hash naming a disk cache by everything its contents depend on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureStore:
    """A (views, N, *shape) bf16 tensor in memory, or in ``folder/<key>.bf16`` as a memmap."""

    def __init__(self, shape: tuple[int, ...], folder: str | Path | None = None, key: str = "", meta: dict | None = None):
        self.shape = tuple(shape)
        # Normalised through JSON so that the saved description compares equal to a fresh one.
        self.meta = json.loads(json.dumps(dict(meta or {}, shape=list(self.shape), dtype="bfloat16"), default=str))
        self.path = Path(folder) / f"{key}.bf16" if folder else None
        self.complete = False
        self._mm: np.memmap | None = None
        if self.path is None:
            self.tensor = torch.empty(self.shape, dtype=CACHE_DTYPE)
            return
        if self._meta_path.exists() and json.loads(self._meta_path.read_text()) == dict(self.meta, complete=True):
            # Copy-on-write mapping: reads come from the file, nothing is ever written back.
            self._mm = np.memmap(self.path, np.int16, "c", shape=self.shape)
            self.complete = True
        else:
            self._mm = self._allocate()
        self.tensor = torch.from_numpy(self._mm).view(CACHE_DTYPE)  # same bits: bf16 is 16-bit

    def _allocate(self) -> np.memmap:
        """A new memmap file of the cache's size, its blocks reserved first: a disk that cannot hold
        it fails here with a WriteError, not later with a SIGBUS while the mapping is filled."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._meta_path.unlink(missing_ok=True)  # an unfinished or stale cache is rebuilt
            with open(self.path, "wb") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, self.nbytes)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: sparse
                        raise
                    f.truncate(self.nbytes)
            return np.memmap(self.path, np.int16, "r+", shape=self.shape)
        except OSError as e:
            self.path.unlink(missing_ok=True)
            raise write_error(self.path, e, f"The feature cache needs {self.nbytes / 2**30:.2f} GiB there: set "
                              "train.cache_dir to a folder with room, train.cache_dir=null (in memory) or "
                              "train.cache_features=never.") from e

    @property
    def _meta_path(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * 2

    def finish(self) -> None:
        """Mark the cache complete (a disk cache is flushed and its description written last)."""
        if self._mm is not None and not self.complete:
            self._mm.flush()
            write_text(self._meta_path, json.dumps(dict(self.meta, complete=True), sort_keys=True))
        self.complete = True


@torch.no_grad()
def fill(store: FeatureStore, prefix: Callable[[torch.Tensor], torch.Tensor], datasets, batch_size: int,
         workers: int, device: torch.device, dtype: torch.dtype | None, quiet: bool = True,
         channels_last: bool = False) -> None:
    """Run ``prefix`` over each view's dataset and write the outputs into ``store``."""
    for v, ds in enumerate(datasets):
        loader = make_loader(ds, batch_size, False, workers, device)
        i = 0
        for images, _ in ImageProgress(loader, f"feature cache, view {v + 1}/{len(datasets)}", quiet):
            images = to_device(images, device, channels_last)
            with autocast(device, dtype):
                out = prefix(images)
            store.tensor[v, i:i + len(out)] = out.to("cpu", CACHE_DTYPE)
            i += len(out)
    store.finish()


# ---------------------------------------------------------------- the decision and the training path


@dataclass
class CachePlan:
    """A decision to train from a feature cache, with what it costs."""

    point: CachePoint
    views: ViewPlan
    item_shape: tuple[int, ...]
    images: int
    folder: str | None

    @property
    def nbytes(self) -> int:
        return self.views.views * self.images * math.prod(self.item_shape) * 2

    def describe(self) -> str:
        where = f"disk memmap in {self.folder}" if self.folder else "memory"
        kind = f"{self.views.views} augmented view(s)" if self.views.augmented else "1 un-augmented view"
        return (f"feature cache: {self.point.what} {tuple(self.item_shape)} of {self.images:,} images x {kind}, "
                f"bf16, {self.nbytes / 2**30:.2f} GiB in {where}")


@dataclass
class CachedTraining:
    """What the trainer gets instead of the full model and the image dataset."""

    model: CachedInputModel
    dataset: CachedViews
    plan: CachePlan
    built_s: float
    reused: bool


def plan_cache(exp, log: Callable[[str], None] = _log.info) -> CachePlan | None:
    """Decide whether ``exp`` trains from a feature cache (``train.cache_features``).

    auto: when the frozen front is non-empty, the cache fits (memory: half of what is
    available; or ``train.cache_dir`` is set) and it saves work (fewer cached views than
    epochs, or a disk cache later runs reuse). always: with an error saying why not when it
    cannot. never: off.
    """
    cfg = exp.cfg.train
    mode = getattr(cfg, "cache_features", "never")
    if mode == "never":
        return None
    mixing = mixup_options(cfg)
    if mixing.enabled:  # images are mixed before the frozen front: its cached outputs cannot be
        why = ("train.mixup mixes the training images (mixup / CutMix), which the feature cache's stored "
               "features of unmixed images cannot give (mixing features would be manifold mixup, another method)")
        if mode == "always":
            raise ConfigError(f"train.cache_features=always: {why}. Use train.cache_features=auto or never, or "
                              "drop train.mixup.alpha / train.mixup.cutmix_alpha.")
        log(f"feature cache: not used ({why})")
        return None
    point = cache_point(exp.model, getattr(cfg, "grad_checkpointing", False))
    if point.split is None:
        if mode == "always":
            raise ConfigError(f"train.cache_features=always, but nothing can be cached: {point.reason}. "
                              "Use train.cache_features=auto or never.")
        log(f"feature cache: not used ({point.reason})")
        return None
    views = ViewPlan.from_config(getattr(cfg, "cache_views", None), cfg.epochs)
    folder = getattr(cfg, "cache_dir", None)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every rank would compute (and write) the whole cache; not supported yet.
        if mode == "always":
            raise ConfigError("train.cache_features=always is not supported with several processes (torchrun); "
                              "use train.cache_features=auto or never.")
        log("feature cache: not used (several processes: each would build the whole cache)")
        return None
    if mode == "auto" and folder is None and views.augmented and views.views >= views.epochs:
        log(f"feature cache: possible ({point.what}) but not used: one view per epoch saves nothing in a single "
            "run. Set train.cache_views below train.epochs, train.cache_views=0 (no augmentation), "
            "train.cache_dir to reuse features across runs, or train.cache_features=always.")
        return None
    plan = CachePlan(point, views, _item_shape(exp, point.split), len(exp.data.train), folder)
    if folder is None and plan.nbytes > MEMORY_SHARE * _available_memory():
        why = (f"{plan.nbytes / 2**30:.1f} GiB of cache does not fit in memory "
               f"({_available_memory() / 2**30:.1f} GiB available)")
        if mode == "always":
            raise ConfigError(f"train.cache_features=always: {why}; set train.cache_dir=FOLDER for a disk memmap "
                              "or fewer train.cache_views.")
        log(f"feature cache: not used ({why}; set train.cache_dir for a disk cache)")
        return None
    return plan


@torch.no_grad()
def _item_shape(exp, split: Split) -> tuple[int, ...]:
    """Shape of one cached item, from one image of the training set."""
    img, _ = Transformed(exp.data.train, test_transform(exp.backbone.preprocess))[0]
    exp.model.eval()
    with autocast(exp.device, exp.dtype):
        return tuple(split.prefix(img.unsqueeze(0).to(exp.device)).shape[1:])


def _weights_file(pretrained) -> dict | None:
    """Size and modification time of a local weights file (``model.pretrained=FILE``), else None.

    The cache is named by the path of the weights in ``model``; a file replaced at that path
    changes these. (A pretrained tag names weights that its download cache fixes.)"""
    if not isinstance(pretrained, str) or not is_local_file(pretrained) or not Path(pretrained).is_file():
        return None
    stat = Path(pretrained).stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_key(exp, plan: CachePlan) -> tuple[str, dict]:
    """Name and description of a disk cache: everything the cached values depend on."""
    cfg = to_dict(exp.cfg)
    data = {k: v for k, v in cfg["data"].items() if k not in ("num_workers", "download", "verify_images")}
    meta = {"version": 1, "backbone": exp.backbone.info, "model": cfg["model"], "peft": cfg["peft"], "data": data,
            "split": type(plan.point.split).__name__, "depth": plan.point.split.depth, "views": plan.views.views,
            "epochs": plan.views.epochs, "augmented": plan.views.augmented, "augment": cfg["train"]["augment"],
            "seed": cfg["train"]["seed"], "precision": str(exp.dtype), "images": plan.images}
    weights = _weights_file(cfg["model"].get("pretrained"))
    if weights:  # a local file replaced at the same path holds other weights: its features are not these
        meta["weights_file"] = weights
    source = getattr(exp, "source", None)
    if source:  # trained weights loaded into the backbone (train.from_run): the features are theirs
        meta["source_checkpoint_sha256"] = source["checkpoint_sha256"]
    options = AUGMENTATIONS.options(cfg["train"]["augment"])
    if options is not None:
        # the augmentation's options (train.minimal.*); only such runs' cache names change (minimal's crops
        # became LIFT+'s with these options: its older caches are not reused).
        meta["augment_options"] = cfg["train"].get(getattr(options, "KEY", cfg["train"]["augment"]), {})
    return f"features-{fingerprint(meta)}", meta


def cached_training(exp, quiet: bool = True, log: Callable[[str], None] = _log.info) -> CachedTraining | None:
    """Build (or reuse) the feature cache of ``exp`` and the model and dataset that train on it."""
    plan = plan_cache(exp, log)
    if plan is None:
        return None
    key, meta = cache_key(exp, plan)
    store = FeatureStore((plan.views.views, plan.images, *plan.item_shape), plan.folder, key, meta)
    log(plan.describe() + (f" (reused {store.path})" if store.complete else ""))
    t0 = time.perf_counter()
    reused = store.complete
    if not reused:
        cfg = exp.cfg
        datasets = [view_dataset(exp.data.train, plan.views, v, exp.backbone.preprocess, cfg.train.augment,
                                 cfg.train.seed, cfg.train) for v in range(plan.views.views)]
        exp.model.eval()
        fill(store, plan.point.split.prefix, datasets, cfg.eval.batch_size, exp.workers, exp.device, exp.dtype,
             quiet, exp.channels_last)
    built = time.perf_counter() - t0
    if not reused:
        log(f"feature cache built in {built:.1f}s")
    dataset = CachedViews(store.tensor, exp.data.train.targets, plan.views)
    return CachedTraining(CachedInputModel(exp.model, plan.point.split), dataset, plan, built, reused)
