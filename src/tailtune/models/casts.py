"""Cast a frozen weight to the autocast dtype once, not on every call.

Autocast keeps the low-precision copy of a weight for the rest of its context only for leaf
tensors that require grad; a frozen backbone's weights (``requires_grad=False``) are cast
again by every matmul of every step and every evaluation batch (ViT-B/16: 86 M parameters
read in fp32 and written in bf16 each time; about 7% of a bf16 AdaptFormer step and 10% of
a bf16 evaluation batch on an AMX Xeon, benchmarks/RESULTS.md). :func:`cast_once` keeps that
copy on the weight itself, keyed by the weight's storage, version counter, dtype and device,
so an in-place change (a checkpoint loaded, LoRA merged, the model moved) makes a new one.
It is the copy autocast would make, so the results are the same bit for bit.

:class:`CastOnceLinear` is ``nn.Linear`` reading its weight and bias through it: a class
swap (:func:`cast_frozen_once`) that keeps every attribute, hook and state-dict key, so
PEFT methods, checkpoints and exports see an ``nn.Linear`` as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

_ATTR = "_tailtune_cast"


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def cast_once(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` as autocast will use it: a cached cast for an fp32 tensor under autocast that no
    gradient will reach (frozen, or any tensor while gradients are off: evaluation), ``t``
    itself otherwise (a trainable tensor in a training step is cached by autocast for the
    step; fp32 runs need no cast). An optimizer step changes a weight in place, so the next
    evaluation makes a new copy."""
    if (t is None or t.dtype != torch.float32 or (t.requires_grad and torch.is_grad_enabled())
            or torch.compiler.is_compiling()):
        return t
    dtype = _autocast_dtype(t.device.type)
    if dtype is None or dtype == torch.float32:
        return t
    key = (t.data_ptr(), t._version, dtype, t.device)
    kept = getattr(t, _ATTR, None)
    if kept is not None and kept[0] == key:
        return kept[1]
    # Made outside inference mode: an inference tensor could not be saved for a later backward.
    with torch.inference_mode(False), torch.no_grad():
        cast = t.detach().to(dtype)
    setattr(t, _ATTR, (key, cast))
    return cast


class CastOnceLinear(nn.Linear):
    """``nn.Linear`` whose weight and bias are cast once per change where no gradient reaches
    them (see the module and :func:`cast_once`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, cast_once(self.weight), cast_once(self.bias))


def cast_frozen_once(model: nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`CastOnceLinear` (in place,
    idempotent); returns how many. Trainable layers behave exactly as before."""
    swapped = 0
    for module in model.modules():
        if type(module) in (nn.Linear, NonDynamicallyQuantizableLinear):  # the latter: attention's out_proj
            module.__class__ = CastOnceLinear
            swapped += 1
    return swapped
