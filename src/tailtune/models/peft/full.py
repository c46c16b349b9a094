"""Full fine-tuning: every parameter of the tuned scope trains."""

from __future__ import annotations

from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, tuned_scope, unfreeze


@PEFT_METHODS.register("full")
class Full(PeftMethod):
    """Full fine-tuning: every transformer block (ViT) or every encoder parameter (CNN)."""

    trains_bn_stats = True

    def apply(self, backbone, cfg, num_classes):
        for m in tuned_scope(backbone, cfg):
            unfreeze(m.parameters())
