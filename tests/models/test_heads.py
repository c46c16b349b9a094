"""Classifiers, head initialisers and prompt modes, on fake backbones and hand-made features."""

import json
import math
import zlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tailtune.config import HeadConfig, section
from tailtune.errors import ConfigError
from tailtune.models import heads as H
from tailtune.models.heads import KShotOptions
from tailtune.models.prompts import PROMPT_MODES, class_prompts

X = torch.tensor([[3.0, 4.0, 0.0], [1.0, -2.0, 2.0]])
W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [2.0, 2.0, 1.0], [0.0, 0.0, -1.0]])


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def close(got: torch.Tensor, want, tol=1e-5) -> bool:
    return torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), rtol=tol, atol=tol)


def head_with(name, weight=W, scale=25.0):
    head = H.build_head(HeadConfig(type=name, scale=scale), 3, 4)
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


@pytest.mark.parametrize("scale", [25.0, 10.0])
def test_cosine_head(scale):
    want = [[scale * dot(x, w) / (norm(x) * norm(w)) for w in W.tolist()] for x in X.tolist()]
    assert close(head_with("cosine", scale=scale)(X), want, 1e-5)


def test_linear_head_has_bias():
    head = head_with("linear")
    with torch.no_grad():
        head.bias.copy_(torch.tensor([0.5, 0.0, -1.0, 2.0]))
    want = [[dot(x, w) + b for w, b in zip(W.tolist(), [0.5, 0.0, -1.0, 2.0])] for x in X.tolist()]
    assert close(head(X), want, 1e-5)


def test_l2_head_normalises_weights_only():
    want = [[dot(x, w) / norm(w) for w in W.tolist()] for x in X.tolist()]
    assert close(head_with("l2")(X), want, 1e-5)
    assert [n for n, _ in head_with("l2").named_parameters()] == ["weight"]


def test_layernorm_head():
    def ln(x):
        mu = sum(x) / len(x)
        var = sum((v - mu) ** 2 for v in x) / len(x)  # biased variance, as LayerNorm
        return [(v - mu) / math.sqrt(var + 1e-12) for v in x]

    want = [[dot(ln(x), w) / norm(w) for w in W.tolist()] for x in X.tolist()]
    head = head_with("layernorm")
    assert close(head(X), want, 1e-4)
    assert [n for n, _ in head.named_parameters()] == ["weight"]  # no affine parameters


# Heads built from a backbone's text tower (models/text.py) are tested in tests/models/test_text.py.
@pytest.mark.parametrize("name", [n for n in H.HEADS.names() if not getattr(H.HEADS.get(n), "self_initialised", None)])
def test_every_head_builds_and_trains(name):
    head = H.build_head(HeadConfig(type=name), 8, 5)
    out = head(torch.randn(3, 8))
    out.sum().backward()
    assert out.shape == (3, 5) and head.weight.grad is not None


def test_unknown_head_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown classifier 'cosin'. Did you mean 'cosine'.*Valid: cosine, "
                                          "l2, layernorm, linear"):
        H.build_head(HeadConfig(type="cosin"), 3, 4)


# ---------------------------------------------------------------- text initialisation


