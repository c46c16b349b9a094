"""train.mixup: timm's Mixup on the images, Remix's label rule, the switch-off epoch, seeded draws, refusals."""

import types

import numpy as np
import pytest
import torch
from torch import nn

import tailtune
from conftest import TINY_CLIP
from tailtune.config import LossConfig, TrainConfig, load_config, section
from tailtune.errors import ConfigError
from tailtune.losses import build_loss
from tailtune.runtime.rng import kept_rng
from tailtune.training.feature_cache import plan_cache
from tailtune.training.mixing import BatchMixer, MixupOptions, check_mixing, remix_weights
from tailtune.training.trainer import Trainer, TrainingInterrupted

CPU = torch.device("cpu")


def _mixer(counts=(100, 10, 10, 10), seed=0, **kw) -> BatchMixer:
    return BatchMixer(MixupOptions(**kw), counts, seed)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixing_is_timms_with_its_soft_targets(mode):
    """Images as timm's Mixup mixes them from the same NumPy seed; targets = timm's mixup_target,
    with loss.label_smoothing applied by the loss as timm's label_smoothing would."""
    from timm.data import Mixup
    from timm.data.mixup import mixup_target

    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 1, 0])
    mixer = _mixer(alpha=0.4, cutmix_alpha=1.0, mode=mode)
    mixed, targets = mixer(x, y, epoch=0, position=0)
    timm_mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=4)
    with kept_rng():  # timm draws from NumPy's global generator: seeded here, given back after
        np.random.seed(mixer.key(0, 0))
        want_x, want_q = timm_mixup(x.clone(), y)
    assert torch.equal(mixed, want_x) and not torch.equal(mixed, x)
    q = targets.dense(4)
    lam = targets.weight.double()[:, None]
    assert torch.allclose(q, mixup_target(y, 4, lam, 0.0).float(), atol=1e-6)
    assert torch.allclose(q * 0.9 + 0.1 / 4, want_q, atol=1e-6)  # = the smoothed targets, what the loss uses
    z = torch.randn(6, 4)
    smoothed = build_loss(LossConfig(name="ce", label_smoothing=0.1), [1] * 4)(z, q)
    assert float(smoothed) == pytest.approx(float(-(want_q * z.log_softmax(1)).sum(1).mean()), abs=1e-6)


def test_remix_gives_the_label_to_the_minority_class():
    # counts 100 vs 10 (ratio 10 >= kappa 3), lam 0.4 < tau 0.5: the label goes to the minority image's class
    assert float(remix_weights(torch.tensor([0.4]), torch.tensor([100.]), torch.tensor([10.]), 3, 0.5)) == 0.0
    # the minority image's share 0.6 (1 - 0.6 < tau): its label stays whole
    assert float(remix_weights(torch.tensor([0.6]), torch.tensor([10.]), torch.tensor([100.]), 3, 0.5)) == 1.0
    # lam past tau, or a ratio below kappa: the mixup label
    assert float(remix_weights(torch.tensor([0.6]), torch.tensor([100.]), torch.tensor([10.]), 3, 0.5)) == pytest.approx(0.6)
    assert float(remix_weights(torch.tensor([0.4]), torch.tensor([20.]), torch.tensor([10.]), 3, 0.5)) == pytest.approx(0.4)
    # through the mixer: image 0 (class 0, 100 images) with image 1 (class 1, 10 images)
    mixer = _mixer(alpha=1.0, remix=True)
    # (mode=pair: image 1 is 0.6 of itself and 0.4 of image 0, the same mix as image 0)
    mixer.lambdas = lambda images, seed: torch.tensor([0.4, 0.6], dtype=torch.float64)
    _, targets = mixer(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]), 0, 0)
    assert targets.dense(4).tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]  # both labels: the minority class 1


def test_off_epoch_odd_batches_and_seeded_draws():
    mixer = _mixer(alpha=1.0, off_epoch=2)
    x, y = torch.randn(5, 3, 4, 4), torch.tensor([0, 1, 2, 3, 0])
    state = np.random.get_state()[1].copy()
    first = mixer(x, y, 1, 16)
    assert np.array_equal(np.random.get_state()[1], state)  # the global stream is left alone
    again = mixer(x, y, 1, 16)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1].weight, again[1].weight)
    assert torch.equal(first[0][4], x[4]) and float(first[1].weight[4]) == 1.0  # odd one out: unmixed
    assert not torch.equal(mixer(x, y, 1, 21)[0], first[0])  # another micro-batch, another draw
    off_x, off_y = mixer(x, y, 2, 16)  # from off_epoch on: the batch as it is, hard labels
    assert off_x is x and off_y is y


