"""Feature caching: the cut backbone equals the whole, the cut point, and cached = uncached training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import TINY_CLIP
from tailtune.config import load_config
from tailtune.data.base import SeededTransformed
from tailtune.data.transforms import train_transform
from tailtune.errors import ConfigError
from tailtune.experiment import build
from tailtune.losses import build_loss
from tailtune.training.feature_cache import (
    CachedViews,
    OpenClipViTSplit,
    PooledSplit,
    TimmViTSplit,
    ViewPlan,
    cache_point,
    cached_training,
    plan_cache,
)
from tailtune.training.trainer import Trainer

TINY_TIMM = [o for o in TINY_CLIP if not o.startswith("model.")] + [
    "model.provider=timm", "model.name=vit_tiny_patch16_224", "model.pretrained=none", "model.resolution=32",
    "head.init=class_mean"]


def _exp(tmp_path, *extra, base=TINY_CLIP):
    return build(load_config("lift", overrides=[*base, f"output_dir={tmp_path}", *extra]))


@pytest.mark.parametrize("base,split", [(TINY_CLIP, OpenClipViTSplit), (TINY_TIMM, TimmViTSplit)],
                         ids=["open_clip", "timm"])
def test_prefix_then_suffix_is_the_backbone(tmp_path, base, split):
    exp = _exp(tmp_path, "peft.method=none", base=base)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = exp.backbone(x)
        for depth in range(len(exp.backbone.blocks()) + 1):
            cut = split(exp.backbone, depth)
            assert torch.equal(cut.suffix(cut.prefix(x)), whole), depth


def _train_only(model, names):
    for n, p in model.backbone.named_parameters():
        p.requires_grad_(any(n.startswith(k) for k in names))


def test_cache_point_follows_requires_grad(tmp_path):
    exp = _exp(tmp_path, "peft.method=none")
    point = cache_point(exp.model)
    assert isinstance(point.split, PooledSplit) and point.what == "pooled features"
    _train_only(exp.model, ["clip.visual.transformer.resblocks.1."])
    assert cache_point(exp.model).split.depth == 1
    _train_only(exp.model, ["clip.visual.ln_post."])  # after the blocks: tokens leaving the last block
    assert cache_point(exp.model).split.depth == 2
    _train_only(exp.model, ["clip.visual.class_embedding"])
    point = cache_point(exp.model)
    assert point.split is None and "clip.visual.class_embedding" in point.reason
    _train_only(exp.model, ["clip.visual.transformer.resblocks.0."])
    assert "first transformer block trains" in cache_point(exp.model).reason


def test_peft_in_the_last_block_cuts_before_it(tmp_path):
    exp = _exp(tmp_path, "peft.method=adaptformer", "peft.blocks=last 1")
    assert cache_point(exp.model).split.depth == 1
    exp = _exp(tmp_path, "peft.method=vpt_deep", "peft.blocks=last 1")
    assert cache_point(exp.model).split.depth == 1


def test_view_plan():
    plan = ViewPlan.from_config(4, 10)
    # epoch e trains on view e * 4 // 10; view v is drawn at the first epoch using it, ceil(v * 10 / 4)
    assert [plan.view_of_epoch(e) for e in range(10)] == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert [plan.augment_epoch(v) for v in range(4)] == [0, 3, 5, 8]
    assert ViewPlan.from_config(None, 3).views == 3 and ViewPlan.from_config(7, 3).views == 3
    assert not ViewPlan.from_config(0, 5).augmented and ViewPlan.from_config(0, 5).views == 1


def _run(exp, cached: bool, seed: int = 0):
    """Two epochs of training, from the cache or on the same seeded views of the images."""
    cfg = exp.cfg
    loss_fn = build_loss(cfg.loss, exp.data.train_counts)
    if cached:
        c = cached_training(exp, log=lambda _: None)
        model, data = c.model, c.dataset
    else:
        model = exp.model
        data = SeededTransformed(exp.data.train, train_transform(exp.backbone.preprocess, cfg.train.augment,
                                                                 cfg.train.epochs), seed)
    Trainer(model, loss_fn, data, cfg.train, exp.device, exp.dtype, 0, quiet=True, log=lambda _: None).fit()
    return {n: p.detach().clone() for n, p in exp.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("extra", [["peft.method=none"], ["peft.method=adaptformer", "peft.blocks=last 1"]],
                         ids=["classifier_only", "adaptformer_last_block"])
def test_cached_training_matches_uncached_on_the_same_views(tmp_path, extra):
    over = ["train.precision=fp32", "train.epochs=2", "train.cache_features=always", "train.lr=0.05", *extra]
    uncached = _run(_exp(tmp_path, *over), cached=False)
    cached = _run(_exp(tmp_path, *over), cached=True)
    other_views = _run(_exp(tmp_path, *over), cached=False, seed=1)
    assert cached.keys() == uncached.keys() and "head.weight" in cached
    start = dict(_exp(tmp_path, *over).model.named_parameters())
    gaps = {}
    for name in cached:
        moved = (uncached[name] - start[name].detach()).abs().max()
        gaps[name] = (cached[name] - uncached[name]).abs().max()
        # The cache stores bf16 (8 bits of mantissa): within 2% of how far training moved the weights.
        assert gaps[name] <= 0.02 * moved + 1e-6, (name, float(gaps[name]), float(moved))
    # Other views of the same images end elsewhere, far beyond the cache's gap: the test tells views apart.
    # (Summed over the tensors: a single scalar such as an adapter's scale may barely move either way.)
    other = sum(float((other_views[name] - uncached[name]).abs().max()) for name in cached)
    assert other > 10 * sum(float(g) for g in gaps.values())


def test_cached_logits_match_the_model_on_the_same_images(tmp_path):
    exp = _exp(tmp_path, "peft.method=adaptformer", "peft.blocks=last 1", "train.precision=fp32",
               "train.cache_features=always", "train.cache_views=0")
    c = cached_training(exp, log=lambda _: None)
    from tailtune.data.base import Transformed
    from tailtune.data.transforms import test_transform

    images = torch.stack([Transformed(exp.data.train, test_transform(exp.backbone.preprocess))[i][0]
                          for i in range(8)])
    exp.model.eval()
    with torch.no_grad():
        direct = exp.model(images)
        from_cache = c.model(torch.stack([c.dataset[i][0] for i in range(8)]))
    assert torch.allclose(from_cache, direct, atol=0.05 * direct.abs().max().item())


def test_disk_cache_is_reused_and_rebuilt_when_stale(tmp_path):
    over = ["peft.method=none", "train.epochs=2", f"train.cache_dir={tmp_path / 'cache'}"]
    first = cached_training(_exp(tmp_path, *over), log=lambda _: None)
    again = cached_training(_exp(tmp_path, *over), log=lambda _: None)
    assert not first.reused and again.reused
    assert torch.equal(first.dataset.store, again.dataset.store)
    other = cached_training(_exp(tmp_path, *over, "train.cache_views=1"), log=lambda _: None)
    assert not other.reused and other.dataset.store.shape[0] == 1
    assert len(list((tmp_path / "cache").glob("*.bf16"))) == 2


def test_cache_modes(tmp_path):
    said = []
    assert plan_cache(_exp(tmp_path, "peft.method=none"), said.append) is None  # auto, 1 view per epoch
    assert "saves nothing" in said[-1]
    assert plan_cache(_exp(tmp_path, "peft.method=none", "train.cache_views=0"), said.append) is not None
    assert plan_cache(_exp(tmp_path, "peft.method=none", "train.cache_features=never"), said.append) is None
    with pytest.raises(ConfigError, match="first transformer block trains"):
        plan_cache(_exp(tmp_path, "peft.method=adaptformer", "train.cache_features=always"), said.append)


def test_memory_budget(tmp_path, monkeypatch):
    import tailtune.training.feature_cache as F

    monkeypatch.setattr(F, "_available_memory", lambda: 1000)
    said = []
    assert plan_cache(_exp(tmp_path, "peft.method=none", "train.cache_views=0"), said.append) is None
    assert "does not fit in memory" in said[-1]
    with pytest.raises(ConfigError, match="train.cache_dir"):
        plan_cache(_exp(tmp_path, "peft.method=none", "train.cache_features=always"), said.append)


def test_fit_trains_from_the_cache(tmp_path):
    from tailtune.runs.run import fit

    cfg = load_config("lift", overrides=[*TINY_CLIP, f"output_dir={tmp_path}", "peft.method=none",
                                         "train.cache_views=0"])
    metrics = fit(cfg)
    log = (next((tmp_path).glob("*/log.txt"))).read_text()
    assert "feature cache: pooled features (64,)" in log and "1 un-augmented view" in log
    assert metrics["history"][0]["images"] == 62


def test_cached_views_follow_the_epoch():
    store = torch.arange(3 * 4, dtype=torch.bfloat16).view(3, 4, 1)
    ds = CachedViews(store, [0, 1, 0, 1], ViewPlan(3, 6, True))
    ds.set_epoch(5)  # 5 * 3 // 6 = view 2
    assert ds[1][0].item() == 9 and ds[1][1] == 1
    assert dataclasses.is_dataclass(ViewPlan)


def test_random_modules_in_the_frozen_part_prevent_caching(tmp_path):
    exp = _exp(tmp_path, "peft.method=adaptformer", "peft.blocks=last 1")
    exp.backbone.blocks()[1][1].add_module("extra_drop", torch.nn.Dropout(0.1))  # in the trained part: fine
    assert cache_point(exp.model).split.depth == 1
    exp.backbone.blocks()[0][1].add_module("extra_drop", torch.nn.Dropout(0.1))  # in the frozen part
    point = cache_point(exp.model)
    assert point.split is None and "Dropout(p=0.1)" in point.reason


def test_disk_cache_is_rebuilt_when_the_local_weights_file_is_replaced(tmp_path):
    """The cache is named by model.pretrained=FILE; new weights saved at that path are other features."""
    import open_clip
    from safetensors.torch import save_file

    weights = tmp_path / "tiny.safetensors"

    def write(seed: int) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            clip = open_clip.create_model("TT-Tiny-ViT", pretrained=None)
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, weights)

    over = [f"model.pretrained={weights}", "peft.method=none", "train.epochs=2",
            f"train.cache_dir={tmp_path / 'cache'}"]
    write(0)
    first = cached_training(_exp(tmp_path, *over), log=lambda _: None)
    assert not first.reused
    assert cached_training(_exp(tmp_path, *over), log=lambda _: None).reused
    write(1)
    replaced = cached_training(_exp(tmp_path, *over), log=lambda _: None)
    assert not replaced.reused
    assert not torch.equal(first.dataset.store, replaced.dataset.store)
