"""Every loss against a value computed by hand (plain Python math) on one small example."""

import math

import pytest
import torch
import torch.nn.functional as F

from tailtune.config import LossConfig, load_config, section
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
    with pytest.raises(ConfigError, match="loss.ldam.drw_epoch=3 applies to loss.name=ldam only, not to loss.name=ce"):
        load_config(overrides=["loss.name=ce", "loss.ldam.drw_epoch=3"])  # a user's (tests/config/test_unchosen.py)
    with pytest.raises(ConfigError, match=r"loss.cb.beta=1.0 must be in \(0, 1\)"):
        section("loss", name="cb", cb=CbOptions(beta=1.0))


# ---------------------------------------------------------------- soft targets, label smoothing

SOFT_LOSSES = [n for n in LOSSES.names() if n != "lade"]


def test_soft_target_la_equals_the_hand_computed_loss():
    """LA with q = (0.4, 0.6, 0) on z = (1, 2, 0), counts (6, 3, 1), tau 1: -sum_j q_j log softmax(z + log p)_j."""
    z, q, counts = [1.0, 2.0, 0.0], [0.4, 0.6, 0.0], [6, 3, 1]
    a = [zj + math.log(n / 10) for zj, n in zip(z, counts)]  # 1 + log .6, 2 + log .3, log .1
    log_norm = math.log(sum(math.exp(v) for v in a))
    want = -sum(qj * (aj - log_norm) for qj, aj in zip(q, a))
    got = build_loss(LossConfig(name="la"), counts)(torch.tensor([z]), torch.tensor([q]))
    assert float(got) == pytest.approx(want, abs=1e-6)
    # label smoothing 0.1 on the hard label 1: q = (0.1/3, 0.9 + 0.1/3, 0.1/3)
    eps = 0.1
    qs = [eps / 3, 1 - eps + eps / 3, eps / 3]
    want = -sum(qj * (aj - log_norm) for qj, aj in zip(qs, a))
    got = build_loss(LossConfig(name="la", label_smoothing=eps), counts)(torch.tensor([z]), torch.tensor([1]))
    assert float(got) == pytest.approx(want, abs=1e-6)


def test_label_smoothing_ce_agrees_with_pytorch():
    z, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    got = build_loss(LossConfig(name="ce", label_smoothing=0.2), [3] * 5)(z, y)
    assert float(got) == pytest.approx(float(F.cross_entropy(z, y, label_smoothing=0.2)), abs=1e-6)


@pytest.mark.parametrize("name", SOFT_LOSSES)
def test_soft_targets_are_the_linear_extension_of_each_loss(name):
    """One-hot q gives the hard-label loss; q mixing two labels per image gives lam L(y_a) + (1 - lam) L(y_b)
    (each image's own loss, checked one image at a time); a weighted loss (cb, grw, ldam under DRW) counts
    each (image, class) with weight q_j w_j: (lam w_a L_a + (1 - lam) w_b L_b) / (lam w_a + (1 - lam) w_b)."""
    counts = [40, 10, 5, 2]
    cfg = section("loss", name=name, ldam=LdamOptions(drw_epoch=0 if name == "ldam" else None))
    loss_fn = build_loss(cfg, counts)
    torch.manual_seed(0)
    z, ya, yb = torch.randn(6, 4) * 3, torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 2, 1, 0, 0, 2])
    assert float(loss_fn(z, F.one_hot(ya, 4).float())) == pytest.approx(float(loss_fn(z, ya)), abs=1e-5)
    lam = 0.3
    for i in range(len(z)):
        q = lam * F.one_hot(ya[i:i + 1], 4).float() + (1 - lam) * F.one_hot(yb[i:i + 1], 4).float()
        la, lb = loss_fn(z[i:i + 1], ya[i:i + 1]), loss_fn(z[i:i + 1], yb[i:i + 1])
        w = getattr(loss_fn, "weight", getattr(loss_fn, "drw_weight", None))
        wa, wb = (1.0, 1.0) if w is None else (float(w[ya[i]]), float(w[yb[i]]))
        want = (lam * wa * la + (1 - lam) * wb * lb) / (lam * wa + (1 - lam) * wb)
        assert float(loss_fn(z[i:i + 1], q)) == pytest.approx(float(want), abs=1e-5), (name, i)


def test_hard_label_losses_refuse_label_smoothing():
    with pytest.raises(ConfigError, match=r"loss.name=lade needs hard labels .* loss.label_smoothing=0.1 cannot be "
                                          r"used with it; drop loss.label_smoothing=0.1 or choose .*ce"):
        build_loss(LossConfig(name="lade", label_smoothing=0.1), COUNTS)
    with pytest.raises(ConfigError, match=r"loss.label_smoothing=1.0 must be in \[0, 1\)"):
        LossConfig(name="ce", label_smoothing=1.0)
