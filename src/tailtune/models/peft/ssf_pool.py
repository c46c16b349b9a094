"""SSF on a CNN's pooled features: one learnable per-channel scale and shift after the global pooling.

This is where both references put SSF on a ResNet, not after each convolution: LIFT's
``ssf_attn`` adds one ``SSF(feat_dim)`` applied to the output of a CLIP ResNet's attention
pooling (LIFT models/peft_rn.py: RN_Tuner and Peft_RN.forward), and LIFT+'s ``v.ssf`` on a
ResNet adds one ``SSF(embed_dim)`` applied over dim 1 of the global pooling's output, the
attention pooling of a CLIP ResNet or timm's ``global_pool`` (LIFT-plus models/models.py:
PEFT_RN.add_ssf and PEFT_RN.forward). The scale starts at N(1, 0.02) and the shift at
N(0, 0.02), scale drawn first (LIFT models/peft_modules.py:SSF), so a fresh model is close
to, not equal to, the frozen one. For CLIP RN50 that is 2 x 1024 = 2,048 parameters.
"""

from __future__ import annotations

import torch

from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, device_of
from tailtune.models.peft.ssf import ScaleShift
from tailtune.models.peft.targets import set_part


class ChannelScaleShift(ScaleShift):
    """pool(x) * scale + shift over dim 1 (the channels) of the pooling's output, (B, C) or (B, C, H, W)."""

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = self.base(*args, **kwargs)
        if not self.active:
            return out
        shape = (1, -1) + (1,) * (out.dim() - 2)
        return out * self.scale.view(shape) + self.shift.view(shape)


@PEFT_METHODS.register("ssf_pool")
class SSFPool(PeftMethod):
    """One scale and shift on the pooled features of a CNN (LIFT's ssf_attn on CLIP ResNets, LIFT+'s ssf on ResNets)."""

    kinds = ("cnn",)
    identity_at_init = False  # scale and shift are drawn around (1, 0), as the references do
    stage = 3  # an output wrapper, as the ViT's SSF

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        backbone.pooling()  # raises naming the backbone if it has no pooling layer to wrap

    def apply(self, backbone, cfg, num_classes):
        path, pool = backbone.pooling()
        set_part(backbone.encoder, path, ChannelScaleShift(pool, backbone.feature_dim).to(device_of(backbone.encoder)))