def test_bad_mixup_settings_and_hard_label_losses_are_refused():
    with pytest.raises(ConfigError, match="loss.name=lade needs hard labels .*train.mixup.alpha"):
        check_mixing(section("train", mixup=MixupOptions(alpha=0.2)), "lade")
    check_mixing(section("train", mixup=MixupOptions(alpha=0.2)), "ldam")
    with pytest.raises(ConfigError, match="train.mixup.remix needs mixing on"):
        MixupOptions(remix=True)
    with pytest.raises(ConfigError, match=r"train.mixup.prob=1.5 must be in \[0, 1\]"):
        MixupOptions(alpha=1.0, prob=1.5)
    with pytest.raises(ConfigError, match="train.mixup.kappa"):
        MixupOptions(alpha=1.0, remix=True, kappa=0.5)
    exp = types.SimpleNamespace(cfg=types.SimpleNamespace(
        train=section("train", cache_features="always", mixup=MixupOptions(cutmix_alpha=1.0))))
    with pytest.raises(ConfigError, match="train.cache_features=always: train.mixup mixes the training images"):
        plan_cache(exp, log=lambda _: None)
    exp.cfg.train = section("train", cache_features="auto", mixup=MixupOptions(cutmix_alpha=1.0))
    said = []
    assert plan_cache(exp, log=said.append) is None and "manifold mixup" in said[0]


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int = 14):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 4, 4, generator=g)
        self.targets = [0] * 8 + [1] * 4 + [2] * 2

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def _trainer(**mixup) -> Trainer:
    torch.manual_seed(0)
    cfg = section("train", epochs=2, batch_size=4, micro_batch_size=2, lr=0.1, log_every=1,
                  mixup=MixupOptions(**mixup))
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    loss = build_loss(LossConfig(name="la", label_smoothing=0.1), [8, 4, 2])
    return Trainer(model, loss, Images(), cfg, CPU, None, 0, quiet=True, log=lambda _: None)


def test_resume_mid_epoch_with_mixup_gives_the_same_numbers():
    options = dict(alpha=0.4, cutmix_alpha=1.0, mode="elem", remix=True)
    whole = _trainer(**options)
    whole.fit()
    saved = {}
    first = _trainer(**options)
    first.save = lambda t: saved.update(state=t.state(), opt=t.optimizer.state_dict(),
                                        model={k: v.clone() for k, v in t.model.state_dict().items()})
    first.on_step = lambda step, s: setattr(first, "stop_signal", 15) if step == 5 else None
    with pytest.raises(TrainingInterrupted):
        first.fit()
    assert saved["state"]["epoch"] == 1 and saved["state"]["epoch_step"] == 1  # mid-epoch
    second = _trainer(**options)
    second.model.load_state_dict(saved["model"])
    second.load_state(saved["state"], saved["opt"])
    second.fit()
    for a, b in zip(whole.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert [(h["loss"], h["accuracy"]) for h in whole.history] == [(h["loss"], h["accuracy"]) for h in second.history]
    plain = _trainer()
    plain.fit()
    assert plain.history[0]["loss"] != whole.history[0]["loss"]  # mixing did change the training


def test_a_tiny_run_trains_with_mixup_cutmix_and_label_smoothing(tmp_path):
    cfg = load_config("lift", overrides=[*TINY_CLIP, f"output_dir={tmp_path}", "train.epochs=2", "loss.name=ldam",
                                         "train.mixup.alpha=0.4", "train.mixup.cutmix_alpha=1.0",
                                         "train.mixup.off_epoch=1", "train.mixup.remix=true",
                                         "loss.label_smoothing=0.1"])
    metrics = tailtune.fit(cfg)
    assert 0 <= metrics["test"]["overall"] <= 100
    assert len(metrics["history"]) == 2 and all(np.isfinite(h["loss"]) for h in metrics["history"])
    with pytest.raises(ConfigError, match="loss.name=lade needs hard labels"):
        tailtune.fit(load_config("lift", overrides=[*TINY_CLIP, f"output_dir={tmp_path}", "loss.name=lade",
                                                    "train.mixup.alpha=0.4", "name=lade"]))


def test_defaults_leave_training_as_it_was():
    assert not MixupOptions().enabled and TrainConfig().epochs == 10
    assert _trainer().mixer is None
