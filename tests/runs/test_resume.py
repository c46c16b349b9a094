"""Resume after a kill, signals, non-finite losses, and torchrun (2 processes, gloo on CPU)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tailtune
from conftest import TINY_CLIP
from tailtune.config import load_config
from tailtune.errors import CheckpointError
from tailtune.runtime.rundir import STATE
from tailtune.training.state import load_state
from tailtune.training.trainer import NonFiniteLoss

pytestmark = pytest.mark.slow

# Big enough that training lasts a few seconds (so a kill lands mid-epoch), small enough to be quick.
# fp32 on every CPU: these tests compare runs number for number (and 1 with 2 processes, where bf16
# autocast with another reduction order moved the losses by 0.012); auto would pick bf16 on a CPU
# with native bf16 and fp32 elsewhere.
RUN = [*TINY_CLIP, "data.synthetic.train_per_class=162", "data.imb_ratio=4", "data.synthetic.test_per_class=4", "train.epochs=3", "train.batch_size=8",
       "train.micro_batch_size=4", "eval.tte=none", "head.init=random", "train.precision=fp32"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tailtune.cli", *args]


def _numbers(metrics: dict) -> dict:
    """What must be identical between an interrupted-and-resumed and an uninterrupted run."""
    return {"test": metrics["test"], "history": [(h["loss"], h["accuracy"], h["lr"], h["images"])
                                                 for h in metrics["history"]]}


def _wait_for_state(path: Path, proc: subprocess.Popen, min_epoch: int, min_epoch_step: int, timeout=240):
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "training finished before it could be interrupted"
        if path.exists():
            try:
                counters = load_state(path)["counters"]
            except CheckpointError:  # being replaced right now: read again
                counters = None
            if counters and counters["epoch"] >= min_epoch and counters["epoch_step"] >= min_epoch_step:
                return counters
        time.sleep(0.005)
    raise AssertionError("no training state appeared in time")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    proc = subprocess.run(_cli("train", "-r", "lift", *RUN, f"output_dir={out}", "name=ref"), env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "ref" / "metrics.json").read_text())


def test_sigkill_mid_epoch_then_resume_gives_identical_metrics(reference, tmp_path):
    run = tmp_path / "k"
    proc = subprocess.Popen(_cli("train", "-r", "lift", *RUN, "train.save_every=1", f"output_dir={tmp_path}",
                                 "name=k"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    counters = _wait_for_state(run / STATE, proc, min_epoch=1, min_epoch_step=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists() and counters["epoch_step"] > 0
    # a second plain start of the same run is refused, pointing at --resume
    again = subprocess.run(_cli("train", "-r", "lift", *RUN, "train.save_every=1", f"output_dir={tmp_path}",
                                "name=k"), env=ENV, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr
    done = subprocess.run(_cli("train", "--resume", str(run)), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((run / "metrics.json").read_text())
    assert _numbers(resumed) == _numbers(reference)
    assert "resumed from epoch" in (run / "log.txt").read_text()


def test_sigterm_saves_and_says_how_to_resume(reference, tmp_path):
    run = tmp_path / "t"
    proc = subprocess.Popen(_cli("train", "-r", "lift", *RUN, f"output_dir={tmp_path}", "name=t"),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_state(run / STATE, proc, min_epoch=1, min_epoch_step=0)  # the state written at the end of epoch 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"tailtune train --resume {run}" in err and f"--resume {run}" in (run / "log.txt").read_text()
    state = load_state(run / STATE)["counters"]
    assert state["epoch"] >= 1
    done = subprocess.run(_cli("train", "--resume", str(run)), env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert _numbers(json.loads((run / "metrics.json").read_text())) == _numbers(reference)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_state(tiny_overrides, tmp_path):
    cfg = load_config("lift", overrides=[*tiny_overrides, "train.lr=1e30", "train.precision=fp32", "name=nan",
                                         "train.epochs=2", "peft.method=full"])
    with pytest.raises(NonFiniteLoss, match=r"the loss became (nan|inf) at epoch \d+, step \d+"):
        tailtune.fit(cfg)
    skip = load_config("lift", overrides=[*tiny_overrides, "train.lr=1e30", "train.precision=fp32",
                                          "name=skip", "train.on_nan=skip", "peft.method=full"])
    metrics = tailtune.fit(skip)
    assert metrics["history"][0]["skipped_steps"] > 0
    assert "step skipped" in (tmp_path / "runs" / "skip" / "log.txt").read_text()


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "tailtune.cli", *args]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = subprocess.run(_torchrun("train", "-r", "lift", *RUN, f"output_dir={out}", "name=ddp"), env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "ddp"


def test_two_processes_match_one_process(reference, two_process_run):
    """Same global batch, gradients averaged by DDP: the same training up to float summation order."""
    ddp = json.loads((two_process_run / "metrics.json").read_text())
    assert ddp["test"]["num_samples"] == reference["test"]["num_samples"]  # nothing dropped or doubled
    for a, b in zip(ddp["history"], reference["history"]):
        assert a["images"] == b["images"]
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)  # fp32; only the reduction order differs
    assert abs(ddp["test"]["overall"] - reference["test"]["overall"]) <= 100 / 24 + 1e-9  # at most one image
    assert ddp["distributed"]["world_size"] == 2
    assert len(list(two_process_run.glob("log*.txt"))) == 1  # rank 0 logs alone


def test_resume_under_torchrun(two_process_run, tmp_path):
    run = tmp_path / "k2"
    proc = subprocess.Popen(_torchrun("train", "-r", "lift", *RUN, "train.save_every=1", f"output_dir={tmp_path}",
                                      "name=k2"), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_for_state(run / STATE, proc, min_epoch=1, min_epoch_step=2)
    # torchrun starts its workers in sessions of their own: kill the launcher and every worker.
    subprocess.run(["pkill", "-9", "-f", f"output_dir={tmp_path}"], check=False)
    proc.wait()
    assert not (run / "metrics.json").exists()
    done = subprocess.run(_torchrun("train", "--resume", str(run)), env=ENV, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert _numbers(json.loads((run / "metrics.json").read_text())) == \
        _numbers(json.loads((two_process_run / "metrics.json").read_text()))
