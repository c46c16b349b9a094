"""The SGD step implementation: fused on CUDA (mocked device), the plain loop on CPU, same numbers."""

from __future__ import annotations

import pytest
import torch

from tailtune.training.optim import keep_flags, make_sgd, sgd_flags

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_fused_on_cuda_loop_on_cpu():
    assert sgd_flags(CUDA, [torch.float32, torch.bfloat16]) == {"fused": True, "foreach": False}
    assert sgd_flags(torch.device("cuda", 1), [torch.float16]) == {"fused": True, "foreach": False}
    assert sgd_flags(CPU, [torch.float32]) == {"fused": False, "foreach": False}
    # a dtype the fused kernel does not take: the multi-tensor (foreach) kernels instead
    assert sgd_flags(CUDA, [torch.float32, torch.complex64]) == {"fused": False, "foreach": True}


def _step(**flags):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(7, 5, generator=g, requires_grad=True), torch.randn(5, generator=g, requires_grad=True)]
    groups = [{"params": params[:1], "lr": 0.1}, {"params": params[1:], "lr": 0.01}]
    opt = torch.optim.SGD(groups, momentum=0.9, weight_decay=5e-4, **flags)
    for _ in range(3):  # the momentum buffers take part from the second step
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("flags", [{"foreach": True}, {"fused": True}], ids=["foreach", "fused"])
def test_other_implementations_give_the_loops_step(flags):
    """foreach is bit-identical to the loop; the fused kernel (what CUDA runs; PyTorch has it on CPU
    too) may round differently in the last bit."""
    plain = _step(foreach=False)
    other = _step(**flags)
    for a, b in zip(plain, other):
        if flags.get("foreach"):
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_make_sgd_and_a_resumed_state_keep_this_machines_flags():
    w = torch.nn.Parameter(torch.ones(3))
    opt = make_sgd([{"params": [w], "lr": 0.1}], CPU, lr=0.1, momentum=0.9)
    assert opt.param_groups[0]["fused"] is False and opt.param_groups[0]["foreach"] is False
    saved = opt.state_dict()
    saved["param_groups"][0]["foreach"] = True  # as if written on another machine
    opt.load_state_dict(saved)
    keep_flags(opt, CPU)
    assert opt.param_groups[0]["foreach"] is False
