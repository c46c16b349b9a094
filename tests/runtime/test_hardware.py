"""The CUDA side of train.precision=auto with the GPU's capability mocked: bf16 where the GPU has it
natively (Ampere, compute capability 8.0+), fp16 with a grad scaler where it does not."""

from __future__ import annotations

import pytest
import torch

from tailtune.runtime.hardware import auto_precision, cuda_bf16_native

CUDA = torch.device("cuda")


@pytest.mark.parametrize(("native", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_follows_the_gpus_bf16(monkeypatch, native, dtype):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation) or native)
    assert cuda_bf16_native(CUDA) is native
    assert asked == [False]  # emulated bf16 (pre-Ampere) does not count
    for kind in ("vit", "cnn"):  # on a GPU CNNs take autocast too
        assert auto_precision(CUDA, kind) == dtype
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    assert scaler.is_enabled() == (dtype == torch.float16)


def test_no_cuda_no_bf16_claim(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not cuda_bf16_native(CUDA) and not cuda_bf16_native(torch.device("cpu"))
