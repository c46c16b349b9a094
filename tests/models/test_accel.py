"""train.compile_mode: validated, and handed to torch.compile (mocked: compiling takes minutes on CPU)."""

from __future__ import annotations

import pytest
import torch

from tailtune.config import load_config
from tailtune.config.schema import TrainConfig
from tailtune.errors import ConfigError
from tailtune.models.accel import apply_model_options


def test_compile_mode_is_checked(tiny_overrides):
    with pytest.raises(ConfigError, match="train.compile_mode='fast' is not valid; choose one of default"):
        load_config("lift", overrides=[*tiny_overrides, "train.compile_mode=fast"])


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_the_mode_reaches_torch_compile(monkeypatch, mode):
    model = torch.nn.Linear(2, 2)
    got = {}
    monkeypatch.setattr(model, "compile", lambda **kw: got.update(kw), raising=False)
    notes = apply_model_options(model, None, TrainConfig(compile=True, compile_mode=mode), torch.device("cpu"), None)
    assert got == {"mode": mode} and any(f"mode {mode}" in n for n in notes)
