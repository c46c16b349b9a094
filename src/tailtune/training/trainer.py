"""The training loop.

The trainer's state is explicit (epoch, step, model, optimizer, scheduler, scaler) so
that checkpoints, resume and distributed training wrap it rather than rewrite it.
The shuffling order of epoch e is a pure function of (seed, e).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from tailtune.config import TrainConfig
from tailtune.data.samplers import build_sampler
from tailtune.errors import ConfigError, TailtuneError
from tailtune.registry import Registry
from tailtune.runtime.distributed import DistInfo
from tailtune.runtime.loader import make_loader, to_device
from tailtune.runtime.precision import autocast
from tailtune.runtime.progress import ImageProgress
from tailtune.training.loader import EpochKeyed, EpochKeys
from tailtune.training.mixing import MixedTargets, build_mixer, mixup_options
from tailtune.training.optim import keep_flags, make_sgd

_log = logging.getLogger(__name__)


# train.scheduler: the learning-rate schedule, stepped after every optimizer step; each entry is
# ``(optimizer, steps_per_epoch, epochs) -> scheduler``.
SCHEDULES: Registry = Registry("learning-rate schedule", fills="train.scheduler")


@SCHEDULES.register("cosine", help="over the steps")
def _cosine(optimizer, steps_per_epoch: int, epochs: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps_per_epoch * epochs)


@SCHEDULES.register("cosine_epoch", help="over the epochs, fixed within one: the reference code's")
def _cosine_per_epoch(optimizer, steps_per_epoch: int, epochs: int):
    """Cosine over the epochs, the rate fixed within each: epoch e trains at lr * (1 + cos(pi e / E)) / 2.

    The reference code's: CosineAnnealingLR stepped once per epoch.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * (step // steps_per_epoch) / epochs)))


