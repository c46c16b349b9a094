"""The fast path: precision choice, fused attention, no extra copies, compile, checkpointing, --dry-run."""

from __future__ import annotations

import math
import os
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import tailtune.runtime.hardware as hw
from conftest import TINY_CLIP
from tailtune.cli.app import main
from tailtune.config import load_config
from tailtune.experiment import build
from tailtune.losses import build_loss
from tailtune.runtime.precision import resolve_precision
from tailtune.training.trainer import Trainer

TINY_TIMM = [o for o in TINY_CLIP if not o.startswith("model.")] + [
    "model.provider=timm", "model.name=vit_tiny_patch16_224", "model.pretrained=none", "model.resolution=32",
    "head.init=class_mean"]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _exp(tmp_path, *extra, base=TINY_CLIP):
    return build(load_config("lift", overrides=[*base, f"output_dir={tmp_path}", *extra]))


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_hardware(monkeypatch, native):
    monkeypatch.setattr(hw, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr(hw, "cuda_bf16_native", lambda device: native)
    assert resolve_precision("auto", CPU, "vit") == (torch.bfloat16 if native else None)
    assert resolve_precision("auto", CPU, "cnn") is None  # bf16 depthwise convolutions are slow on CPU
    assert resolve_precision("auto", CUDA, "vit") == (torch.bfloat16 if native else torch.float16)
    assert resolve_precision("fp32", CPU, "vit") is None and resolve_precision("bf16", CPU, "cnn") == torch.bfloat16
    note = hw.precision_note(torch.bfloat16, CPU)
    assert (note is None) == native


def test_grad_scaler_only_for_fp16(tmp_path):
    exp = _exp(tmp_path, "train.precision=fp32")
    loss = build_loss(exp.cfg.loss, exp.data.train_counts)
    for dtype, scaled in ((torch.float16, True), (torch.bfloat16, False), (None, False)):
        trainer = Trainer(exp.model, loss, exp.data.train, exp.cfg.train, CPU, dtype, 0, quiet=True)
        assert trainer.scaler.is_enabled() == scaled


def test_bf16_training_keeps_parameters_and_optimizer_state_fp32(tmp_path):
    from tailtune.data.base import Transformed
    from tailtune.data.transforms import train_transform

    exp = _exp(tmp_path, "train.precision=bf16", "train.batch_size=32")
    loss = build_loss(exp.cfg.loss, exp.data.train_counts)
    ds = Transformed(exp.data.train, train_transform(exp.backbone.preprocess))
    trainer = Trainer(exp.model, loss, ds, exp.cfg.train, CPU, exp.dtype, 0, quiet=True, log=lambda _: None)
    assert exp.dtype == torch.bfloat16
    trainer.train_epoch()
    trained = [p for p in exp.model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    bufs = [s["momentum_buffer"] for s in trainer.optimizer.state.values()]
    assert len(bufs) == len(trained) and all(b.dtype == torch.float32 for b in bufs)


TINY_CNN = [o for o in TINY_CLIP if not o.startswith("model.")] + [
    "model.provider=timm", "model.name=test_resnet", "model.pretrained=none", "model.resolution=32",
    "head.init=class_mean"]


def test_bf16_bn_tuning_keeps_the_batchnorm_affine_fp32_and_its_statistics_frozen(tmp_path):
    """A CNN under CPU bf16 autocast with bn_tuning: the convolutions run in bf16, the trained BatchNorm
    weights and biases, their gradients and the optimizer state stay fp32, the running statistics stay."""
    from tailtune.data.base import Transformed
    from tailtune.data.transforms import train_transform

    exp = _exp(tmp_path, "peft.method=bn_tuning", "train.precision=bf16", "train.batch_size=32", base=TINY_CNN)
    assert exp.dtype == torch.bfloat16 and exp.backbone.kind == "cnn"
    bns = [m for m in exp.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    trained = [p for p in exp.model.parameters() if p.requires_grad]
    affine = {id(p) for m in bns for p in (m.weight, m.bias)}
    assert bns and affine <= {id(p) for p in trained}
    stats = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]

    seen: list[torch.dtype] = []
    hook = bns[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    exp.model.train()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", torch.bfloat16):
        logits = exp.model(x)
    logits.float().sum().backward()
    hook.remove()
    assert seen == [torch.bfloat16]  # the convolution before it ran in bf16
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32 for p in trained)
    assert any(p.grad.abs().sum() > 0 for p in trained if id(p) in affine)

    loss = build_loss(exp.cfg.loss, exp.data.train_counts)
    ds = Transformed(exp.data.train, train_transform(exp.backbone.preprocess))
    trainer = Trainer(exp.model, loss, ds, exp.cfg.train, CPU, exp.dtype, 0, quiet=True, log=lambda _: None)
    trainer.train_epoch()
    assert all(p.dtype == torch.float32 for p in trained)
    bufs = [s["momentum_buffer"] for s in trainer.optimizer.state.values()]
    assert len(bufs) == len(trained) and all(b.dtype == torch.float32 for b in bufs)
    for m, (mean, var) in zip(bns, stats):
        assert m.running_mean.dtype == torch.float32 and torch.equal(m.running_mean, mean)
        assert torch.equal(m.running_var, var)


def _ops(fn) -> dict[str, int]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages()}


@pytest.mark.parametrize("base", [TINY_CLIP, TINY_TIMM], ids=["open_clip", "timm"])
def test_attention_runs_fused_sdpa(tmp_path, base):
    exp = _exp(tmp_path, "peft.method=adaptformer", base=base)
    exp.model.train()
    x = torch.randn(2, 3, 32, 32)
    ops = _ops(lambda: exp.model(x).sum().backward())
    blocks = len(exp.backbone.blocks())
    assert ops.get("aten::scaled_dot_product_attention") == blocks
    assert "aten::softmax" not in ops and "aten::_softmax" not in ops  # no unfused attention


COPIES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::permute", "aten::transpose")
LINEAR_PARTS = ("aten::addmm", "aten::t")


def _moves(fn) -> dict[str, int]:
    """Copy / permute ops run by ``fn``, apart from what every Linear does: the weight's transpose
    view (aten::t) and addmm writing the bias into its output."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for e in prof.events():
        if e.name in COPIES and not (e.cpu_parent is not None and e.cpu_parent.name in LINEAR_PARTS):
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


@pytest.mark.parametrize("base", [TINY_CLIP, TINY_TIMM], ids=["open_clip", "timm"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_adaptformer_adds_no_copies_or_permutes_to_a_block(tmp_path, base, train):
    def block_ops(method):
        exp = _exp(tmp_path, f"peft.method={method}", base=base)
        exp.model.train(train)
        block = exp.backbone.blocks()[0][1]
        x = torch.randn(2, 5, exp.backbone.feature_dim)
        return _ops(lambda: block(x)), _moves(lambda: block(x))

    (plain, plain_moves), (adapted, adapted_moves) = block_ops("none"), block_ops("adaptformer")
    assert adapted.get("aten::linear", 0) == plain.get("aten::linear", 0) + 2  # the adapter did run
    assert adapted_moves == plain_moves


def test_grad_checkpointing_gives_the_same_gradients(tmp_path):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def grads(*extra):
        exp = _exp(tmp_path, "peft.method=adaptformer", "train.precision=fp32", *extra)
        exp.model.train()
        exp.model(x).square().sum().backward()
        flag = exp.backbone.encoder.transformer.grad_checkpointing
        return flag, {n: p.grad.clone() for n, p in exp.model.named_parameters() if p.requires_grad}

    (off, plain), (on, checkpointed) = grads(), grads("train.grad_checkpointing=true")
    assert not off and on
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_grad_checkpointing_on_a_model_without_it_is_refused(tmp_path):
    from tailtune.errors import ConfigError
    from tailtune.models.accel import set_grad_checkpointing

    class NoCheckpointing:
        encoder = torch.nn.Linear(2, 2)
        info = {"name": "toy"}

    with pytest.raises(ConfigError, match="has no set_grad_checkpointing"):
        set_grad_checkpointing(NoCheckpointing())


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TAILTUNE_SLOW_TESTS"),
                    reason="torch.compile takes ~40 s on 2 CPU cores; run with TAILTUNE_SLOW_TESTS=1")
def test_compile_keeps_names_and_outputs(tmp_path):
    """train.compile: same parameter names (checkpoints, optimizer groups) and the same logits."""
    pytest.importorskip("torch._inductor")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    eager = _exp(tmp_path, "train.precision=fp32")
    compiled = _exp(tmp_path, "train.precision=fp32", "train.compile=true")
    assert [n for n, _ in compiled.model.named_parameters()] == [n for n, _ in eager.model.named_parameters()]
    eager.model.eval()
    compiled.model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = compiled.model(x)
    assert torch.allclose(out, eager.model(x).detach(), atol=1e-4)
    assert time.perf_counter() - t0 < 300


def test_dry_run_prints_steps_parameters_and_time(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "-r", "lift", *TINY_CLIP, f"output_dir={runs}", "train.epochs=3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    # 6 classes, 24 images at the head, imbalance 8: n_i = int(24 * 8 ** (-i / 5))
    n = sum(int(24 * 8 ** (-i / 5)) for i in range(6))
    steps = math.ceil(n / 16)
    assert f"training images: {n}" in out
    assert f"steps: {steps} per epoch (batch 16, micro-batch 16) x 3 epochs = {3 * steps} optimizer steps" in out
    exp = _exp(tmp_path, "peft.method=adaptformer")
    backbone = sum(p.numel() for p in exp.backbone.parameters() if p.requires_grad)
    assert f"trainable parameters: {backbone:,} backbone" in out and f"+ {6 * 64:,} head" in out
    assert "estimated time per epoch: 0:00:" in out
    assert not runs.exists()  # nothing written
