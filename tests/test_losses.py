"""Every loss against a value computed by hand (plain Python math) on one small example."""

import math

import pytest
import torch

from tailtune.config import LossConfig, section
from tailtune.errors import ConfigError
from tailtune.losses import (
    LOSSES,
    CbOptions,
    FocalOptions,
    LadeOptions,
    LaOptions,
    LdamOptions,
    build_loss,
)

COUNTS = [6, 3, 1]
PRIOR = [0.6, 0.3, 0.1]
Z = [[1.0, 2.0, 0.5], [0.2, -1.0, 3.0], [2.5, 0.0, -0.5], [0.0, 1.5, 1.0]]
Y = [2, 0, 0, 1]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def ce(z, y):
    return -(z[y] - math.log(sum(math.exp(v) for v in z)))


def shifted(z, shift):
    return [a + b for a, b in zip(z, shift)]


def weighted_mean(losses, weights):
    return sum(w * v for w, v in zip(weights, losses)) / sum(weights)


def run(cfg, device="cpu", epoch=None):
    loss = build_loss(cfg, COUNTS).to(device)
    if epoch is not None:
        loss.set_epoch(epoch)
    return loss(torch.tensor(Z, device=device), torch.tensor(Y, device=device)).item()


def test_ce():
    want = sum(ce(z, y) for z, y in zip(Z, Y)) / 4
    assert run(LossConfig(name="ce")) == pytest.approx(want, abs=1e-5)


