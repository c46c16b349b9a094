"""The run folder's names and its one check (runtime/rundir.py)."""

import ast
from pathlib import Path

import pytest

from tailtune.errors import ConfigError
from tailtune.runtime import rundir
from tailtune.runtime.rundir import check_run, read_config, read_metrics

SRC = Path(rundir.__file__).resolve().parents[1]
NAMES = {rundir.CONFIG, rundir.LOG, rundir.TB, rundir.STATE, rundir.SPLITS, rundir.CHECKPOINT,
         rundir.PREDICTIONS, rundir.METRICS, rundir.REPORT, rundir.COMPARISON, rundir.SWEEP}


def test_the_names_are_the_format():
    # Spelled out here on purpose: these names are the format of every run folder written so far.
    assert (rundir.CONFIG, rundir.METRICS, rundir.CHECKPOINT, rundir.STATE, rundir.PREDICTIONS) == (
        "config.yaml", "metrics.json", "checkpoint.safetensors", "train_state.safetensors", "predictions.npz")
    assert (rundir.LOG, rundir.TB, rundir.SPLITS, rundir.REPORT, rundir.FIGURES) == (
        "log.txt", "tb", "splits.json", "report.html", "report")
    assert (rundir.COMPARISON, rundir.SWEEP, rundir.SWEEP_LOGS) == ("comparison.json", "sweep.json", "logs")


def test_only_rundir_spells_a_run_folder_file_name():
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "rundir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert not found, "use the names of tailtune.runtime.rundir:\n" + "\n".join(found)


def test_check_run_says_what_the_folder_is(tmp_path):
    with pytest.raises(ConfigError, match=r"is not a tailtune run folder \(no config.yaml\)"):
        check_run(tmp_path)
    with pytest.raises(ConfigError, match="not a tailtune run folder"):
        read_metrics(tmp_path)
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert check_run(tmp_path, finished=False) == tmp_path
    with pytest.raises(ConfigError, match=r"has no metrics.json \(an unfinished run\): it did not finish\.$"):
        check_run(tmp_path)
    (tmp_path / "train_state.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="`tailtune train --resume .*` continues it"):
        read_metrics(str(tmp_path))
    (tmp_path / "metrics.json").write_text('{"test": {}}')
    assert check_run(str(tmp_path)) == tmp_path
    assert read_metrics(tmp_path) == {"test": {}}


def test_read_config_of_a_folder_without_one(tmp_path):
    with pytest.raises(ConfigError, match="not a tailtune run folder"):
        read_config(tmp_path)
