"""Experiment trackers beside TensorBoard (runtime/trackers): MLflow's local file store and W&B's
offline files, read back; none; a missing package; an unknown name."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

import tailtune
from tailtune.config import load_config
from tailtune.errors import ConfigError
from tailtune.runtime.rundir import TRACKER, NullRun, RunDir

_FAST = ["train.epochs=2", "eval.tte=none", "eval.gap_per_class=0"]


def _tb_scalars(tb: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    """A 2-epoch run with log.tracker=mlflow, stopped after its first epoch's save, then resumed."""
    pytest.importorskip("mlflow")
    import tailtune.runs.run as run_module
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("mlflow")
    cfg = load_config("lift", overrides=[*TINY_CLIP, f"output_dir={out}", "name=run", "log.tracker=mlflow",
                                         "train.precision=fp32", *_FAST])
    real = run_module.save_state

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    run_module.save_state = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            tailtune.fit(cfg)
    finally:
        run_module.save_state = real
    run = out / "run"
    stopped = json.loads((run / TRACKER).read_text())
    metrics = tailtune.resume(run)
    return run, stopped, metrics


def test_mlflow_gets_the_scalars_params_metrics_and_files(mlflow_run):
    from mlflow.tracking import MlflowClient

    run, stopped, metrics = mlflow_run
    record = json.loads((run / TRACKER).read_text())
    assert record["run_id"] == stopped["run_id"]  # the resumed run continued the same MLflow run
    assert record["tracking_uri"] == (run.parent / "mlruns").resolve().as_uri()  # the default store
    client = MlflowClient(record["tracking_uri"])
    got = client.get_run(record["run_id"])
    assert got.info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([got.info.experiment_id])] == [record["run_id"]]

    tb = _tb_scalars(run / "tb")
    assert {"train/loss", "epoch/loss", "epoch/train_acc", "epoch/lr", "test/overall"} <= set(tb)
    for tag, points in tb.items():
        history = client.get_metric_history(record["run_id"], tag)
        got_points = sorted((m.step, m.value) for m in history)
        assert [s for s, _ in got_points] == [s for s, _ in sorted(points)], tag  # the same steps
        assert [v for _, v in got_points] == pytest.approx([v for _, v in sorted(points)], rel=1e-6), tag
    assert len(tb["epoch/loss"]) == 2  # one epoch before the stop, one after the resume

    params = got.data.params
    assert params["log.tracker"] == "mlflow" and params["train.epochs"] == "2"
    assert params["model.name"] == "TT-Tiny-ViT" and params["data.synthetic.num_classes"] == "6"
    assert got.data.metrics["test.overall"] == pytest.approx(metrics["test"]["overall"])
    assert got.data.metrics["test.few"] == pytest.approx(metrics["test"]["few"])

    files = {f.path for f in client.list_artifacts(record["run_id"])}
    assert {"config.yaml", "metrics.json", "report.html", "checkpoint.safetensors", "report"} <= files
    local = Path(client.download_artifacts(record["run_id"], "checkpoint.safetensors", str(run.parent / "dl")))
    assert local.read_bytes() == (run / "checkpoint.safetensors").read_bytes()


def _wandb_records(path: Path):
    """The records of a W&B transaction log (run-*.wandb: LevelDB's log format after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, out, pending = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B"
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:
            break
        pending += chunk
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def _finished_wandb_records(path: Path, timeout: float = 60.0):
    """The log's records once wandb's writer process has written its exit record: the writer
    runs beside the test and may still be appending when the run's finish returns."""
    import time

    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = _wandb_records(path)
            if any(r.WhichOneof("record_type") == "exit" for r in records):
                return records
        except DecodeError:  # a record cut short by the write in progress
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no complete exit record after {timeout:.0f} s")
        time.sleep(0.2)


