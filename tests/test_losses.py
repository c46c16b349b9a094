import math

import torch

from tailtune.config import LossConfig
from tailtune.losses import LOSSES, build_loss


def test_la_loss_against_hand_computed_value():
    counts = [6, 3, 1]
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    target = torch.tensor([2])
    # z + tau * log prior with prior = (0.6, 0.3, 0.1), tau = 1
    adj = [1.0 + math.log(0.6), 2.0 + math.log(0.3), 0.5 + math.log(0.1)]
    want = -(adj[2] - math.log(sum(math.exp(a) for a in adj)))
    got = build_loss(LossConfig(name="la", tau=1.0), counts)(logits, target)
    assert abs(got.item() - want) < 1e-5


def test_la_with_tau_zero_is_ce():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    la = build_loss(LossConfig(name="la", tau=0.0), [5, 3, 1])(logits, y)
    ce = build_loss(LossConfig(name="ce"), [5, 3, 1])(logits, y)
    assert torch.allclose(la, ce)


def test_every_loss_is_finite():
    for name in LOSSES.names():
        loss = build_loss(LossConfig(name=name), [10, 5, 2])(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
        assert torch.isfinite(loss), name
