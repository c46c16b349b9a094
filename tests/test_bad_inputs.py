"""A catalogue of bad inputs: each gets a clear error (what, where, what to do) and leaves disk intact."""

import os
from pathlib import Path

import pytest

import tailtune
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.errors import CheckpointError, ConfigError, DataError, TailtuneError


def _cfg(overrides, *extra):
    return load_config("lift", overrides=[*overrides, *extra])


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


@pytest.mark.parametrize("override,pattern", [
    ("train.epoch=3", r"unknown config key 'train.epoch'.*Did you mean train.epochs"),
    ("train.epochs=three", r"train.epochs.*three"),
    ("train.lr=-1", r"train.lr=-1.0 must be > 0"),
    ("train.batch_size=100", r"batch_size=100 is not divisible by train.micro_batch_size=32"),
])
def test_config_errors(tiny_overrides, override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        _cfg([*tiny_overrides, "train.micro_batch_size=32"], override)


@pytest.mark.parametrize("override,pattern", [
    ("model.name=ViT-Q-16", r"unknown open_clip model 'ViT-Q-16'"),
    ("model.provider=jax", r"unknown model provider 'jax'"),
    ("peft.method=adaptfromer", r"unknown PEFT method 'adaptfromer'.*Did you mean 'adaptformer'"),
    ("loss.name=lq", r"unknown loss 'lq'.*Valid:"),
    ("data.name=cifar10_lt", r"unknown dataset 'cifar10_lt'.*cifar100_lt"),
])
def test_unknown_names(tiny_overrides, override, pattern, tmp_path):
    with pytest.raises(ConfigError, match=pattern):
        tailtune.fit(_cfg(tiny_overrides, override))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_dataset_root(tiny_overrides, tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-100 files .* not found in .*nowhere.*data.download=true"):
        tailtune.build(_cfg(tiny_overrides, "data.name=cifar100_lt", f"data.root={tmp_path / 'nowhere'}"))


def _folder(root: Path, counts, corrupt: bool = False):
    from PIL import Image

    for split, ns in (("train", counts), ("test", [1] * len(counts))):
        for c, n in enumerate(ns):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * c, 0, 0)).save(d / f"{i}.jpg")
    if corrupt:
        (root / "train" / "c0" / "0.jpg").write_bytes(b"\xff\xd8\xff broken jpeg")


def test_empty_class(tiny_overrides, tmp_path):
    _folder(tmp_path / "d", [3, 0])
    with pytest.raises(DataError, match=r"1 classes have no training image \(e.g. c1\)"):
        tailtune.build(_cfg(tiny_overrides, "data.name=folder", f"data.root={tmp_path / 'd'}", "data.imb_ratio=1"))


def test_corrupt_jpeg_names_the_file(tiny_overrides, tmp_path):
    _folder(tmp_path / "d", [3, 2], corrupt=True)
    cfg = _cfg(tiny_overrides, "data.name=folder", f"data.root={tmp_path / 'd'}", "data.imb_ratio=1",
               "head.init=class_mean")
    with pytest.raises(DataError, match=r"c0/0.jpg is corrupt"):
        tailtune.fit(cfg)


def test_label_out_of_range():
    import numpy as np

    from tailtune.data.base import ArrayDataset
    from tailtune.data.sources.base import LTData

    data = LTData(ArrayDataset(np.zeros((2, 4, 4), np.uint8), [0, 5]), ArrayDataset(np.zeros((1, 4, 4), np.uint8), [0]),
                  ["a", "b"], np.zeros(2, int))
    with pytest.raises(DataError, match="train label 5 is out of range for 2 classes"):
        data.check()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("bad")
    tailtune.fit(load_config("lift", overrides=[*TINY_CLIP, "eval.tte=none", f"output_dir={out}", "name=r"]))
    return out / "r"


def _clone(run: Path, dst: Path, edit=lambda s: s, truncate: int | None = None) -> Path:
    dst.mkdir()
    (dst / "config.yaml").write_text(edit((run / "config.yaml").read_text()))
    data = (run / "checkpoint.safetensors").read_bytes()
    (dst / "checkpoint.safetensors").write_bytes(data[:truncate] if truncate else data)
    (dst / "metrics.json").write_text((run / "metrics.json").read_text())
    return dst


def test_checkpoint_for_another_backbone(run, tmp_path):
    other = _clone(run, tmp_path / "o", lambda s: s.replace("name: TT-Tiny-ViT", "name: TT-Tiny-ViT-B"))
    (tmp_path / "TT-Tiny-ViT-B.json").write_text((Path(tailtune.__file__).parent / "models" / "open_clip_configs"
                                                 / "TT-Tiny-ViT.json").read_text())
    import open_clip

    open_clip.add_model_config(tmp_path / "TT-Tiny-ViT-B.json")
    with pytest.raises(CheckpointError, match="trained on backbone .*TT-Tiny-ViT.*but the model is"):
        tailtune.load_run(other)


def test_checkpoint_for_another_class_count(run, tmp_path):
    other = _clone(run, tmp_path / "o", lambda s: s.replace("num_classes: 6", "num_classes: 4"))
    with pytest.raises(CheckpointError, match="has 6 classes, the dataset has 4"):
        tailtune.load_run(other)


def test_truncated_checkpoint(run, tmp_path):
    other = _clone(run, tmp_path / "o", truncate=200)
    before = _snapshot(other)
    with pytest.raises(CheckpointError, match="truncated"):
        tailtune.load_run(other)
    assert _snapshot(other) == before


def test_output_folder_holding_another_run(run, tiny_overrides):
    before = _snapshot(run)
    cfg = _cfg(tiny_overrides, f"output_dir={run.parent}", "name=r")
    with pytest.raises(ConfigError, match="already holds a different run.*overwrite=true"):
        tailtune.fit(cfg)
    assert _snapshot(run) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder_as_user(tiny_overrides, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="cannot write to output folder"):
        tailtune.fit(_cfg(tiny_overrides, f"output_dir={ro}"))


def test_unwritable_output_folder(tiny_overrides, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot write to output folder"):
        tailtune.fit(_cfg(tiny_overrides, f"output_dir={blocker}"))
    assert blocker.read_text() == "not a folder"


def test_every_error_is_a_tailtune_error_in_the_cli(tiny_overrides, capsys):
    assert cli.main(["train", "-r", "lift", *tiny_overrides, "peft.method=bn_tuning"]) == 2
    err = capsys.readouterr().err
    assert "bn_tuning" in err and "Traceback" not in err
    assert issubclass(ConfigError, TailtuneError)


def test_same_finished_run_is_refused_and_a_failed_one_reused(run, tmp_path):
    from tailtune.config import from_yaml_text, to_yaml

    cfg = from_yaml_text((run / "config.yaml").read_text())
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="already holds this run, finished"):
        tailtune.fit(cfg)
    assert _snapshot(run) == before
    failed = _clone(run, tmp_path / "failed")
    (failed / "metrics.json").unlink()
    (failed / "checkpoint.safetensors").unlink()
    cfg.output_dir, cfg.name = str(tmp_path), "failed"
    (failed / "config.yaml").write_text(to_yaml(cfg))
    assert tailtune.fit(cfg)["test"]["num_samples"] == 24


def test_data_is_checked_before_any_model_is_built(monkeypatch, tmp_path):
    """A missing image folder is said at once, not after a model download."""
    import open_clip

    def no_download(*args, **kwargs):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(open_clip, "create_model", no_download)
    with pytest.raises(DataError, match="does not exist"):
        tailtune.build(load_config("lift", "folder", overrides=[f"data.root={tmp_path / 'missing'}"]))