def fake_embedding(prompt: str, dim: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    return torch.randn(dim, generator=g) * 3  # not unit norm: the initialiser must normalise


class FakeClip:
    has_text = True
    info = {"name": "fake-clip"}

    def __init__(self):
        self.seen = []

    def text_embeddings(self, prompts):
        self.seen += prompts
        return torch.stack([fake_embedding(p) for p in prompts])

    def text_to_features(self, text):  # identity mapping: the expected rows are the averaged embeddings
        return F.normalize(text, dim=-1)


class FakeVision(nn.Module):
    has_text = False
    info = {"name": "fake-vit"}


def expected_text(prompts_per_class):
    rows = []
    for prompts in prompts_per_class:
        mean = torch.stack([F.normalize(fake_embedding(p), dim=0) for p in prompts]).mean(0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


def ctx_for(backbone, cfg, classnames=("sea_lion", "cat"), feats=None, labels=None):
    def train_features(indices=None):
        if indices is None:
            return feats, labels
        return feats[indices], labels[indices]

    return H.InitContext(backbone, list(classnames), cfg, train_features,
                         None if labels is None else labels.tolist())


def test_text_init_default_prompt_and_custom_template():
    got = H.text_init(ctx_for(FakeClip(), HeadConfig()))
    assert torch.allclose(got, expected_text([["a photo of a sea lion."], ["a photo of a cat."]]), atol=1e-6)
    got = H.text_init(ctx_for(FakeClip(), HeadConfig(prompt="art of the {}")))
    assert torch.allclose(got, expected_text([["art of the sea lion"], ["art of the cat"]]), atol=1e-6)


def test_text_init_classname_mode():
    got = H.text_init(ctx_for(FakeClip(), HeadConfig(prompt_mode="classname")))
    assert torch.allclose(got, expected_text([["sea lion"], ["cat"]]), atol=1e-6)


def test_text_init_ensemble_uses_the_80_openclip_templates():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    clip = FakeClip()
    got = H.text_init(ctx_for(clip, HeadConfig(prompt_mode="ensemble")))
    per_class = [[t(c) for t in OPENAI_IMAGENET_TEMPLATES] for c in ("sea lion", "cat")]
    assert len(per_class[0]) == 80 and "a bad photo of a cat." in per_class[1]
    assert clip.seen == per_class[0] + per_class[1]
    assert torch.allclose(got, expected_text(per_class), atol=1e-5)


def test_text_init_averages_prompts_in_the_text_space_then_maps_them_on_a_clip():
    """normalise(mean_p normalise(e_p) @ proj^T): the method's order, on a (tiny, random) open_clip model."""
    from tailtune.config import ModelConfig
    from tailtune.models.backbones.base import build_backbone

    torch.manual_seed(0)
    clip = build_backbone(ModelConfig(name="TT-Tiny-ViT", pretrained="none"))
    cfg = HeadConfig(prompt_mode="ensemble")
    got = H.text_init(ctx_for(clip, cfg))
    for row, prompts in zip(got, class_prompts(["sea_lion", "cat"], cfg)):
        mean = F.normalize(clip.text_embeddings(prompts), dim=-1).mean(0)
        want = F.normalize(mean @ clip.image_proj.t(), dim=0)
        assert torch.allclose(row, want, atol=1e-5)
        mapped_first = F.normalize(clip.text_features(prompts).mean(0), dim=0)  # the other order differs
        assert not torch.allclose(row, mapped_first, atol=1e-4)


def test_text_init_descriptors(tmp_path):
    path = tmp_path / "desc.json"
    path.write_text(json.dumps({"sea lion": ["a marine mammal", "flippers"], "cat": ["a {} on a sofa"]}))
    cfg = HeadConfig(prompt_mode="descriptors", descriptors=str(path))
    got = H.text_init(ctx_for(FakeClip(), cfg))
    want = expected_text([["sea lion, a marine mammal", "sea lion, flippers"], ["a cat on a sofa"]])
    assert torch.allclose(got, want, atol=1e-6)


def test_descriptors_errors_name_the_problem(tmp_path):
    path = tmp_path / "desc.json"
    path.write_text(json.dumps({"cat": ["whiskers"]}))
    cfg = HeadConfig(prompt_mode="descriptors", descriptors=str(path))
    with pytest.raises(ConfigError, match="has no descriptions for 'sea_lion'"):
        class_prompts(["sea_lion", "cat"], cfg)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        class_prompts(["cat"], cfg)
    path.write_text(json.dumps({"cat": []}))
    with pytest.raises(ConfigError, match="'cat' must map to a non-empty list"):
        class_prompts(["cat"], cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        class_prompts(["cat"], HeadConfig(prompt_mode="descriptors", descriptors=str(tmp_path / "none.json")))


def test_prompt_config_conflicts_are_refused():
    with pytest.raises(ConfigError, match="head.prompt_mode=descriptors and head.descriptors=FILE.json go together"):
        HeadConfig(prompt_mode="descriptors")
    with pytest.raises(ConfigError, match="head.prompt is only read with head.prompt_mode=default"):
        HeadConfig(prompt="art of {}", prompt_mode="ensemble")
    with pytest.raises(ConfigError, match="unknown prompt mode 'ensamble'. Did you mean 'ensemble'"):
        class_prompts(["cat"], HeadConfig(prompt_mode="ensamble"))
    assert PROMPT_MODES.names() == ["classname", "default", "descriptors", "ensemble"]


def test_text_init_on_vision_only_backbone_is_a_startup_error():
    with pytest.raises(ConfigError, match="head.init=text needs a backbone with a text tower; 'fake-vit'"):
        H.check_head(HeadConfig(init="text"), FakeVision())
    H.check_head(HeadConfig(init="auto"), FakeVision())  # auto falls back to class_mean
    assert H.resolve_init(HeadConfig(), FakeVision()) == "class_mean"
    assert H.resolve_init(HeadConfig(), FakeClip()) == "text"


# ---------------------------------------------------------------- feature-based initialisers

FEATS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 4.0], [1.0, 1.0], [0.0, -5.0], [4.0, 3.0]])
LABELS = torch.tensor([0, 0, 1, 1, 1, 0])


