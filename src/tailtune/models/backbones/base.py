"""The frozen-backbone interface and its registry of providers.

A :class:`Backbone` maps normalised images to features (the space the classifier reads),
knows its preprocessing, and exposes its image encoder so PEFT methods can find their
targets by module-name pattern. Backbones with a text tower also map class prompts
into the image feature space. Each provider (open_clip, timm, packaged) is one module of
this package that registers itself in :data:`PROVIDERS`; importing the package registers them all.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from tailtune.config import ModelConfig
from tailtune.data.transforms import Preprocess
from tailtune.errors import ConfigError
from tailtune.models.attention import fast_attention
from tailtune.models.casts import cast_frozen_once
from tailtune.registry import Registry

PROVIDERS: Registry = Registry("model provider")

# Transformer blocks of open_clip (`transformer.resblocks.N`) and timm (`blocks.N`) ViTs.
BLOCK_PATTERN = re.compile(r"(^|\.)(resblocks|blocks)\.\d+$")


class Backbone(nn.Module):
    """A frozen image encoder; subclasses set the attributes below in ``__init__``."""

    kind: str  # "vit" or "cnn"
    feature_dim: int
    preprocess: Preprocess
    info: dict  # provider, name, pretrained: identifies the weights in checkpoints
    has_text: bool = False
    # Path inside the encoder of the layer whose output is the features (a CNN's global pooling:
    # CLIP ResNets' attention pooling, timm's global_pool); None where there is none to name.
    pool_path: str | None = None
    notes: tuple[str, ...] | list[str] = ()  # choices made while building it, for the run's log

    @property
    def encoder(self) -> nn.Module:
        """The image encoder whose parameters count as 'the backbone' (PEFT targets)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Transformer blocks of the encoder in depth order, found by name pattern."""
        return [(n, m) for n, m in self.encoder.named_modules() if BLOCK_PATTERN.search(n)]

    def pooling(self) -> tuple[str, nn.Module]:
        """(path, layer) of the global pooling inside the encoder, whose output the classifier reads."""
        if self.pool_path is None:
            raise ConfigError(f"{self.info['provider']} model {self.info['name']!r} names no global pooling layer "
                              "(CLIP ResNets' attnpool, timm's global_pool), which this PEFT method wraps.")
        return self.pool_path, self.encoder.get_submodule(self.pool_path)

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Normalised text embeddings in the model's joint image-text space (zero-shot)."""
        raise ConfigError(f"{self.info['provider']} model {self.info['name']!r} has no text tower: "
                          "text initialisation and zero-shot need a CLIP model; use head.init=class_mean.")

    def text_to_features(self, text: torch.Tensor) -> torch.Tensor:
        """Joint-space text embeddings mapped into the image feature space the classifier reads."""
        raise ConfigError(f"{self.info['provider']} model {self.info['name']!r} has no text tower.")

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Each prompt's text embedding in the image feature space (normalised)."""
        return self.text_to_features(self.text_embeddings(prompts))

    def zeroshot_logits(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"{self.info['name']!r} has no text tower; zero-shot needs a CLIP model.")

    def encoder_param_count(self) -> int:
        return sum(p.numel() for p in self.encoder.parameters())


def build_backbone(cfg: ModelConfig) -> Backbone:
    """Create the backbone described by ``cfg`` with every parameter frozen.

    Two changes that leave every result and state-dict key as it was make the frozen path
    fast in low precision: self-attention that never hands a strided view to a matmul
    (models/attention.py) and frozen weights cast to the autocast dtype once per change
    rather than on every call (models/casts.py).
    """
    backbone = PROVIDERS.get(cfg.provider)(cfg)
    fast_attention(backbone)
    cast_frozen_once(backbone)
    backbone.requires_grad_(False)
    backbone.eval()
    return backbone


def is_local_file(pretrained: str) -> bool:
    return any(pretrained.endswith(ext) for ext in (".pt", ".pth", ".bin", ".safetensors")) or "/" in pretrained


def check_local(pretrained: str) -> None:
    if is_local_file(pretrained) and not Path(pretrained).exists():
        raise ConfigError(f"model.pretrained={pretrained!r} looks like a file path but does not exist.")


def download_failed(cfg: ModelConfig, e: Exception, hint: str = "") -> ConfigError:
    """The error for pretrained weights that could not be fetched: what failed and how to work offline."""
    detail = " ".join(str(e).split())
    return ConfigError(f"could not get the pretrained weights {cfg.pretrained!r} of {cfg.provider} model {cfg.name!r} "
                       f"({type(e).__name__}: {detail[:300]}). Without internet: download them on a machine with "
                       "access and pass the file as model.pretrained=/path/to/weights (or point model.cache_dir at "
                       "a cache holding them); model.pretrained=none builds the model with random weights." + hint)