def test_wandb_offline_writes_config_history_summary_and_files(tiny_overrides, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "home" / var))
    cfg = load_config("lift", overrides=[*tiny_overrides, "log.tracker=wandb", "log.wandb.project=tests"])
    run = RunDir.create(cfg, tmp_path / "run")
    run.track(cfg, resume=False)
    run.scalars(1, {"train/loss": 0.5})
    run.scalars(2, {"train/loss": 0.25, "epoch/loss": 0.4})
    run.write_metrics({"test": {"overall": 75.0, "few": 50.0}, "history": [{"loss": 1.0}]}, step=2)
    run.close(tracker=False)
    run.track_files(["config.yaml", "metrics.json", "absent.html"])

    record = json.loads((tmp_path / "run" / TRACKER).read_text())
    assert record["mode"] == "offline"
    folder = Path(record["dir"]).parent
    assert folder.parent == tmp_path / "run" / "wandb" and folder.name.endswith(record["run_id"])
    records = _finished_wandb_records(folder / f"run-{record['run_id']}.wandb")
    kinds = [r.WhichOneof("record_type") for r in records]
    def items(entries) -> dict:
        return {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in entries}

    # The config travels in the run record or in later config records, as wandb's timing has it.
    config = {k: v for r in records if r.HasField("config") for k, v in items(r.config.update).items()}
    config.update({k: v for r in records if r.HasField("run") for k, v in items(r.run.config.update).items()})
    assert config["log.tracker"] == "wandb" and config["train.epochs"] == 1 and config["data.root"] is None
    history = [items(r.history.item) for r in records if r.HasField("history")]
    assert [(h["_step"], h["train/loss"]) for h in history] == [(1, 0.5), (2, 0.25)]
    assert history[1]["epoch/loss"] == 0.4
    summary = {k: v for r in records if r.HasField("summary") for k, v in items(r.summary.update).items()}
    assert summary["test.overall"] == 75.0 and summary["test.few"] == 50.0
    assert "history.0.loss" not in summary
    assert (folder / "files" / "config.yaml").read_text() == (tmp_path / "run" / "config.yaml").read_text()
    assert (folder / "files" / "metrics.json").is_file() and "exit" in kinds


def test_none_writes_no_tracker_files(tiny_overrides, tmp_path):
    cfg = load_config("lift", overrides=tiny_overrides)
    assert cfg.log.tracker == "none"
    run = RunDir.create(cfg, tmp_path / "run")
    run.track(cfg, resume=False)
    run.scalars(1, {"train/loss": 0.5})
    run.write_metrics({"test": {"overall": 1.0}})
    run.close(tracker=False)
    run.track_files(["config.yaml"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "log.txt", "metrics.json", "tb"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_other_ranks_log_nothing(tiny_overrides, tmp_path):
    cfg = load_config("lift", overrides=[*tiny_overrides, "log.tracker=mlflow"])
    run = NullRun(tmp_path / "run")  # what ranks > 0 get under torchrun
    run.track(cfg, resume=False)
    run.scalars(1, {"train/loss": 0.5})
    run.track_files(["config.yaml"])
    run.close()
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("tracker,package", [("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_package_says_what_to_install(tracker, package, tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    cfg = load_config("lift", overrides=[*tiny_overrides, f"log.tracker={tracker}"])
    run = RunDir.create(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match=rf"log.tracker={tracker} needs the .*pip install 'tailtune\[{tracker}\]'"):
        run.track(cfg, resume=False)
    run.close()
    assert not (tmp_path / "run" / TRACKER).exists()


def test_a_missing_package_fails_before_the_build_and_leaves_no_folder(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = load_config("lift", overrides=[*tiny_overrides, "log.tracker=mlflow", "name=gone"])
    with pytest.raises(ConfigError, match=r"pip install 'tailtune\[mlflow\]'"):
        tailtune.fit(cfg)
    assert not (tmp_path / "runs" / "gone").exists()


def test_an_unknown_tracker_lists_the_choices(tiny_overrides):
    with pytest.raises(ConfigError, match=r"log.tracker='mlfow' is not valid; choose one of none, mlflow, wandb"):
        load_config("lift", overrides=[*tiny_overrides, "log.tracker=mlfow"])
    with pytest.raises(ConfigError, match=r"log.wandb.mode='live' is not valid; choose one of offline, online"):
        load_config("lift", overrides=[*tiny_overrides, "log.wandb.mode=live"])
