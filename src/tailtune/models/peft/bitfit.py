"""BitFit: only the bias terms of the tuned scope train."""

from __future__ import annotations

from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, tuned_scope, unfreeze


@PEFT_METHODS.register("bitfit")
class BitFit(PeftMethod):
    """Bias terms only (on EfficientNet these are BatchNorm biases: its convolutions have none)."""

    def apply(self, backbone, cfg, num_classes):
        for m in tuned_scope(backbone, cfg):
            unfreeze(p for n, p in m.named_parameters() if n.endswith("bias"))
