"""open_clip backbones: CLIP ResNets (open_clip's ModifiedResNet) beside the ViTs.

The tiny CLIP ResNet TT-Tiny-RN (models/open_clip_configs: layers (1, 1, 1, 1), width 8,
joint space 16, 32 px) stands in for RN50 / RN101: same classes, random weights.
"""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from tailtune.config import ModelConfig
from tailtune.errors import ConfigError
from tailtune.models.backbones.base import build_backbone

TINY_RN = ModelConfig(provider="open_clip", name="TT-Tiny-RN", pretrained="none")


@pytest.fixture(scope="module")
def rn():
    return build_backbone(TINY_RN)


def test_a_clip_resnet_is_a_cnn_read_after_its_attention_pooling(rn):
    assert rn.kind == "cnn" and rn.blocks() == [] and rn.image_proj is None
    assert rn.pool_path == "attnpool" and rn.pooling()[1] is rn.clip.visual.attnpool
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = rn(x)
        # The attention pooling's c_proj maps into the joint space: the features are CLIP's image embedding.
        assert torch.equal(features, rn.clip.encode_image(x))
    assert features.shape == (2, rn.feature_dim) == (2, 16)
    assert rn.preprocess.resolution == 32 and rn.preprocess.interpolation == "bicubic"


def test_text_features_of_a_clip_resnet_are_its_normalised_text_embeddings(rn):
    # LIFT trainer.py:init_head_text_feat maps text through the image projection for ViTs only.
    prompts = ["a photo of a cat.", "a photo of a dog."]
    text = rn.text_embeddings(prompts)
    with torch.no_grad():
        direct = F.normalize(rn.clip.encode_text(rn.tokenizer(prompts)).float(), dim=-1)
    assert torch.allclose(text, direct, atol=1e-6)
    assert torch.allclose(rn.text_features(prompts), text, atol=1e-6)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        image = F.normalize(rn.clip.encode_image(x).float(), dim=-1)
        want = rn.clip.logit_scale.exp() * image @ text.t()
        assert torch.allclose(rn.zeroshot_logits(x, text), want, atol=1e-5)


def test_open_clip_knows_the_resnets_and_their_tags():
    assert {"RN50", "RN101"} <= set(open_clip.list_models())
    assert {"openai", "yfcc15m", "cc12m"} <= set(open_clip.list_pretrained_tags_by_model("RN50"))
    with pytest.raises(ConfigError, match="no pretrained tag 'cc12m'.*openai, yfcc15m"):
        build_backbone(ModelConfig(provider="open_clip", name="RN101", pretrained="cc12m"))


def test_a_clip_vit_keeps_its_projection():
    vit = build_backbone(ModelConfig(provider="open_clip", name="TT-Tiny-ViT", pretrained="none"))
    assert vit.kind == "vit" and vit.pool_path is None and vit.image_proj is not None
    with pytest.raises(ConfigError, match="names no global pooling layer"):
        vit.pooling()
