"""Training losses behind one registry. Each takes (logits, targets) -> scalar."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import LossConfig
from .registry import Registry

LOSSES: Registry = Registry("loss")


def log_prior(class_counts) -> torch.Tensor:
    counts = torch.as_tensor(np.asarray(class_counts), dtype=torch.float32)
    return torch.log(counts / counts.sum())


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Plain cross-entropy."""

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), targets)


@LOSSES.register("la")
class LogitAdjusted(nn.Module):
    """Logit-adjusted cross-entropy: CE(z + tau * log prior) (Menon et al., 2021)."""

    def __init__(self, cfg: LossConfig, class_counts):
        super().__init__()
        self.register_buffer("adjust", cfg.tau * log_prior(class_counts), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.adjust, targets)


def build_loss(cfg: LossConfig, class_counts) -> nn.Module:
    return LOSSES.get(cfg.name)(cfg, class_counts)
