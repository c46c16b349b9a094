"""PEFT methods: one module each, registered in :data:`PEFT_METHODS`."""

from tailtune.models.peft import (  # noqa: F401  (registration)
    adapter,
    adaptformer,
    aft,
    bitfit,
    bn_tuning,
    clip_adapter,
    full,
    ln_tuning,
    lora,
    masked,
    none,
    proj_tuning,
    ssf,
    ssf_pool,
    vpt,
)
from tailtune.models.peft.base import (
    PEFT_METHODS,
    PeftModule,
    apply_peft,
    bottleneck,
    check_peft,
    method_names,
    peft_off,
    trains_bn_stats,
)

__all__ = ["PEFT_METHODS", "PeftModule", "apply_peft", "bottleneck", "check_peft", "method_names", "peft_off",
           "trains_bn_stats"]
