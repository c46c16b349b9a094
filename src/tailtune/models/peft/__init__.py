"""PEFT methods: one module each, registered in :data:`PEFT_METHODS`."""

from . import adapter, adaptformer, lora, masked, simple, ssf, vpt  # noqa: F401  (registration)
from .base import PEFT_METHODS, apply_peft, bottleneck, check_peft, method_names, trains_bn_stats

__all__ = ["PEFT_METHODS", "apply_peft", "bottleneck", "check_peft", "method_names", "trains_bn_stats"]