def test_focal_gamma_2():
    def fl(z, y):
        p = math.exp(-ce(z, y))
        return (1 - p) ** 2 * ce(z, y)

    want = sum(fl(z, y) for z, y in zip(Z, Y)) / 4
    assert run(LossConfig(name="focal")) == pytest.approx(want, abs=1e-5)
    # gamma 0 is plain cross-entropy
    assert run(section("loss", name="focal", focal=FocalOptions(gamma=0.0))) == pytest.approx(run(LossConfig(name="ce")), abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_la(tau):
    adjust = [tau * math.log(p) for p in PRIOR]
    want = sum(ce(shifted(z, adjust), y) for z, y in zip(Z, Y)) / 4
    assert run(section("loss", name="la", la=LaOptions(tau=tau))) == pytest.approx(want, abs=1e-5)


def test_la_with_tau_zero_is_ce():
    assert run(section("loss", name="la", la=LaOptions(tau=0.0))) == pytest.approx(run(LossConfig(name="ce")), abs=1e-6)


def test_bs_is_ce_on_logits_plus_log_prior():
    adjust = [math.log(p) for p in PRIOR]
    want = sum(ce(shifted(z, adjust), y) for z, y in zip(Z, Y)) / 4
    assert run(LossConfig(name="bs")) == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("beta", [0.9, 0.9999])
def test_cb(beta):
    raw = [(1 - beta) / (1 - beta ** n) for n in COUNTS]
    w = [r / (sum(raw) / 3) for r in raw]
    want = weighted_mean([ce(z, y) for z, y in zip(Z, Y)], [w[y] for y in Y])
    assert run(section("loss", name="cb", cb=CbOptions(beta=beta))) == pytest.approx(want, abs=1e-5)
    assert build_loss(section("loss", name="cb", cb=CbOptions(beta=beta)), COUNTS).weight.mean().item() == pytest.approx(1.0)


def test_grw_weights_are_inverse_prior_with_mean_1():
    raw = [1 / p for p in PRIOR]  # 1.667, 3.333, 10
    w = [r / (sum(raw) / 3) for r in raw]
    assert build_loss(LossConfig(name="grw"), COUNTS).weight.tolist() == pytest.approx(w, rel=1e-6)
    want = weighted_mean([ce(z, y) for z, y in zip(Z, Y)], [w[y] for y in Y])
    assert run(LossConfig(name="grw")) == pytest.approx(want, abs=1e-5)


def ldam_margins(max_m=0.5):
    raw = [n ** -0.25 for n in COUNTS]
    return [max_m * r / max(raw) for r in raw]  # class 2 (1 image) gets 0.5


def ldam_terms(scale=25.0):
    m = ldam_margins()
    out = []
    for z, y in zip(Z, Y):
        zz = list(z)
        zz[y] -= scale * m[y]
        out.append(ce(zz, y))
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_ldam(device):
    assert ldam_margins()[2] == 0.5 and ldam_margins()[0] == pytest.approx(0.5 / 6 ** 0.25)
    want = sum(ldam_terms()) / 4
    assert run(LossConfig(name="ldam"), device) == pytest.approx(want, abs=1e-4)
    # the margin scale is configurable and composes as scale * m_y on the given logits
    want10 = sum(ldam_terms(10.0)) / 4
    assert run(section("loss", name="ldam", ldam=LdamOptions(scale=10.0)), device) == pytest.approx(want10, abs=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_ldam_deferred_reweighting_switches_on_at_its_epoch(device):
    cfg = section("loss", name="ldam", ldam=LdamOptions(drw_epoch=2, beta=0.9))
    raw = [(1 - 0.9) / (1 - 0.9 ** n) for n in COUNTS]
    w = [r / (sum(raw) / 3) for r in raw]
    plain = sum(ldam_terms()) / 4
    weighted = weighted_mean(ldam_terms(), [w[y] for y in Y])
    assert run(cfg, device, epoch=0) == pytest.approx(plain, abs=1e-4)
    assert run(cfg, device, epoch=1) == pytest.approx(plain, abs=1e-4)
    assert run(cfg, device, epoch=2) == pytest.approx(weighted, abs=1e-4)
    assert run(cfg, device, epoch=5) == pytest.approx(weighted, abs=1e-4)


def test_lade_against_hand_computation():
    alpha, lam = 0.1, 0.1
    n, c = len(Y), len(COUNTS)
    pc = sum(ce(shifted(z, [math.log(p) for p in PRIOR]), y) for z, y in zip(Z, Y)) / n
    reg = 0.0
    for k in range(c):
        mine = [Z[i][k] for i in range(n) if Y[i] == k]
        first = sum(mine) / len(mine) if mine else 0.0
        # importance weights p_t(k) / p_s(k) with p_t uniform, as a shift of the logit
        second = math.log(sum(math.exp(Z[i][k] - math.log(PRIOR[k]) + math.log(1 / c)) for i in range(n))) \
            - math.log(n)
        reg -= PRIOR[k] * (first - second - lam * second ** 2)
    want = pc + alpha * reg
    assert run(LossConfig(name="lade")) == pytest.approx(want, abs=1e-5)
    # alpha = 0 leaves the PC-softmax part, which is the balanced softmax
    assert run(section("loss", name="lade", lade=LadeOptions(alpha=0.0))) == pytest.approx(run(LossConfig(name="bs")), abs=1e-6)


def test_lade_batch_without_some_classes_is_finite():
    loss = build_loss(LossConfig(name="lade"), COUNTS)(torch.tensor(Z[:2]), torch.tensor([2, 2]))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("device", DEVICES)
def test_every_loss_is_finite_and_has_gradients(name, device):
    cfg = section("loss", name=name, ldam=LdamOptions(drw_epoch=0 if name == "ldam" else None))
    loss_fn = build_loss(cfg, [10, 5, 2]).to(device)
    logits = torch.randn(6, 3, device=device, requires_grad=True)
    loss = loss_fn(logits, torch.tensor([0, 1, 2, 0, 1, 2], device=device))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0, name


def test_bad_loss_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown loss 'ladm'. Did you mean 'ldam'"):
        build_loss(LossConfig(name="ladm"), COUNTS)
    with pytest.raises(ConfigError, match="loss.ldam.drw_epoch applies to loss.name=ldam only"):
        section("loss", name="ce", ldam=LdamOptions(drw_epoch=3))
    with pytest.raises(ConfigError, match=r"loss.cb.beta=1.0 must be in \(0, 1\)"):
        section("loss", name="cb", cb=CbOptions(beta=1.0))
