import numpy as np
import torch
from PIL import Image

from tailtune.data import transforms as T
from tailtune.data.transforms import FiveCropStack, Preprocess

P = Preprocess(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear")


def test_five_crops_are_corners_and_center_of_resized_image():
    # A 40x40 image whose pixel value encodes its position; resize to 16 + 4 = 20 is exact 2x.
    yy, xx = np.mgrid[0:40, 0:40]
    arr = np.stack([xx * 6, yy * 6, np.zeros_like(xx)], -1).astype(np.uint8)
    img = Image.fromarray(arr)
    out = FiveCropStack(Preprocess(16, (0, 0, 0), (1, 1, 1), "nearest"), expand=4)(img)
    assert out.shape == (5, 3, 16, 16)
    resized = torch.from_numpy(np.array(img.resize((20, 20), Image.NEAREST))).permute(2, 0, 1).float() / 255
    want = [resized[:, :16, :16], resized[:, :16, 4:], resized[:, 4:, :16], resized[:, 4:, 4:],
            resized[:, 2:18, 2:18]]
    for got, w in zip(out, want):
        assert torch.allclose(got, w, atol=1e-6)


def test_test_view_resizes_to_8_over_7_then_center_crops():
    img = Image.new("RGB", (50, 30))
    assert T.test_transform(P)(img).shape == (3, 16, 16)
    assert T.test_transform(Preprocess(224, (0, 0, 0), (1, 1, 1))).transforms[0].size == 256


def test_train_view_shape():
    assert T.train_transform(P)(Image.new("RGB", (28, 28))).shape == (3, 16, 16)
