"""Mixup, CutMix and Remix of the training batches (``train.mixup.*``), through timm's ``Mixup``.

timm mixes the images of a micro-batch (each with its mirror in the batch, i <-> N-1-i) and
says by how much (lambda, corrected for the CutMix box's clipped area); the targets are the
distributions q = lam_y onehot(y_i) + (1 - lam_y) onehot(y_partner), which every loss that takes
soft targets accepts (losses.py; ``loss.label_smoothing`` is applied by the loss, on top).
Plain mixup / CutMix: lam_y = lam (timm's ``mixup_target``). Remix (Chou et al., ECCV 2020
workshops) moves the label to the minority class: with n_i, n_j the training counts of the
image's and its partner's class,

    lam_y = 0    if n_i / n_j >= kappa and lam < tau
    lam_y = 1    if n_i / n_j <= 1 / kappa and 1 - lam < tau
    lam_y = lam  otherwise.

Every micro-batch's draws (timm draws from NumPy's global generator) come from a generator
seeded by (train.seed, rank, epoch, position of the micro-batch in the epoch), inside a block
that gives the global streams back: the same mixing whatever the resume point or the workers.
A micro-batch of odd size mixes all but its last image (timm pairs images), which stays as it is.
From ``train.mixup.off_epoch`` (0-based) on, batches are not mixed (hard labels again).

Images are mixed before the model sees them, so a feature cache (which stores the frozen
front's outputs) cannot be mixed: training/feature_cache.py does not cache (auto) or refuses
(always) when mixing is on. Mixing cached features would be manifold mixup, another method.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F

from tailtune.config import _check_choice, _check_positive, options_of, setting
from tailtune.errors import ConfigError
from tailtune.losses import refuse_hard_only
from tailtune.registry import EVERY, Registry
from tailtune.runtime.rng import kept_rng

# Batch mixings with their options under train.<key>.* (one today: mixup, which also holds CutMix
# and Remix, as timm's Mixup does).
BATCH_MIXING: Registry = Registry("batch mixing", section="train", chosen_by=EVERY)  # on by its own values
MIX_MODES = ("batch", "pair", "elem")


def _check_unit(key: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"train.mixup.{key}={value!r} must be in [0, 1].")


@dataclass
class MixupOptions:
    """mixup: mixup / CutMix of the training images (timm's Mixup), Remix's labels, and when they stop."""

    KEY: ClassVar[str] = "mixup"

    alpha: float = setting(0.0, "mixup: lambda ~ Beta(alpha, alpha); 0 = no mixup (0.2-1 usual)")
    cutmix_alpha: float = setting(0.0, "CutMix: lambda ~ Beta(cutmix_alpha, cutmix_alpha); 0 = no CutMix (1 usual)")
    prob: float = setting(1.0, "probability that a batch (mode=batch) or an image is mixed")
    switch_prob: float = setting(0.5, "with both alpha and cutmix_alpha > 0: probability of CutMix rather than mixup")
    mode: str = setting("batch", "batch: one lambda per micro-batch | pair: per pair of images | elem: per image", choices=MIX_MODES)
    off_epoch: Optional[int] = setting(  # noqa: UP045  (OmegaConf reads the annotation)
        None, "no mixing from this epoch on (0-based; the last epochs train on clean images); null = every epoch")
    remix: bool = setting(False, "Remix: the mixed label goes to the minority class (count ratio >= kappa, lambda past tau)")
    kappa: float = setting(3.0, "Remix: count ratio n_i / n_j from which the label moves to the minority class")
    tau: float = setting(0.5, "Remix: the label moves when the majority image's share lambda is below tau")

    def __post_init__(self) -> None:
        _check_positive("train.mixup", "alpha", self.alpha, allow_zero=True)
        _check_positive("train.mixup", "cutmix_alpha", self.cutmix_alpha, allow_zero=True)
        _check_positive("train.mixup", "off_epoch", self.off_epoch, allow_zero=True)
        _check_unit("prob", self.prob)
        _check_unit("switch_prob", self.switch_prob)
        _check_unit("tau", self.tau)
        _check_choice("train.mixup", "mode", self.mode, MIX_MODES)
        if self.kappa < 1:
            raise ConfigError(f"train.mixup.kappa={self.kappa!r} must be >= 1 (a count ratio; Remix uses 3).")
        if not self.enabled and (self.remix or self.off_epoch is not None):
            key = "remix" if self.remix else "off_epoch"
            raise ConfigError(f"train.mixup.{key} needs mixing on: set train.mixup.alpha (mixup) or "
                              "train.mixup.cutmix_alpha (CutMix) > 0, or drop it.")

    @property
    def enabled(self) -> bool:
        return self.alpha > 0 or self.cutmix_alpha > 0


def mixup_options(train) -> MixupOptions:
    """The ``train.mixup`` options of a train section (the defaults, mixing off, when it has none)."""
    return options_of(train, "mixup", MixupOptions)


def remix_weights(lam: torch.Tensor, counts_i: torch.Tensor, counts_j: torch.Tensor, kappa: float,
                  tau: float) -> torch.Tensor:
    """Remix's label weight of each image's own class (see the module text); ``lam``: its image's share."""
    ratio = counts_i.double() / counts_j.double().clamp(min=1)
    lam = lam.double()
    out = torch.where((ratio >= kappa) & (lam < tau), torch.zeros_like(lam), lam)
    return torch.where((ratio <= 1.0 / kappa) & (1.0 - lam < tau), torch.ones_like(lam), out)


@dataclass
class MixedTargets:
    """Soft targets lam_y onehot(y) + (1 - lam_y) onehot(y[partner]), made once the class count is known."""

    y: torch.Tensor
    partner: torch.Tensor
    weight: torch.Tensor  # (N,) label weight of each image's own class

    def dense(self, num_classes: int) -> torch.Tensor:
        own = F.one_hot(self.y, num_classes).to(torch.float32)
        w = self.weight.to(own.device, torch.float32)[:, None]
        return w * own + (1.0 - w) * own[self.partner]


class BatchMixer:
    """timm's ``Mixup`` on the images, the targets as :class:`MixedTargets` (Remix's rule with counts)."""

    def __init__(self, options: MixupOptions, class_counts, seed: int, rank: int = 0):
        from timm.data import Mixup

        self.options = options
        self.seed, self.rank = int(seed), int(rank)
        self.counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64))
        # label_smoothing=0: the loss smooths (loss.label_smoothing), mixed or not.
        self.timm = Mixup(mixup_alpha=options.alpha, cutmix_alpha=options.cutmix_alpha, prob=options.prob,
                          switch_prob=options.switch_prob, mode=options.mode, label_smoothing=0.0,
                          num_classes=max(len(self.counts), 1))

    def active(self, epoch: int) -> bool:
        off = self.options.off_epoch
        return off is None or epoch < off

    def key(self, epoch: int, position: int) -> int:
        """The 32-bit seed of the micro-batch starting at ``position`` of epoch ``epoch``'s share."""
        return int(np.random.SeedSequence([self.seed, self.rank, epoch, position]).generate_state(1)[0])

    def lambdas(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """Mix ``images`` (N >= 2, even) in place; each image's share of itself, (N,) float64."""
        with kept_rng():
            np.random.seed(seed)
            random.seed(seed)
            lam = self.timm._mix_elem(images) if self.options.mode == "elem" else (
                self.timm._mix_pair(images) if self.options.mode == "pair" else self.timm._mix_batch(images))
        n = len(images)
        if torch.is_tensor(lam):
            return lam.detach().reshape(-1).double().cpu()
        return torch.full((n,), float(lam), dtype=torch.float64)

    def __call__(self, images: torch.Tensor, y: torch.Tensor, epoch: int,
                 position: int) -> tuple[torch.Tensor, MixedTargets | torch.Tensor]:
        """Mixed images and their targets, or the batch as it is (hard labels) when mixing is off."""
        n = len(y) - len(y) % 2
        if not self.active(epoch) or n < 2:
            return images, y
        images = images.clone()  # the loader's (pinned) batch stays as it was
        lam = torch.ones(len(y), dtype=torch.float64)
        lam[:n] = self.lambdas(images[:n], self.key(epoch, position))
        partner = torch.arange(len(y))
        partner[:n] = torch.arange(n - 1, -1, -1)
        weight = lam
        if self.options.remix:
            yc = y.cpu()
            weight = remix_weights(lam, self.counts[yc], self.counts[yc[partner]], self.options.kappa,
                                   self.options.tau)
        return images, MixedTargets(y, partner.to(y.device), weight.float())


BATCH_MIXING.register("mixup", help="mixup / CutMix (timm's Mixup) and Remix, train.mixup.*",
                      options=MixupOptions)(BatchMixer)


def check_mixing(train, loss_name: str) -> None:
    """ConfigError when train.mixup is on and loss ``loss_name`` takes hard labels only."""
    options = mixup_options(train)
    if options.enabled:
        key = "train.mixup.alpha" if options.alpha > 0 else "train.mixup.cutmix_alpha"
        refuse_hard_only(loss_name, f"{key} (mixup / CutMix give mixed soft targets)")


def build_mixer(train, class_counts, rank: int = 0) -> BatchMixer | None:
    """The batch mixer of a train section, or None when mixing is off."""
    options = mixup_options(train)
    return BatchMixer(options, class_counts, train.seed, rank) if options.enabled else None
