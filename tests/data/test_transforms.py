import math

import numpy as np
import pytest
import torch
from PIL import Image

from tailtune.data import transforms as T
from tailtune.data.transforms import (
    TTE_MODES,
    FiveCropStack,
    Preprocess,
    TTEOptions,
    eval_transform,
)

P = Preprocess(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear")
NEAREST = Preprocess(16, (0, 0, 0), (1, 1, 1), "nearest")


def position_image() -> Image.Image:
    """A 40x40 image whose pixel value encodes its position."""
    yy, xx = np.mgrid[0:40, 0:40]
    return Image.fromarray(np.stack([xx * 6, yy * 6, np.zeros_like(xx)], -1).astype(np.uint8))


def resized(img: Image.Image, side: int) -> torch.Tensor:
    return torch.from_numpy(np.array(img.resize((side, side), Image.NEAREST))).permute(2, 0, 1).float() / 255


def crops_of(r: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Top-left, top-right, bottom-left, bottom-right, center (torchvision's FiveCrop order)."""
    side = r.shape[-1]
    c = (side - size) // 2
    return [r[:, :size, :size], r[:, :size, side - size:], r[:, side - size:, :size],
            r[:, side - size:, side - size:], r[:, c:c + size, c:c + size]]


def test_five_crops_are_corners_and_center_of_resized_image():
    # resize to 16 + 4 = 20 is an exact 2x reduction
    img = position_image()
    out = FiveCropStack(NEAREST, TTEOptions(expand=4))(img)
    assert out.shape == (5, 3, 16, 16)
    for got, w in zip(out, crops_of(resized(img, 20), 16)):
        assert torch.allclose(got, w, atol=1e-6)


def test_ten_crops_add_the_crops_of_the_flipped_image():
    img = position_image()
    out = eval_transform(NEAREST, "tencrop", TTEOptions(expand=4))
    assert out.views == 10
    views = out(img)
    r = resized(img, 20)
    want = crops_of(r, 16) + crops_of(r.flip(-1), 16)
    assert views.shape == (10, 3, 16, 16)
    for got, w in zip(views, want):
        assert torch.allclose(got, w, atol=1e-6)


@pytest.mark.parametrize("name, expand", [
    # the reference's values per backbone (configs/model/*.yaml): ViT-L/14 21 at 224 and 336 px, others 24
    ("ViT-L-14", 21), ("ViT-L-14-336", 21), ("ViT-L-14-quickgelu", 21), ("vit_large_patch14_clip_224.openai", 21),
    ("vit_large_patch14_clip_336.openai", 21), ("CLIP-ViT-L/14@336px", 21),
    ("ViT-B-16", 24), ("ViT-B-32", 24), ("RN50", 24), ("RN101", 24), ("vit_large_patch16_224", 24),
    ("vit_base_patch16_clip_224.openai", 24), ("TT-Tiny-ViT", 24),
])
def test_expand_is_the_backbones(name, expand):
    assert T.default_expand(name) == expand


@pytest.mark.parametrize("name, res, resize", [("ViT-L-14", 224, 245), ("ViT-L-14-336", 336, 357),
                                               ("ViT-B-16", 224, 248)])
def test_a_runs_five_crops_enlarge_by_its_backbones_expand(name, res, resize):
    from tailtune.config import load_config
    from tailtune.experiment import tte_options

    p = Preprocess(res, (0, 0, 0), (1, 1, 1))
    cfg = load_config("lift", overrides=[f"model.name={name}"])
    assert eval_transform(p, "fivecrop", tte_options(cfg)).resize.size == resize
    assert eval_transform(p, "tencrop", tte_options(cfg)).resize.size == resize
    # eval.expand stays an explicit override, whatever the backbone
    cfg = load_config("lift", overrides=[f"model.name={name}", "eval.expand=8"])
    assert eval_transform(p, "fivecrop", tte_options(cfg)).resize.size == res + 8


def test_five_crops_without_a_backbone_enlarge_by_24_whatever_the_resolution():
    assert eval_transform(Preprocess(224, (0, 0, 0), (1, 1, 1)), "fivecrop").resize.size == 248
    assert eval_transform(Preprocess(336, (0, 0, 0), (1, 1, 1)), "fivecrop").resize.size == 360
    assert eval_transform(Preprocess(336, (0, 0, 0), (1, 1, 1)), "fivecrop", 8).resize.size == 344


def test_randaug_views_are_k_training_draws_and_repeatable():
    img = position_image()
    tf = eval_transform(P, "randaug", TTEOptions(randaug_views=4, seed=7))
    first = tf(img)
    assert tf.views == 4 and first.shape == (4, 3, 16, 16)
    assert not torch.allclose(first[0], first[1])  # different draws
    torch.manual_seed(123)  # the global stream does not matter ...
    assert torch.equal(tf(img), first)
    state = torch.get_rng_state()
    tf(img)
    assert torch.equal(torch.get_rng_state(), state)  # ... and is left untouched
    other = eval_transform(P, "randaug", TTEOptions(randaug_views=4, seed=8))(img)
    assert not torch.equal(other, first)


def test_views_per_image_of_every_mode():
    assert {m: T.views_per_image(m, 7) for m in TTE_MODES.names()} == {
        "fivecrop": 5, "none": 1, "randaug": 7, "tencrop": 10}
    for mode in TTE_MODES.names():
        tf = eval_transform(P, mode, TTEOptions(randaug_views=3))
        out = tf(Image.new("RGB", (30, 24)))
        assert (out.shape[0] if out.dim() == 4 else 1) == tf.views == T.views_per_image(mode, 3), mode


def test_unknown_tte_lists_valid_modes():
    from tailtune.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown test-time ensemble 'tencrops'.*Valid: fivecrop, none, randaug, "
                                          "tencrop"):
        eval_transform(P, "tencrops")


def test_test_view_resizes_to_8_over_7_then_center_crops():
    img = Image.new("RGB", (50, 30))
    assert T.test_transform(P)(img).shape == (3, 16, 16)
    assert T.test_transform(Preprocess(224, (0, 0, 0), (1, 1, 1))).transforms[0].size == 256


def test_train_view_shape():
    assert T.train_transform(P)(Image.new("RGB", (28, 28))).shape == (3, 16, 16)


@pytest.mark.parametrize("epochs", [10, 4])
def test_minimal_augmentation_area_schedule(epochs):
    for e in range(epochs):
        t = e / (epochs - 1)
        s = 1 - math.sqrt(1 - t * t)
        assert T.minimal_min_area(e, epochs) == pytest.approx(0.08 + 0.92 * s)
    assert T.minimal_min_area(0, epochs) == pytest.approx(0.08)
    assert T.minimal_min_area(epochs - 1, epochs) == pytest.approx(1.0)
    assert T.minimal_min_area(0, 1) == pytest.approx(0.08)  # one epoch: t = 0


def test_minimal_augmentation_crops_are_square_unflipped_and_follow_the_epoch():
    tf = T.train_transform(NEAREST, "minimal", epochs=5)
    assert tf.crop.ratio == (1.0, 1.0) and tf.crop.scale == pytest.approx((0.08, 1.0))
    tf.set_epoch(2)  # t = 0.5: s = 1 - sqrt(0.75)
    assert tf.crop.scale[0] == pytest.approx(0.08 + 0.92 * (1 - math.sqrt(0.75)))
    tf.set_epoch(4)  # last epoch: the whole (square) image, never flipped
    img = position_image()
    for _ in range(5):
        assert torch.allclose(tf(img), resized(img, 16), atol=1e-6)


# ------------------------------------------------ MDA: LIFT+'s minimalist augmentation, its rule stated here
# LIFT-plus utils/transforms.py (MinimalistRandomResizedCrop): s(t) of t = epoch / (E - 1), the min area
# 0.08 + 0.92 s; both bounds of the area fraction clamped to min(h, w)^2 / (h w); the area uniform between
# them, the side round(sqrt(area)); top then left uniform over the offsets where the square fits.

LIFT_PLUS_S = {
    "min": lambda t: 0.0,
    "convex": lambda t: 1 - math.sqrt(1 - t ** 2),
    "linear": lambda t: t,
    "concave": lambda t: math.sqrt(1 - (1 - t) ** 2),
    "max": lambda t: 1.0,
}


@pytest.mark.parametrize("schedule", list(LIFT_PLUS_S))
def test_mda_schedules_give_lift_plus_min_areas(schedule):
    assert list(T.MDA_SCHEDULES) == list(LIFT_PLUS_S)
    for epochs in (2, 5, 11):
        for e in range(epochs):
            t = e / (epochs - 1)
            want = 0.08 + 0.92 * LIFT_PLUS_S[schedule](t)
            assert T.minimal_min_area(e, epochs, schedule) == pytest.approx(want, abs=1e-12)
    # t = 0, 0.25, 0.5, 0.75, 1 over 5 epochs, written out
    table = {"min": [0, 0, 0, 0, 0], "max": [1, 1, 1, 1, 1], "linear": [0, 0.25, 0.5, 0.75, 1],
             "convex": [0, 1 - math.sqrt(15 / 16), 1 - math.sqrt(3 / 4), 1 - math.sqrt(7 / 16), 1],
             "concave": [0, math.sqrt(7 / 16), math.sqrt(3 / 4), math.sqrt(15 / 16), 1]}
    for e, s in enumerate(table[schedule]):
        assert T.minimal_min_area(e, 5, schedule) == pytest.approx(0.08 + 0.92 * s, abs=1e-12)
    # one epoch (LIFT+ divides by zero): t = 0, the schedule's start; epochs past the last keep t = 1
    assert T.minimal_min_area(0, 1, schedule) == pytest.approx(0.08 + 0.92 * LIFT_PLUS_S[schedule](0.0))
    assert T.minimal_min_area(7, 5, schedule) == T.minimal_min_area(4, 5, schedule)


def test_mda_unknown_schedule_is_refused_naming_the_key():
    from tailtune.errors import DataError

    with pytest.raises(DataError, match=r"train.minimal.schedule='cubic'.*convex"):
        T.minimal_min_area(0, 5, "cubic")


def lift_plus_params(height, width, lo_hi, gen):
    """LIFT+'s draw, stated independently of tailtune's code (see the comment above)."""
    area = height * width
    fit = min(height, width) ** 2 / area
    a = area * torch.empty(1).uniform_(min(lo_hi[0], fit), min(lo_hi[1], fit), generator=gen).item()
    side = int(round(math.sqrt(a)))
    top = torch.randint(0, height - side + 1, size=(1,), generator=gen).item()
    left = torch.randint(0, width - side + 1, size=(1,), generator=gen).item()
    return top, left, side, side


@pytest.mark.parametrize("hw", [(375, 500), (500, 375), (64, 64), (30, 200)])
def test_mda_crop_params_are_lift_plus_draw_for_draw(hw):
    for epoch in (0, 3, 9):
        scale = (T.minimal_min_area(epoch, 10), 1.0)
        g1, g2 = torch.Generator().manual_seed(epoch), torch.Generator().manual_seed(epoch)
        for _ in range(300):
            assert T.minimal_crop_params(*hw, scale, g1) == lift_plus_params(*hw, scale, g2)


def chi_square(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


def test_mda_last_epoch_draws_uniformly_over_all_126_offsets_of_a_500x375_image():
    """The issue's example: 10 epochs, the last (min area 1, clamped to 375^2 / (500 x 375)): the
    375-px square at every one of the 126 left offsets, uniformly (no fixed centre crop)."""
    n, h, w = 20000, 375, 500
    tf = T.train_transform(Preprocess(16, (0, 0, 0), (1, 1, 1), "bicubic"), "minimal", epochs=10)
    tf.set_epoch(9)
    assert tf.crop.scale == (1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    draws = np.array([T.minimal_crop_params(h, w, tf.crop.scale, g) for _ in range(n)])
    assert (draws[:, 2] == 375).all() and (draws[:, 3] == 375).all() and (draws[:, 0] == 0).all()
    counts = np.bincount(draws[:, 1], minlength=126)
    assert len(counts) == 126 and (counts > 0).all()
    # chi-square with 125 degrees of freedom: mean 125, sd ~15.8; 200 is ~ p = 1e-5
    assert chi_square(counts, np.full(126, n / 126)) < 200


def test_mda_crop_sizes_follow_the_uniform_area_and_positions_are_uniform():
    """Mid-curriculum: P(side = k) = the share of [lo, hi] (areas, in pixels) that rounds to k."""
    n, h, w = 20000, 375, 500
    scale = (T.minimal_min_area(1, 10, "linear"), 1.0)  # min area 0.18: sides of about 168-375 px
    lo, hi = h * w * min(scale[0], h / w), h * w * min(1.0, h / w)
    g = torch.Generator().manual_seed(1)
    draws = np.array([T.minimal_crop_params(h, w, scale, g) for _ in range(n)])
    sides = draws[:, 2]
    ks = np.arange(sides.min(), sides.max() + 1)
    p = np.array([max(0.0, min(hi, (k + 0.5) ** 2) - max(lo, (k - 0.5) ** 2)) for k in ks]) / (hi - lo)
    assert p.sum() == pytest.approx(1.0)
    observed = np.array([(sides == k).sum() for k in ks])
    # bins of at least 5 expected draws (all but the ends): a chi-square of ~ len(ks) degrees of freedom
    keep = p * n >= 5
    assert chi_square(observed[keep], n * p[keep]) < len(ks) + 6 * math.sqrt(2 * len(ks))
    assert sides.min() >= round(math.sqrt(lo)) and sides.max() <= 375
    # positions: within the image, uniform over the offsets 0..room: then (offset + U) / (room + 1),
    # U uniform on [0, 1), is uniform on [0, 1) whatever the room (a randomised probability transform)
    assert (draws[:, 0] + sides <= h).all() and (draws[:, 1] + sides <= w).all()
    jitter = np.random.default_rng(0).random((2, n))
    u = np.concatenate([(draws[:, 0] + jitter[0]) / (h - sides + 1), (draws[:, 1] + jitter[1]) / (w - sides + 1)])
    hist = np.histogram(u, bins=10, range=(0, 1))[0]
    assert chi_square(hist, np.full(10, len(u) / 10)) < 40


def test_mda_transform_crops_where_the_params_say_and_the_global_seed_draws_them():
    img = position_image()  # 40 x 40, pixel values encode the position
    tf = T.train_transform(NEAREST, "minimal", epochs=4)
    tf.set_epoch(1)
    for seed in range(5):
        torch.manual_seed(seed)
        top, left, side, _ = T.minimal_crop_params(40, 40, tf.crop.scale)
        torch.manual_seed(seed)
        out = tf(img)
        want = T.TF.resized_crop(img, top, left, side, side, [16, 16], interpolation=T.InterpolationMode.NEAREST)
        torch.testing.assert_close(out, T.TF.to_tensor(want), rtol=0, atol=1e-6)


def test_mda_schedule_option_reaches_the_transform_and_is_checked():
    from tailtune.config import load_config
    from tailtune.errors import ConfigError

    cfg = load_config(overrides=["train.augment=minimal", "train.minimal.schedule=concave"])
    tf = T.train_transform(P, cfg.train.augment, 5, cfg.train)
    tf.set_epoch(2)
    assert tf.schedule == "concave" and tf.crop.scale[0] == pytest.approx(0.08 + 0.92 * math.sqrt(0.75))
    assert T.train_transform(P, "minimal", 5).schedule == "convex"  # LIFT+'s default
    with pytest.raises(ConfigError, match=r"train.minimal.schedule='max' applies to train.augment=minimal only, not to "
                                          r"train.augment=standard"):
        load_config(overrides=["train.minimal.schedule=max"])
    with pytest.raises(ConfigError, match=r"train.minimal.schedule='cubic' is not valid"):
        load_config(overrides=["train.augment=minimal", "train.minimal.schedule=cubic"])
    # randaug's views draw the run's augmentation with its options
    from tailtune.experiment import tte_options

    opts = tte_options(cfg)
    assert T.RandAugViews(P, opts).augment.schedule == "concave"


def test_standard_augmentation_flips_sometimes():
    img = position_image()
    tf = T.train_transform(NEAREST, "standard")
    tf.transform.transforms[0].scale = (1.0, 1.0)  # whole image: only the flip varies
    tf.transform.transforms[0].ratio = (1.0, 1.0)
    torch.manual_seed(0)
    outs = [tf(img) for _ in range(12)]
    plain = resized(img, 16)
    flipped = sum(torch.allclose(o, plain.flip(-1), atol=1e-6) for o in outs)
    assert 0 < flipped < 12 and flipped + sum(torch.allclose(o, plain, atol=1e-6) for o in outs) == 12


# ------------------------------------------------ uint8 tensors (the image store) take the same views


def photo_like(h=60, w=80, seed=0) -> Image.Image:
    """Smooth gradients plus noise: resampling differences show, clipping is rare."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8))


def as_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """What StoreSplit yields: (3, H, W) uint8, a view of H x W x 3 memory."""
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


CLIP_LIKE = Preprocess(32, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), "bicubic")
TWO_LEVELS = 2 / 255 / 0.26  # PIL's and the uint8 kernel's bicubic agree to 2 of 255 levels


@pytest.mark.parametrize("mode", ["bicubic", "bilinear", "nearest", "box", "hamming", "lanczos"])
@pytest.mark.parametrize("augment", sorted(T.AUGMENTATIONS.names()))
def test_training_views_of_a_tensor_match_the_pil_views_draw_for_draw(augment, mode):
    img = photo_like()
    tf = T.train_transform(Preprocess(32, CLIP_LIKE.mean, CLIP_LIKE.std, mode), augment, epochs=3)
    for seed in range(5):
        torch.manual_seed(seed)
        from_pil = tf(img)
        torch.manual_seed(seed)
        from_tensor = tf(as_uint8_tensor(img))
        assert from_tensor.dtype == torch.float32 and from_tensor.is_contiguous()
        torch.testing.assert_close(from_tensor, from_pil, rtol=0, atol=TWO_LEVELS)
        assert (from_tensor - from_pil).abs().mean() < 0.05 * TWO_LEVELS  # nearly all pixels equal


@pytest.mark.parametrize("mode", ["bicubic", "nearest"])
@pytest.mark.parametrize("tte", sorted(TTE_MODES.names()))
def test_evaluation_views_of_a_tensor_match_the_pil_views(tte, mode):
    img = photo_like()
    view = eval_transform(Preprocess(32, CLIP_LIKE.mean, CLIP_LIKE.std, mode), tte, TTEOptions(randaug_views=3))
    torch.testing.assert_close(view(as_uint8_tensor(img)), view(img), rtol=0, atol=TWO_LEVELS)


def test_to_input_normalises_like_to_tensor_and_normalize():
    img = photo_like()
    finish = T.ToInput(CLIP_LIKE.mean, CLIP_LIKE.std)
    torch.testing.assert_close(finish(as_uint8_tensor(img)), finish(img), rtol=0, atol=1e-5)
    from tailtune.errors import DataError

    with pytest.raises(DataError, match=r"\(3, H, W\) uint8 RGB, got shape \(1, 60, 80\)"):
        finish(as_uint8_tensor(img)[:1])


def _noise_image(w=48, h=40) -> Image.Image:
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_interpolation_key_sets_the_filter_of_every_view():
    bicubic = Preprocess(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    bilinear = T.with_interpolation(bicubic, "bilinear")
    assert T.with_interpolation(bicubic, "auto") is bicubic and bilinear.interpolation == "bilinear"
    img = _noise_image()
    # the test view equals torchvision's own Resize(bilinear) + CenterCrop, and differs from bicubic
    want = T.T.Compose([T.T.Resize(18, interpolation=T.InterpolationMode.BILINEAR), T.T.CenterCrop(16),
                        T.T.ToTensor(), T.T.Normalize((0.5,) * 3, (0.5,) * 3)])(img)
    torch.testing.assert_close(T.test_transform(bilinear)(img), want, rtol=0, atol=1e-6)
    assert (T.test_transform(bicubic)(img) - want).abs().max() > 0.05
    five_bl, five_bc = eval_transform(bilinear, "fivecrop", 4)(img), eval_transform(bicubic, "fivecrop", 4)(img)
    assert (five_bl - five_bc).abs().max() > 0.05
    # the reference's five crops (trainer.py:118-123): torchvision's Resize with its default filter
    ref = T.T.Compose([T.T.Resize(16 + 4), T.T.FiveCrop(16)])(img)
    want = torch.stack([T.T.Normalize((0.5,) * 3, (0.5,) * 3)(T.T.ToTensor()(c)) for c in ref])
    torch.testing.assert_close(five_bl, want, rtol=0, atol=1e-6)
    for tte in ("fivecrop", "tencrop"):
        assert eval_transform(bilinear, tte, 4).resize.interpolation == T.InterpolationMode.BILINEAR
    for augment in ("standard", "minimal"):
        tf = T.train_transform(bilinear, augment)
        crop = tf.transform.transforms[0] if augment == "standard" else tf.crop
        assert crop.interpolation == T.InterpolationMode.BILINEAR
        torch.manual_seed(0)
        a = tf(img)
        torch.manual_seed(0)
        b = T.train_transform(bicubic, augment)(img)
        assert (a - b).abs().max() > 0.05  # the same crop, resampled by another filter


def test_interpolation_choices_are_torchvision_filters_and_the_config_checks_them():
    from tailtune.config import DataConfig
    from tailtune.errors import ConfigError, DataError

    assert T.INTERPOLATIONS.in_order()[0] == "auto" and T.INTERPOLATIONS.get("auto") is None
    for mode in T.INTERPOLATIONS.in_order()[1:]:
        assert T.INTERPOLATIONS.get(mode) is T.InterpolationMode(mode)  # every named filter is torchvision's
        assert DataConfig(interpolation=mode).interpolation == mode
    with pytest.raises(ConfigError, match=r"data.interpolation='cubic'.*bilinear"):
        DataConfig(interpolation="cubic")
    with pytest.raises(DataError, match=r"data.interpolation='cubic'"):
        T.with_interpolation(P, "cubic")
