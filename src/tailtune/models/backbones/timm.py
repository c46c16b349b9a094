"""Any timm model as a backbone (provider ``timm``): the pooled pre-classifier features."""

from __future__ import annotations

import difflib

import torch
from torch import nn

from tailtune.config import ModelConfig
from tailtune.data.transforms import Preprocess
from tailtune.errors import ConfigError
from tailtune.models.backbones.base import (
    BLOCK_PATTERN,
    PROVIDERS,
    Backbone,
    check_local,
    download_failed,
    is_local_file,
)

# timm is imported where it is used: it takes seconds to import, and a run needs only its own provider.


class TimmBackbone(Backbone):
    """Any timm model; features are the pooled pre-classifier output (the ImageNet head is dropped)."""

    def __init__(self, cfg: ModelConfig, model: nn.Module | None = None, pretrained_label: str | None = None):
        super().__init__()
        import timm

        if model is None:
            if not timm.list_models(cfg.name) and not cfg.name.startswith("hf-hub:"):
                close = difflib.get_close_matches(cfg.name, timm.list_models(), n=5, cutoff=0.6)
                raise ConfigError(f"unknown timm model {cfg.name!r}. Close matches: {', '.join(close) or 'none'}.")
            pretrained = cfg.pretrained not in ("", "none")
            kwargs: dict = {}
            if pretrained and is_local_file(cfg.pretrained):
                check_local(cfg.pretrained)
                kwargs["pretrained_cfg_overlay"] = {"file": cfg.pretrained}
            if cfg.resolution and "vit" in cfg.name:
                kwargs["img_size"] = cfg.resolution
            try:
                model = timm.create_model(cfg.name, pretrained=pretrained, num_classes=0,
                                          cache_dir=cfg.cache_dir, **kwargs)
            except (OSError, RuntimeError) as e:  # hub and connection errors
                if not pretrained or is_local_file(cfg.pretrained):
                    raise
                raise download_failed(cfg, e) from None
        self.net = model
        self.kind = "vit" if any(BLOCK_PATTERN.search(n) for n, _ in model.named_modules()) and \
            hasattr(model, "patch_embed") else "cnn"
        dc = timm.data.resolve_model_data_config(model)
        res = cfg.resolution or dc["input_size"][-1]
        self.preprocess = Preprocess(int(res), tuple(dc["mean"]), tuple(dc["std"]), dc.get("interpolation", "bicubic"))
        self.feature_dim = model.num_features
        if self.kind == "cnn" and isinstance(getattr(model, "global_pool", None), nn.Module):
            self.pool_path = "global_pool"  # timm's pooling (flattened once the classifier is dropped)
        self.info = {"provider": cfg.provider, "name": cfg.name, "pretrained": pretrained_label or cfg.pretrained}

    @property
    def encoder(self) -> nn.Module:
        return self.net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


@PROVIDERS.register("timm", help="timm models: model.name=vit_base_patch16_224 model.pretrained=true|none|FILE")
def _timm(cfg: ModelConfig) -> Backbone:
    return TimmBackbone(cfg)
