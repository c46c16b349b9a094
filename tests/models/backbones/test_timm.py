"""timm backbones: a ResNet (timm's test_resnet, random weights) is a CNN read after its global pooling."""

import torch

from tailtune.config import ModelConfig
from tailtune.models.backbones.base import build_backbone


def test_a_timm_resnet_is_a_cnn_with_its_global_pool():
    b = build_backbone(ModelConfig(provider="timm", name="test_resnet", pretrained="none", resolution=32))
    assert b.kind == "cnn" and b.blocks() == [] and not b.has_text
    assert b.pool_path == "global_pool" and b.pooling()[1] is b.net.global_pool
    with torch.no_grad():
        assert b(torch.randn(2, 3, 32, 32)).shape == (2, b.feature_dim)


def test_a_timm_vit_names_no_pooling_layer():
    b = build_backbone(ModelConfig(provider="timm", name="test_vit", pretrained="none"))
    assert b.kind == "vit" and b.pool_path is None
