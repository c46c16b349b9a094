"""Backbone + classifier: the model that trains, saves and predicts."""

from __future__ import annotations

import torch
from torch import nn

from tailtune.models.text import text_named_parameters

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class TailModel(nn.Module):
    """Frozen backbone (with PEFT modules) -> features -> classifier."""

    def __init__(self, backbone: nn.Module, head: nn.Module, bn_train: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.bn_train = bn_train
        # Frozen tensors saved all the same: a decoupled run's (train.decoupled) trained backbone,
        # so that its checkpoint holds every tensor its source run trained (runs/decoupled.py).
        self.kept_frozen: set[str] = set()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and not self.bn_train:
            # Frozen BatchNorm statistics: train-mode BN would drift the frozen features.
            for m in self.backbone.modules():
                if isinstance(m, _BN):
                    m.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors that make a trained model: what training changes (PEFT modules, tuned
        parameters, head, trained BatchNorm statistics) and what a PEFT module is defined by
        beyond its parameters (``saved_buffers``, e.g. the entries masked tuning trains)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        if self.bn_train:  # running statistics of BatchNorm layers that train
            names |= {n for n, _ in self.named_buffers() if "running_" in n or "num_batches" in n}
        names |= self.saved_buffer_names() | getattr(self, "kept_frozen", set())
        return {n: t.detach() for n, t in self.state_dict().items() if n in names}

    def saved_buffer_names(self) -> set[str]:
        """State names of the buffers PEFT modules are defined by (their ``saved_buffers``)."""
        return {f"{prefix}.{b}" if prefix else b
                for prefix, module in self.named_modules() for b in getattr(module, "saved_buffers", ())}

    def param_counts(self) -> dict[str, int]:
        """Trainable parameters of the backbone (image side), of CLIP's text side (text-side PEFT,
        CoOp's context: models/text.py) and of the head, and the image encoder's size."""
        text_names = {n for n, _ in text_named_parameters(self.backbone)}
        backbone = text = 0
        for n, p in self.backbone.named_parameters():
            if p.requires_grad:
                if n in text_names:
                    text += p.numel()
                else:
                    backbone += p.numel()
        head = sum(p.numel() for p in self.head.parameters() if p.requires_grad)
        total = self.backbone.encoder_param_count()
        return {"trainable_backbone": backbone, "trainable_head": head, "trainable_text": text,
                "trainable_total": backbone + text + head, "backbone_total": total,
                "trainable_backbone_share": backbone / max(total, 1)}
