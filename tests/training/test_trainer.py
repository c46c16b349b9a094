"""The training loop's data side: one loader for every epoch, its workers kept, the epoch in its keys."""

import os

import pytest
import torch
from torch import nn

import tailtune
from conftest import TINY_CLIP
from tailtune.config import TrainConfig, load_config
from tailtune.training.trainer import Trainer

CPU = torch.device("cpu")


class WhereAndWhen(torch.utils.data.Dataset):
    """Items that say which process read them and at which epoch (set_epoch) they were read."""

    def __init__(self, n: int = 12):
        self.targets = [i % 3 for i in range(n)]
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return torch.tensor([float(os.getpid()), float(self.epoch), float(i)]), self.targets[i]


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.fc(x * 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_one_loader_serves_every_epoch_and_tells_each_copy_the_epoch(workers):
    model = Recorder()
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.01)
    trainer = Trainer(model, nn.CrossEntropyLoss(), WhereAndWhen(), cfg, CPU, None, workers, quiet=True,
                      log=lambda _: None)
    pids_by_epoch = []
    for epoch in range(3):
        model.seen.clear()
        trainer.train_epoch()
        rows = torch.cat(model.seen)
        assert sorted(rows[:, 2].long().tolist()) == list(range(12))  # every image once
        assert set(rows[:, 1].long().tolist()) == {epoch}  # read by a copy set to this epoch
        pids_by_epoch.append(set(rows[:, 0].long().tolist()))
    if workers:  # the same worker processes all along (persistent), none of them this one
        assert pids_by_epoch[0] == pids_by_epoch[1] == pids_by_epoch[2] and os.getpid() not in pids_by_epoch[0]
        assert trainer._loader.persistent_workers
    trainer.close()
    assert trainer._loader is None
    if workers:
        import multiprocessing

        assert not multiprocessing.active_children()  # the workers are gone


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_leaves_the_global_random_stream_alone(workers):
    """Dropout draws from the global stream: loaders must not move it by an amount that depends on workers."""
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.01)
    trainer = Trainer(Recorder(), nn.CrossEntropyLoss(), WhereAndWhen(), cfg, CPU, None, workers, quiet=True,
                      log=lambda _: None)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    trainer.fit()
    assert torch.equal(torch.get_rng_state(), before)


def test_runs_with_loader_workers_match_runs_without(tmp_path):
    """Seeded augmentation (and the minimal augmentation's epoch curriculum) give the same run either way."""
    base = [*TINY_CLIP, "train.epochs=2", "train.augment=minimal", "eval.tte=none", "eval.gap_per_class=0",
            "eval.report=false", f"output_dir={tmp_path}"]
    runs = [tailtune.fit(load_config("lift", overrides=[*base, f"data.num_workers={w}", f"name=w{w}"])) for w in (0, 2)]
    (a, b) = [[(h["loss"], h["accuracy"]) for h in m["history"]] for m in runs]
    assert a == b and runs[0]["test"]["per_class"] == runs[1]["test"]["per_class"]


def test_lift_plus_recipe_trains_with_its_augmentation(tmp_path):
    """The lift_plus recipe (LIFT+'s MDA, bicubic views, five crops at + 24) on the tiny CLIP, two epochs."""
    cfg = load_config("lift_plus", overrides=[*TINY_CLIP, "train.epochs=2", "train.minimal.schedule=concave",
                                              "eval.gap_per_class=0", "eval.report=false", f"output_dir={tmp_path}"])
    assert (cfg.train.augment, cfg.data.interpolation, cfg.eval.expand) == ("minimal", "bicubic", 24)
    metrics = tailtune.fit(cfg)
    assert len(metrics["history"]) == 2 and 0.0 <= metrics["test"]["overall"] <= 100.0


def _rates(schedule: str) -> list[float]:
    """The learning rate of each of 9 optimizer steps (3 epochs of 3 steps)."""
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.01, scheduler=schedule, log_every=1)
    rates = []
    trainer = Trainer(Recorder(), nn.CrossEntropyLoss(), WhereAndWhen(), cfg, CPU, None, 0, quiet=True,
                      log=lambda _: None)
    trainer.on_step = lambda step, s: rates.append(s["lr"])  # the rate each step trained at
    history = trainer.fit()
    assert [h["lr"] for h in history] == [rates[2], rates[5], rates[8]]  # an epoch's: its last step's
    return rates


def test_schedules():
    import math

    by_epoch = _rates("cosine_epoch")  # the reference code's: fixed within an epoch
    assert by_epoch == pytest.approx([0.01 * (1 + math.cos(math.pi * (k // 3) / 3)) / 2 for k in range(9)])
    by_step = _rates("cosine")
    assert by_step == pytest.approx([0.01 * (1 + math.cos(math.pi * k / 9)) / 2 for k in range(9)])
    assert _rates("constant") == pytest.approx([0.01] * 9)


def test_progress_counts_images_not_batches_times_the_batch_size(capsys):
    from tailtune.runtime.progress import ImageProgress

    loader = torch.utils.data.DataLoader(WhereAndWhen(10), batch_size=4)
    bar = ImageProgress(loader, "eval", quiet=False)
    seen = sum(len(y) for _, y in bar)
    assert seen == 10 and bar.bar.total == 10 and bar.bar.n == 10
    assert "0/10 [" in capsys.readouterr().err  # images, not 3 batches of 4


def _extended(schedule: str, extra: list[int]) -> tuple[Trainer, list[float]]:
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.01, scheduler=schedule, log_every=1, extra_epochs=extra)
    rates: list[float] = []
    trainer = Trainer(Recorder(), nn.CrossEntropyLoss(), WhereAndWhen(), cfg, CPU, None, 0, quiet=True,
                      log=lambda _: None)
    trainer.on_step = lambda step, s: rates.append(s["lr"])
    return trainer, rates


@pytest.mark.parametrize("schedule", ["cosine", "cosine_epoch", "constant"])
def test_extra_epochs_restart_the_schedule_and_resume_in_any_block(schedule):
    """train.extra_epochs=[2] after 3 epochs: the 3 planned epochs as without it, then the schedule
    again from train.lr over 2 epochs; a state saved in either block resumes on the same rates."""
    import math

    planned, planned_rates = _extended(schedule, [])
    planned.fit()
    whole, rates = _extended(schedule, [2])
    whole.fit()
    assert rates[:9] == planned_rates and len(rates) == 15
    restart = {"cosine": [0.01 * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(6)],
               "cosine_epoch": [0.01 * (1 + math.cos(math.pi * (k // 3) / 2)) / 2 for k in range(6)],
               "constant": [0.01] * 6}[schedule]
    assert rates[9:] == pytest.approx(restart)
    resumed, after_planned = _extended(schedule, [2])  # the planned run's state, extended by 2 epochs
    resumed.load_state(planned.state(), planned.optimizer.state_dict())
    resumed.fit()
    assert after_planned == rates[9:]
    first, _ = _extended(schedule, [2])  # stopped after the first extra epoch
    for _ in range(4):
        first.train_epoch()
    second, last = _extended(schedule, [2])
    second.load_state(first.state(), first.optimizer.state_dict())
    second.fit()
    assert last == rates[12:]
