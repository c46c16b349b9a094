import pytest
import torch

from tailtune.config import ModelConfig, PeftConfig
from tailtune.errors import ConfigError
from tailtune.models.backbones.base import build_backbone
from tailtune.models.peft.base import apply_peft, bottleneck


@pytest.mark.parametrize("c,blocks,r", [(100, 12, 4), (365, 12, 8), (1000, 12, 32), (8142, 12, 256), (1000, 24, 16)])
def test_bottleneck_rule(c, blocks, r):
    assert bottleneck(c, blocks) == r


@pytest.fixture(scope="module")
def vit_b16_state():
    backbone = build_backbone(ModelConfig(name="ViT-B-16", pretrained="none"))
    return backbone


def _trainable(backbone):
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad)


@pytest.mark.parametrize("classes,expected", [(100, 101_436), (1000, 617_868)])
def test_adaptformer_parameter_count_on_vit_b16(classes, expected):
    backbone = build_backbone(ModelConfig(name="ViT-B-16", pretrained="none"))
    assert len(backbone.blocks()) == 12 and backbone.feature_dim == 768
    apply_peft(backbone, PeftConfig(method="adaptformer"), classes)
    assert _trainable(backbone) == expected


def tiny():
    return build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))


def test_fresh_adaptformer_equals_classifier_only():
    torch.manual_seed(0)
    plain = tiny()
    adapted = tiny()
    adapted.load_state_dict(plain.state_dict())
    apply_peft(adapted, PeftConfig(method="adaptformer"), 10)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), adapted(x), atol=1e-6)
    # and it does change once the up-projection is non-zero
    for n, p in adapted.named_parameters():
        if n.endswith("adapter.up.weight"):
            p.data.normal_()
    with torch.no_grad():
        assert not torch.allclose(plain(x), adapted(x), atol=1e-4)


def test_only_adapters_are_trainable():
    b = tiny()
    apply_peft(b, PeftConfig(method="adaptformer"), 10)
    names = [n for n, p in b.named_parameters() if p.requires_grad]
    assert names and all(".adapter." in n for n in names)


def test_cnn_only_method_on_vit_is_a_startup_error():
    with pytest.raises(ConfigError, match="bn_tuning.*cnn.*vit"):
        apply_peft(tiny(), PeftConfig(method="bn_tuning"), 10)