def hand_class_mean(rows):
    """The reference's rule: the mean of the raw rows, then normalised."""
    mean = [sum(col) / len(rows) for col in zip(*rows)]
    return [v / norm(mean) for v in mean]


def test_class_mean_init():
    got = H.class_mean_init(ctx_for(FakeVision(), HeadConfig(init="class_mean"), ["a", "b"], FEATS, LABELS))
    # a: mean of (2, 0), (0, 1), (4, 3) = (2, 4/3) -> (3, 2) / sqrt(13); b: (4/3, 0) -> (1, 0)
    want = [[3 / math.sqrt(13), 2 / math.sqrt(13)], [1.0, 0.0]]
    assert close(got, want, 1e-6)
    assert close(got, [hand_class_mean([[2, 0], [0, 1], [4, 3]]), hand_class_mean([[3, 4], [1, 1], [0, -5]])], 1e-6)


def test_class_mean_averages_raw_features_then_normalises():
    """(10, 0) and (0, 1): the raw mean (5, 0.5) points along (10, 1); normalising first would give (1, 1)."""
    feats, labels = torch.tensor([[10.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    got = H.class_means(feats, labels, 2)
    assert close(got, [[10 / math.sqrt(101), 1 / math.sqrt(101)], [0.0, 0.0]], 1e-6)  # absent class: zeros
    normalised_first = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    assert (got[0] - torch.tensor(normalised_first)).abs().max() > 0.5


def test_k_shot_indices_are_seeded_and_capped():
    labels = [0] * 7 + [1] * 2 + [2] * 5
    a = H.k_shot_indices(labels, 3, seed=1)
    assert a == H.k_shot_indices(labels, 3, seed=1)
    assert [sum(labels[i] == c for i in a) for c in range(3)] == [3, 2, 3]
    assert set(range(7, 9)) <= set(a)  # class 1 has only 2 images: both kept
    draws = {tuple(H.k_shot_indices(labels, 3, seed=s)) for s in range(10)}
    assert len(draws) > 1  # the seed matters


def test_k_shot_init_is_the_class_mean_of_the_chosen_images():
    cfg = section("head", init="k_shot", k_shot=KShotOptions(shots=2, seed=3))
    chosen = H.k_shot_indices(LABELS.tolist(), 2, 3)
    got = H.k_shot_init(ctx_for(FakeVision(), cfg, ["a", "b"], FEATS, LABELS))
    want = [hand_class_mean([FEATS[i].tolist() for i in chosen if LABELS[i] == c]) for c in (0, 1)]
    assert close(len(chosen) == 4 and got, want, 1e-6)


def test_class_mean_capped_per_class_is_lift_plus_class_mean_init():
    """LIFT+'s class-mean init (LIFT-plus trainer.py classifier_init="class_mean" with utils/samplers.py
    DownSampler(n_max=100)): the raw features of at most N images per class, averaged, then normalised."""
    from tailtune.models.heads import ClassMeanOptions

    cfg = section("head", init="class_mean", class_mean=ClassMeanOptions(max_per_class=2, seed=3))
    asked = []

    def features(indices=None):
        asked.append(indices)
        rows = range(len(LABELS)) if indices is None else indices
        return FEATS[list(rows)], LABELS[list(rows)]

    ctx = H.InitContext(FakeVision(), ["a", "b"], cfg, features, LABELS.tolist())
    got = H.class_mean_init(ctx)
    chosen = H.k_shot_indices(LABELS.tolist(), 2, 3)  # the images k_shot with the same seed takes
    assert asked == [chosen] and [sum(LABELS[i] == c for i in chosen) for c in (0, 1)] == [2, 2]
    want = [hand_class_mean([FEATS[i].tolist() for i in chosen if LABELS[i] == c]) for c in (0, 1)]
    assert close(got, want, 1e-6)
    # a cap above every class's count is all the images: the plain class mean
    cfg = section("head", init="class_mean", class_mean=ClassMeanOptions(max_per_class=100))
    torch.testing.assert_close(
        H.class_mean_init(ctx_for(FakeVision(), cfg, ["a", "b"], FEATS, LABELS)),
        H.class_mean_init(ctx_for(FakeVision(), HeadConfig(init="class_mean"), ["a", "b"], FEATS, LABELS)))


def test_class_mean_options_are_checked():
    from tailtune.config import load_config

    assert load_config(overrides=["head.init=class_mean"]).head.class_mean.max_per_class is None  # all images
    with pytest.raises(ConfigError, match=r"head.class_mean.max_per_class=0 must be > 0"):
        load_config(overrides=["head.init=class_mean", "head.class_mean.max_per_class=0"])
    with pytest.raises(ConfigError, match=r"head.class_mean.max_per_class=100 applies to head.init=class_mean only, "
                                          r"not to head.init=text"):
        load_config(overrides=["head.init=text", "head.class_mean.max_per_class=100"])


def balanced_objective(x, y, w, b, num_classes):
    """Written out independently: 0.5 |W|^2 + sum_i N / (K n_y) * CE(W x_i + b, y_i), raw x."""
    counts = [int((y == c).sum()) for c in range(num_classes)]
    total = 0.5 * (w ** 2).sum()
    for xi, yi in zip(x, y.tolist()):
        z = w @ xi + b
        total = total + len(y) / (num_classes * counts[yi]) * (torch.logsumexp(z, 0) - z[yi])
    return total


def probe_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0] * 20 + [1] * 6 + [2] * 3)
    x = 3.0 * torch.randn(29, 4, generator=g) + 4.0 * F.one_hot(y, 4).float()  # raw: norms far from 1
    return x, y


def test_linear_probe_is_scikit_learns_balanced_logistic_regression_on_raw_features():
    from sklearn.linear_model import LogisticRegression

    x, y = probe_data()
    w, b = H.fit_linear_probe(x, y, 3)
    clf = LogisticRegression(solver="lbfgs", max_iter=100, class_weight="balanced").fit(x.numpy(), y.numpy())
    assert torch.allclose(w, torch.from_numpy(clf.coef_).float(), atol=1e-6)
    assert torch.allclose(b, torch.from_numpy(clf.intercept_).float(), atol=1e-6)
    # ... which is the optimum of the balanced objective on the raw features (not the unweighted one)
    w64, b64 = w.double().requires_grad_(True), b.double().requires_grad_(True)
    balanced_objective(x.double(), y, w64, b64, 3).backward()
    assert w64.grad.abs().max() < 5e-3 and b64.grad.abs().max() < 5e-3
    w64.grad = None
    unweighted = 0.5 * (w64 ** 2).sum() + F.cross_entropy(x.double() @ w64.t() + b64, y, reduction="sum")
    unweighted.backward()
    assert w64.grad.abs().max() > 0.5


def test_linear_probe_fills_absent_classes_with_zeros_and_handles_two_classes():
    from sklearn.linear_model import LogisticRegression

    x, y = probe_data(1)
    y = torch.where(y == 1, 3, y)  # classes 0, 2, 3 of 5: rows 1 and 4 have no image
    w, b = H.fit_linear_probe(x, y, 5)
    clf = LogisticRegression(solver="lbfgs", max_iter=100, class_weight="balanced").fit(x.numpy(), y.numpy())
    assert torch.allclose(w[[0, 2, 3]], torch.from_numpy(clf.coef_).float(), atol=1e-6)
    assert not w[[1, 4]].any() and not b[[1, 4]].any()
    two = y != 2
    w2, b2 = H.fit_linear_probe(x[two], (y[two] == 3).long(), 2)
    clf2 = LogisticRegression(solver="lbfgs", max_iter=100, class_weight="balanced").fit(
        x[two].numpy(), (y[two] == 3).long().numpy())
    # scikit-learn's one binary row w is the softmax pair (-w/2, w/2): the same probabilities
    want = torch.from_numpy(clf2.predict_proba(x[two].numpy())).float()
    assert torch.allclose(torch.softmax(x[two] @ w2.t() + b2, dim=1), want, atol=1e-5)


def test_linear_probe_refuses_one_class_and_too_little_memory(monkeypatch):
    x, y = probe_data()
    with pytest.raises(ConfigError, match="at least two classes"):
        H.fit_linear_probe(x, torch.zeros_like(y), 3)
    monkeypatch.setattr(H, "available_memory", lambda: 1000)
    with pytest.raises(ConfigError, match="needs about .* GiB.*head.init=class_mean"):
        H.fit_linear_probe(x, y, 3)


def test_linear_probe_init_gives_unit_rows_that_classify():
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0] * 15 + [1] * 5)
    centers = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    x = centers[y] + 0.1 * torch.randn(20, 3, generator=g)
    got = H.linear_probe_init(ctx_for(FakeVision(), HeadConfig(init="linear_probe"), ["a", "b"], x, y))
    assert got.norm(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert ((F.normalize(x, dim=1) @ got.t()).argmax(1) == y).all()


def test_random_init_keeps_the_weights_and_every_init_is_registered():
    head = H.build_head(HeadConfig(), 2, 2)
    before = head.weight.detach().clone()
    assert H.initialise_head(head, ctx_for(FakeVision(), HeadConfig(init="random"), ["a", "b"])) == "random"
    assert torch.equal(head.weight, before)
    assert H.HEAD_INITS.names() == ["class_mean", "k_shot", "linear_probe", "random", "text"]


@pytest.mark.parametrize("init", ["class_mean", "k_shot", "linear_probe", "text"])
def test_initialise_head_writes_unit_rows(init):
    backbone = FakeClip() if init == "text" else FakeVision()
    feats = torch.randn(12, 6, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1] * 6)
    head = H.build_head(HeadConfig(), 6, 2)
    assert H.initialise_head(head, ctx_for(backbone, HeadConfig(init=init), ["a", "b"], feats, labels)) == init
    assert head.weight.norm(dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


# ---------------------------------------------------------------- the initialisers' view


def test_init_view_is_resize_to_the_resolution_then_center_crop():
    """Reference: trainer.py:109-114 (transform_plain), not the 8/7 test view."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as TV

    from tailtune.data.transforms import Preprocess, test_transform

    yy, xx = np.mgrid[0:40, 0:80]  # 80 wide, 40 high; pixel values encode the position
    img = Image.fromarray(np.stack([xx * 3, yy * 6, np.zeros_like(xx)], -1).astype(np.uint8))
    nearest = Preprocess(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "nearest")
    got = H.init_transform(nearest)(img)
    # short side 40 -> 16, so 80 -> 32; the center 16 columns are 8..23
    want = torch.from_numpy(np.array(img.resize((32, 16), Image.NEAREST))).permute(2, 0, 1).float() / 255
    assert torch.equal(got, want[:, :, 8:24])
    assert not torch.equal(got, test_transform(nearest)(img))  # the test view resizes to 18 first
    bilinear = Preprocess(16, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4), "bilinear")
    library = TV.Compose([TV.Resize(16, interpolation=TV.InterpolationMode.BILINEAR), TV.CenterCrop(16),
                          TV.ToTensor(), TV.Normalize(bilinear.mean, bilinear.std)])
    assert torch.allclose(H.init_transform(bilinear)(img), library(img), atol=1e-6)
    as_tensor = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()  # the store's uint8 tensors
    assert torch.equal(H.init_transform(nearest)(as_tensor), got)
