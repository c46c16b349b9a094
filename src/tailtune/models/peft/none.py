"""Classifier only: no PEFT module, the backbone stays frozen (``peft.method=none``)."""

from __future__ import annotations

from tailtune.models.peft.base import PEFT_METHODS, PeftMethod


@PEFT_METHODS.register("none")
class ClassifierOnly(PeftMethod):
    """Classifier only: the backbone stays frozen."""

    def apply(self, backbone, cfg, num_classes):
        pass
