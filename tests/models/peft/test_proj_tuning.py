"""proj_tuning (models/peft/proj_tuning.py): CLIP's image projection back in the image path,
trainable; the text initialisation in the joint space; refused where there is no projection;
the feature cache cuts in front of it exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tailtune.config import ModelConfig, PeftConfig
from tailtune.errors import ConfigError
from tailtune.models.backbones.base import build_backbone
from tailtune.models.model import TailModel
from tailtune.models.peft.base import apply_peft, check_peft, peft_off
from tailtune.training.feature_cache import cache_point

IMAGES = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tiny():
    torch.manual_seed(0)
    return build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))


def test_the_features_are_the_projected_embeddings_and_the_projection_trains():
    backbone = tiny()
    pooled = backbone(IMAGES).detach()
    frozen = backbone.image_proj.detach().clone()
    apply_peft(backbone, PeftConfig(method="proj_tuning"), 10)
    assert backbone.feature_dim == 32 and backbone.projected
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == {"clip.visual.proj"}
    with torch.no_grad():
        assert torch.allclose(backbone(IMAGES), pooled @ frozen, atol=1e-5)
        with peft_off(backbone):  # an existing tensor: before training it is the frozen projection
            assert torch.allclose(backbone(IMAGES), pooled @ frozen, atol=1e-5)
        backbone.clip.visual.proj.mul_(2.0)  # the trainable copy, not the kept original, is in the path
        assert torch.allclose(backbone(IMAGES), 2 * pooled @ frozen, atol=1e-5)
        assert torch.equal(backbone.image_proj, frozen)


def test_text_features_and_zero_shot_are_in_the_joint_space():
    """The text initialisation takes the text embeddings as they are (zero-shot CLIP's classifier)."""
    plain, tuned = tiny(), tiny()
    apply_peft(tuned, PeftConfig(method="proj_tuning"), 10)
    text = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    assert torch.allclose(tuned.text_to_features(text), text)
    assert plain.text_to_features(text).shape == (5, 64)
    with torch.no_grad():
        assert torch.allclose(tuned.zeroshot_logits(IMAGES, text), plain.zeroshot_logits(IMAGES, text), atol=1e-4)


def test_a_training_step_changes_the_projection():
    backbone = tiny()
    apply_peft(backbone, PeftConfig(method="proj_tuning"), 10)
    model = TailModel(backbone, nn.Linear(backbone.feature_dim, 10)).train()
    before = backbone.clip.visual.proj.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    F.cross_entropy(model(IMAGES), torch.arange(3)).backward()
    opt.step()
    assert not torch.equal(backbone.clip.visual.proj, before)


def test_refused_without_a_clip_projection():
    timm_vit = build_backbone(ModelConfig(provider="timm", name="vit_tiny_patch16_224", pretrained="none",
                                          resolution=32))
    with pytest.raises(ConfigError, match=r"proj_tuning.*image projection.*'vit_tiny_patch16_224'.*open_clip"):
        check_peft(timm_vit, PeftConfig(method="proj_tuning"))


def test_the_feature_cache_cuts_after_the_last_block_and_computes_the_same():
    backbone = tiny()
    apply_peft(backbone, PeftConfig(method="proj_tuning"), 10)
    model = TailModel(backbone, nn.Linear(32, 10)).eval()
    point = cache_point(model)
    assert point.split is not None and point.split.depth == 2
    with torch.no_grad():
        assert torch.allclose(point.split.suffix(point.split.prefix(IMAGES)), backbone(IMAGES), atol=1e-5)


def test_a_tiny_run_trains_it_from_the_text_initialisation(tiny_overrides):
    import tailtune
    from tailtune.config import load_config

    cfg = load_config("lift", overrides=[*tiny_overrides, "peft.method=proj_tuning", "train.precision=fp32",
                                         "eval.tte=none"])
    assert cfg.head.init == "text"
    metrics = tailtune.fit(cfg)
    assert metrics["params"]["trainable_backbone"] == 64 * 32