@SCHEDULES.register("constant", help="train.lr throughout")
def _constant(optimizer, steps_per_epoch: int, epochs: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _zero_sums() -> dict:
    """The running sums of an epoch on one rank (saved with the state: a resumed epoch continues them)."""
    return {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "skipped": 0}


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    lr: float  # the rate of the epoch's last optimizer step
    seconds: float
    images: int
    skipped_steps: int = 0


class TrainingInterrupted(TailtuneError):
    """A signal stopped training after its state was saved; ``signum`` is the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class NonFiniteLoss(TailtuneError):
    """The loss became NaN or infinite and train.on_nan=stop."""


@dataclass
class Trainer:
    """SGD with a cosine schedule over steps, gradient accumulation, mixed precision and DDP.

    Its state (epoch, step within the epoch, optimizer, scheduler, scaler, running sums)
    is explicit: :meth:`state` / :meth:`load_state` give and take it, ``save`` (called at
    every epoch end and every ``train.save_every`` steps) stores it, and a run resumed
    from it continues exactly where it stopped, mid-epoch included: the epoch plan is a
    function of (seed, epoch) and augmentation of (seed, epoch, sample).

    Under torchrun every rank holds ``train.batch_size / world_size`` images of each
    optimizer step (the global batch stays as configured) and gradients are averaged by
    DistributedDataParallel.
    """

    model: nn.Module
    loss_fn: nn.Module
    train_set: object
    cfg: TrainConfig
    device: torch.device
    dtype: torch.dtype | None = None
    workers: int = 0
    backbone_lr: float | None = None
    quiet: bool = False
    log: Callable[[str], None] = _log.info
    on_step: Callable[[int, dict], None] | None = None
    # Objects told the epoch before it starts (set_epoch); the loss (LDAM's deferred
    # re-weighting) is always told, the training set through the loader's keys (EpochKeyed).
    epoch_aware: tuple = ()
    dist: DistInfo = field(default_factory=DistInfo)
    # Batches in channels_last: the experiment's rule (train.channels_last, CNN backbones only);
    # None = train.channels_last as it is.
    channels_last: bool | None = None
    # data.decode=gpu: the loader's batches are JPEG bytes and crop plans, which this callable
    # (data.gpu_decode.DeviceViews) decodes into the model's input on the device.
    device_views: Callable | None = None
    save: Callable[[Trainer], None] | None = None  # stores the training state (rank 0 writes)
    epoch: int = 0
    step: int = 0
    epoch_step: int = 0  # optimizer steps done in the current epoch
    history: list = field(default_factory=list)
    stop_signal: int | None = None  # set by a signal handler; honoured at the next step boundary
    _loader: torch.utils.data.DataLoader | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        world = self.dist.world_size
        if self.cfg.batch_size % world:
            raise ConfigError(f"train.batch_size={self.cfg.batch_size} is not divisible by the {world} processes; "
                              f"use a batch size that is a multiple of {world}.")
        self.rank_batch = self.cfg.batch_size // world
        self.micro = min(self.cfg.micro_batch_size or self.rank_batch, self.rank_batch)
        if self.rank_batch % self.micro:
            raise ConfigError(f"each of the {world} processes holds {self.rank_batch} images per step, which "
                              f"train.micro_batch_size={self.micro} does not divide.")
        head, body = [], []
        for n, p in self.model.named_parameters():
            if p.requires_grad:
                (head if n.startswith("head.") else body).append(p)
        if not head and not body:
            raise ConfigError("nothing to train: no parameter requires a gradient.")
        groups = [{"params": head, "lr": self.cfg.lr}]
        if body:
            groups.append({"params": body, "lr": self.backbone_lr or self.cfg.lr})
        self.optimizer = make_sgd(groups, self.device, lr=self.cfg.lr, momentum=self.cfg.momentum,
                                  weight_decay=self.cfg.weight_decay)
        # The sampler's epoch plan is a pure function of (seed, epoch); each rank iterates
        # its disjoint share of it (data/samplers.py).
        self.sampler = build_sampler(self.cfg.sampler, self.train_set.targets, self.cfg.seed,
                                     self.dist.rank, world)
        self.steps_per_epoch = math.ceil(len(self.sampler) / self.rank_batch)
        # The schedule's blocks: train.epochs, then each extension (train.extra_epochs) restarts it.
        self.blocks = [self.cfg.epochs, *self.cfg.extra_epochs]
        self.total_epochs = sum(self.blocks)
        self.scheduler = SCHEDULES.get(self.cfg.scheduler)(self.optimizer, self.steps_per_epoch, self.cfg.epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.net = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self._sums = _zero_sums()
        self.mixer = self._mixer()

    def _mixer(self):
        """train.mixup's batch mixer (None when off); the loss must take soft targets (runs check it first)."""
        if not mixup_options(self.cfg).enabled:
            return None
        if not getattr(self.loss_fn, "soft_targets", False):
            raise ConfigError(f"train.mixup mixes the targets, which the loss {type(self.loss_fn).__name__} does "
                              "not take (hard labels only); drop train.mixup.* or use another loss.name.")
        counts = torch.bincount(torch.as_tensor(self.train_set.targets).long()).numpy()
        return build_mixer(self.cfg, counts, self.dist.rank)

    # ------------------------------------------------------------------ state

    def state(self) -> dict:
        """Counters and every rank's running sums (JSON-able) plus the scheduler's and scaler's state."""
        return {"epoch": self.epoch, "step": self.step, "epoch_step": self.epoch_step,
                "sums": self._rank_sums(), "history": list(self.history),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def _rank_sums(self) -> list[dict]:
        """The running sums of the epoch on every rank (collective under torchrun)."""
        if not self.dist.enabled:
            return [dict(self._sums)]
        out: list = [None] * self.dist.world_size
        torch.distributed.all_gather_object(out, dict(self._sums))
        return out

    def load_state(self, state: dict, optimizer_state: dict) -> None:
        self.epoch, self.step, self.epoch_step = state["epoch"], state["step"], state["epoch_step"]
        self._sums = dict(state["sums"][self.dist.rank])
        self.history = list(state["history"])
        block = self._block_of(self.epoch if self.epoch_step else self.epoch - 1)  # the saved schedule's
        if block:
            self.scheduler = SCHEDULES.get(self.cfg.scheduler)(self.optimizer, self.steps_per_epoch, self.blocks[block])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.optimizer.load_state_dict(optimizer_state)
        keep_flags(self.optimizer, self.device)

    # ------------------------------------------------------------------ loop

    def _block_of(self, epoch: int) -> int:
        """The schedule block (0: train.epochs, 1...: the extensions) that ``epoch`` (0-based) is in."""
        end = 0
        for i, n in enumerate(self.blocks):
            end += n
            if epoch < end:
                return i
        return len(self.blocks) - 1

    def _restart_schedule(self) -> None:
        """At the first epoch of an extension block: the schedule starts again from train.lr (and
        peft.lr) and runs over the block's epochs; momentum buffers carry on."""
        if self.epoch_step or not self.epoch or self._block_of(self.epoch) == self._block_of(self.epoch - 1):
            return
        block = self._block_of(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.scheduler = SCHEDULES.get(self.cfg.scheduler)(self.optimizer, self.steps_per_epoch, self.blocks[block])
        self.log(f"epoch {self.epoch + 1}: the learning-rate schedule ({self.cfg.scheduler}) starts again from "
                 f"lr {self.lr:g} over {self.blocks[block]} epochs (train.extra_epochs)")

    def _epoch_batches(self):
        """Micro-batch loader over this rank's share of the epoch plan, from the resume point.

        One loader serves every epoch (its workers persist): the keys it hands out carry the epoch.
        """
        share = self.sampler.share(self.epoch)
        start = self.epoch_step * self.rank_batch
        if self._loader is None:
            self._keys = EpochKeys()
            # Its own generator: a loader draws its workers' base seed at every epoch's start, which
            # must not move the global stream (dropout) by an amount that depends on the workers.
            # The images' augmentation is seeded per item (SeededTransformed), not by the workers.
            self._loader = make_loader(EpochKeyed(self.train_set), self.micro, False, self.workers, self.device,
                                       generator=torch.Generator().manual_seed(self.cfg.seed),
                                       sampler=self._keys, persistent=True,
                                       collate_fn=getattr(self.device_views, "collate", None))
        self._keys.keys = [(self.epoch, int(i)) for i in share[start:]]
        return share[start:], self._loader

    def close(self) -> None:
        """Stop the training loader's workers (they persist across epochs until this)."""
        self._loader = None

    def _any_rank(self, flag: bool) -> bool:
        """True if ``flag`` is set on any rank (all ranks take the same decision)."""
        if not self.dist.enabled:
            return flag
        t = torch.tensor([float(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def train_epoch(self) -> EpochStats:
        """One epoch, or what is left of it on resume: micro-batches accumulate into optimizer steps."""
        remaining, loader = self._begin_epoch()
        t0 = time.perf_counter()
        bar = ImageProgress(loader, f"epoch {self.epoch + 1}/{self.total_epochs}", self.quiet)
        self.optimizer.zero_grad(set_to_none=True)
        done, in_step, step_finite = 0, 0, True  # images of earlier steps, of the current step; no NaN yet
        step_lr = self.lr
        for images, y in bar:
            step_images = min(self.rank_batch, len(remaining) - done)  # the epoch's last step may be short
            last_micro = in_step + len(y) >= step_images  # micro-batches never straddle steps
            loss, finite = self._forward_backward(images, y, step_images, last_micro,
                                                  at=self.epoch_step * self.rank_batch + in_step)
            in_step += len(y)
            step_finite &= finite
            if not last_micro:
                continue  # gradients accumulate until the step's last micro-batch
            done, in_step = done + in_step, 0
            step_lr = self._optimizer_step(step_finite, loss)
            step_finite = True
            self._report_step(bar, loss, step_lr)
            if self._any_rank(self.stop_signal is not None):  # every rank stops at the same step
                self._interrupt(t0)
            # The epoch's end saves anyway (fit), so a periodic save is skipped on its last step.
            if self.cfg.save_every and self.step % self.cfg.save_every == 0 and done < len(remaining):
                t0 = self._add_seconds(t0)
                self._save()
        self._add_seconds(t0)
        return self._end_epoch(step_lr)

    def _begin_epoch(self):
        """Train mode, the epoch told to whoever depends on it, and the loader from the resume point."""
        self._restart_schedule()
        self.model.train()
        for obj in (self.loss_fn, *self.epoch_aware):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(self.epoch)
        return self._epoch_batches()

    def _forward_backward(self, images, y, step_images: int, last_micro: bool,
                          at: int = 0) -> tuple[torch.Tensor, bool]:
        """One micro-batch: forward under autocast, loss in fp32, backward through the scaler.

        ``at``: the micro-batch's first image in the epoch's share (it seeds train.mixup's draws).
        Returns the loss and whether it is finite; only finite losses count in the epoch's sums.
        """
        channels_last = self.cfg.channels_last if self.channels_last is None else self.channels_last
        if self.device_views is not None:
            images = self.device_views(images, self.device, channels_last)
        else:
            images = to_device(images, self.device, channels_last)
        y = y.to(self.device, non_blocking=True)
        targets = y
        if self.mixer is not None:
            images, targets = self.mixer(images, y, self.epoch, at)
        # DDP all-reduces gradients at every backward; no_sync leaves that to the step's last micro-batch.
        sync = contextlib.nullcontext() if last_micro or not self.dist.enabled else self.net.no_sync()
        with sync:
            with autocast(self.device, self.dtype):
                logits = self.net(images)
            if isinstance(targets, MixedTargets):
                targets = targets.dense(logits.shape[1])
            loss = self.loss_fn(logits.float(), targets)
            # What the epoch counts, read after the backward is queued in one transfer: on a GPU
            # one wait per micro-batch instead of three before its backward could start.
            counts = torch.stack([torch.isfinite(loss).float(), loss.detach() * len(y),
                                  (logits.detach().argmax(1) == y).sum().float()])
            # Weight by size so that the step's gradient is the mean over its images.
            self.scaler.scale(loss * (len(y) / step_images)).backward()
        finite_flag, loss_sum, correct = counts.tolist()
        finite = bool(finite_flag)
        if finite:
            self._sums["loss"] += loss_sum
            self._sums["correct"] += int(correct)
            self._sums["seen"] += len(y)
        return loss, finite

    def _optimizer_step(self, finite: bool, loss: torch.Tensor) -> float:
        """Step (or, after a non-finite loss on any rank, skip or stop), then advance the schedule.

        Returns the rate this step trained at (the one reported: not the next step's).
        """
        if self._any_rank(not finite):
            self._non_finite(loss)  # raises under train.on_nan=stop
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.lr
        self.scheduler.step()  # a skipped step still advances the schedule
        self.step += 1
        self.epoch_step += 1
        return lr

    def _report_step(self, bar: ImageProgress, loss: torch.Tensor, lr: float) -> None:
        """The running loss and accuracy on the progress bar; every ``log_every`` steps, to ``on_step``."""
        sums = self._sums
        if sums["seen"]:
            bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}",
                            acc=f"{100 * sums['correct'] / sums['seen']:.1f}")
        if self.on_step and self.step % self.cfg.log_every == 0:
            self.on_step(self.step, {"loss": loss.item(), "lr": lr,
                                     "running_acc": 100.0 * sums["correct"] / max(sums["seen"], 1)})

    def _interrupt(self, t0: float) -> None:
        """Save the state and stop: a signal arrived (on this rank or another)."""
        self._add_seconds(t0)
        self._save()
        raise TrainingInterrupted(f"stopped by signal {self.stop_signal or 'on another rank'} at "
                                  f"epoch {self.epoch + 1}, step {self.epoch_step} of "
                                  f"{self.steps_per_epoch} ({self.step} in all); the state is saved",
                                  self.stop_signal or 15)

    def _add_seconds(self, t0: float) -> float:
        """Count the time since ``t0`` as training time of the epoch (kept in the saved state); returns now."""
        now = time.perf_counter()
        self._sums["seconds"] += now - t0
        return now

    def _end_epoch(self, lr: float) -> EpochStats:
        """The epoch's statistics over every rank; the counters move to the next epoch."""
        sums = self._sums
        total = self._global(sums)
        seen = max(total["seen"], 1)
        stats = EpochStats(total["loss"] / seen, 100.0 * total["correct"] / seen, lr, sums["seconds"],
                           int(total["seen"]), sums["skipped"])
        self.epoch += 1
        self.epoch_step = 0
        self._sums = _zero_sums()
        self.history.append(stats.__dict__)
        return stats

    def _global(self, sums: dict) -> dict:
        """Loss, correct and seen summed over ranks (every rank trains on its share)."""
        if not self.dist.enabled:
            return sums
        t = torch.tensor([sums["loss"], sums["correct"], sums["seen"]], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return {"loss": t[0].item(), "correct": t[1].item(), "seen": t[2].item()}

    def _non_finite(self, loss: torch.Tensor) -> None:
        where = f"epoch {self.epoch + 1}, step {self.step + 1}"
        if self.cfg.on_nan == "skip":
            self._sums["skipped"] += 1
            self.log(f"warning: non-finite loss ({loss.item()}) at {where}; step skipped "
                     f"({self._sums['skipped']} this epoch)")
            return
        raise NonFiniteLoss(f"the loss became {loss.item()} at {where}. The last good training state is kept "
                            "in the run folder. Lower train.lr, use train.precision=fp32, or set "
                            "train.on_nan=skip to skip such steps.")

    def _save(self) -> None:
        """Called on every rank (the state gathers all ranks' sums); ``save`` writes on rank 0."""
        if self.save is not None:
            self.save(self)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def fit(self, on_epoch: Callable[[int, EpochStats], None] | None = None) -> list[dict]:
        try:
            while self.epoch < self.total_epochs:
                stats = self.train_epoch()
                skipped = f", {stats.skipped_steps} non-finite steps skipped" if stats.skipped_steps else ""
                self.log(f"epoch {self.epoch}/{self.total_epochs}: loss {stats.loss:.4f}, train acc "
                         f"{stats.accuracy:.2f}%, lr {stats.lr:.5f}, {stats.seconds:.1f}s "
                         f"({stats.images * self.dist.world_size / max(stats.seconds, 1e-9):.0f} img/s){skipped}")
                if on_epoch:
                    on_epoch(self.epoch, stats)
                self._save()
        finally:
            self.close()
        return self.history
