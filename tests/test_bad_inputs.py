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


# ---- issue 15: csv and folder sources


def _csv(root: Path, rows: list[str], header: str = "path,label,split") -> list[str]:
    """root/img/<i>.jpg for every listed path, and root/labels.csv; returns the arguments of `data check`."""
    from datatrees import write_images

    write_images(root, sorted({r.split(",")[0].strip() for r in rows if r.startswith("img/")}))
    (root / "labels.csv").write_text("\n".join([header, *rows] if header else rows) + "\n")
    return ["data", "check", "csv", f"data.root={root}", "data.csv.file=labels.csv"]


def _clean_rows() -> list[str]:
    """Two classes, 8 training rows each (img/0..15) and 2 test rows each (img/16..19)."""
    rows = [f"img/{i}.jpg,{'bag' if i < 8 else 'coat'},train" for i in range(16)]
    return rows + [f"img/{i}.jpg,{'bag' if i < 18 else 'coat'},test" for i in range(16, 20)]


def _check_fails(args, capsys, root: Path, *parts: str) -> str:
    before = _snapshot(root)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for part in parts:
        assert part in err, (part, err)
    assert _snapshot(root) == before  # nothing written
    return err


def test_csv_repeated_files_are_named_or_dropped(tmp_path, capsys):
    rows = [*_clean_rows(), "img/3.jpg,bag,test", "img/9.jpg,coat,val", "img/16.jpg,bag,test"]
    args = _csv(tmp_path, rows)
    _check_fails(args, capsys, tmp_path,
                 "labels.csv lists 3 files more than once (img/3.jpg: row 5 (train), row 22 (test); "
                 "img/9.jpg: row 11 (train), row 23 (val); img/16.jpg: row 18 (test), row 24 (test)); 2 of them in "
                 "more than one split, which puts the same image in training and in evaluation. Remove the repeated "
                 "rows, or set data.csv.drop_duplicates=true")
    assert cli.main([*args, "data.csv.drop_duplicates=true"]) == 0
    out = capsys.readouterr().out
    assert "note: data.csv.drop_duplicates: 3 repeated rows of" in out
    assert "(3 files listed more than once, 2 of them in more than one split, kept in test or val only)" in out
    from tailtune.data.sources.base import build_data

    data = build_data(load_config(None, "csv", overrides=[*args[3:], "data.csv.drop_duplicates=true"]).data)
    train, test, val = set(data.train.paths), data.test.paths, set(data.val.paths)
    assert not train & set(test) and not train & val and len(test) == len(set(test)) == 5
    assert str(tmp_path / "img/3.jpg") in test and str(tmp_path / "img/9.jpg") in val


def test_csv_file_with_two_labels_is_an_error_even_when_dropping_duplicates(tmp_path, capsys):
    args = _csv(tmp_path, [*_clean_rows(), "img/2.jpg,coat,train"])
    for extra in ([], ["data.csv.drop_duplicates=true"]):
        _check_fails([*args, *extra], capsys, tmp_path,
                     "labels.csv gives 1 file more than one label (img/2.jpg: row 4 (train, 'bag'), row 22 "
                     "(train, 'coat')): an image has one class; correct or remove the wrong rows.")


def test_csv_typo_labels(tmp_path, capsys):
    rows = _clean_rows()
    args = _csv(tmp_path, [*rows[:15], "img/15.jpg, Bag ,train", *rows[16:]])  # spaces stripped, case differs
    _check_fails(args, capsys, tmp_path, "labels that differ only in case or spaces ('bag' (10 rows, e.g. row 2) and "
                 "'Bag' (1 row, e.g. row 17)) would be separate classes: likely a typo; use one spelling")
    args = _csv(tmp_path, [*rows[:19], "img/19.jpg,handbag,test"])  # a class only in test
    _check_fails(args, capsys, tmp_path, "labels.csv: 1 class in val or test rows but in no training row: "
                 "'handbag' (test rows 21). Nothing can learn to predict such a class")
    args = _csv(tmp_path, [*rows[:15], "img/15.jpg,handbag,train", *rows[16:]])  # a class only in training
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "csv: 3 classes;" in out
    assert "note: 1 class of " in out and "with training rows but no test row: 'handbag' (1 training row, e.g. " \
        "row 17). They are trained and can be predicted, but have no accuracy of their own" in out


@pytest.mark.parametrize("header,note", [
    ("file,class", "(file,class) read as a header (columns: path, label)."),
    ("image, Category ,set", "(image,Category,set) read as a header (columns: path, label, split)."),
    ("img_name,species_name,subset", "(img_name,species_name,subset) read as a header"),
    ("path,label,split", None),
])
def test_csv_headers_are_recognised(tmp_path, capsys, header, note):
    assert cli.main(_csv(tmp_path, _clean_rows(), header)) == 0
    out = capsys.readouterr().out
    assert "csv: 2 classes;" in out  # the header is not a class
    assert (f"note: row 1 of {tmp_path / 'labels.csv'} {note}" in out) if note else "read as a header" not in out


def test_csv_header_errors(tmp_path, capsys):
    _check_fails(_csv(tmp_path, [r.replace(",train", "").replace(",test", "") for r in _clean_rows()], "class,file"),
                 capsys, tmp_path, "labels.csv row 1: the header 'class,file' puts the label first; tailtune reads "
                 "path,label[,split]: swap the first two columns.")
    rows = _clean_rows()
    _check_fails(_csv(tmp_path, [*rows[:10], "file,class,split", *rows[10:]], "file,class,split"), capsys, tmp_path,
                 "labels.csv row 12 repeats the header (file,class,split): were CSV files joined? Remove the row.")


def test_folder_with_a_class_named_train(tmp_path, capsys):
    from datatrees import class_tree

    class_tree(tmp_path / "d", [8, 8])
    (tmp_path / "d" / "c1").rename(tmp_path / "d" / "train")
    (tmp_path / "d" / "c0").rename(tmp_path / "d" / "bus")
    args = ["data", "check", "folder", f"data.root={tmp_path / 'd'}"]
    _check_fails(args, capsys, tmp_path, "holds train/ beside other folders (bus/): train/ could be the training "
                 "split (the other folders would then be ignored) or a class named 'train'. If it is a class, set "
                 "data.folder.layout=classes")
    assert cli.main([*args, "data.folder.layout=classes"]) == 0
    assert "folder: 2 classes;" in capsys.readouterr().out
    (tmp_path / "d" / "bus").rename(tmp_path / "bus")  # train/ alone, holding images: a class or the split?
    _check_fails(args, capsys, tmp_path, f"{tmp_path / 'd' / 'train'} holds images itself (8, e.g. 0.jpg, 1.jpg, "
                 "2.jpg, 3.jpg, 4.jpg and 3 more), not one folder per class: if 'train' is a class, set "
                 "data.folder.layout=classes")
    (tmp_path / "bus").rename(tmp_path / "d" / "bus")
    (tmp_path / "d" / "train").rename(tmp_path / "d" / "test")  # no train/, a class folder named like a split
    _check_fails(args, capsys, tmp_path, "has no train/ folder but class folders named like splits (test/)")
    _check_fails([*args, "data.folder.layout=splits"], capsys, tmp_path,
                 "data.folder.layout=splits but", "has no train/ folder")
    _check_fails([*args, "data.folder.layout=flat"], capsys, tmp_path, "data.folder.layout", "flat")


def test_folder_names_the_files_it_does_not_read(tmp_path, capsys):
    from datatrees import class_tree, jpeg_bytes
    from tailtune.data.base import IMAGE_SUFFIXES
    from tailtune.inference import predict

    class_tree(tmp_path / "d", [8, 8])
    (tmp_path / "d" / "stray.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "d" / "c0" / "photo.heic").write_bytes(b"heic")
    (tmp_path / "d" / "c1" / "notes.txt").write_text("x")
    (tmp_path / "d" / "c1" / ".DS_Store").write_bytes(b"")  # hidden: not worth a word
    from PIL import Image

    Image.new("L", (8, 8), 90).save(tmp_path / "d" / "c1" / "grey.pgm")  # read, as predict reads it
    assert cli.main(["data", "check", "folder", f"data.root={tmp_path / 'd'}"]) == 0
    out = capsys.readouterr().out
    assert "train 11, val 2, test 4 images" in out  # 17 images: the .pgm is one
    assert (f"note: 3 files under {tmp_path / 'd'} not read: 1 image outside the class folders; 2 with an extension "
            "not read as an image (.heic 1, .txt 1); e.g. stray.jpg, c0/photo.heic, c1/notes.txt. Images are read "
            "from root/<class>/ with the extensions .jpg .jpeg") in out
    assert predict.IMAGE_SUFFIXES is IMAGE_SUFFIXES and ".pgm" in IMAGE_SUFFIXES


# ---- issue 15: checkpoints
# A run's checkpoint.safetensors carries a sha256 of its contents and the class names it was trained
# for: a damaged or edited file, one from another run, or one holding NaN never predicts (exit 2, the
# file named, nothing written); a file written before the checksum loads with a note. `eval` that
# does not reproduce metrics.json exits 1 and names what differs.


def _image(tmp_path: Path) -> Path:
    import numpy as np
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def _resave(run: Path, dst: Path, classnames=None, edit=None, old_format: bool = False) -> Path:
    """A copy of ``run`` whose checkpoint is written again: for other classes (``classnames``, as
    a run on another dataset would), with tensors changed by ``edit``, or the way tailtune wrote
    checkpoints before the checksum (``old_format``)."""
    import json

    from tailtune.runtime.checkpoint import read_snapshot, save_checkpoint, write_safetensors

    _clone(run, dst)
    meta, tensors = read_snapshot(run / "checkpoint.safetensors", "test")
    if edit:
        edit(tensors)
    path = dst / "checkpoint.safetensors"
    if old_format:
        write_safetensors(path, tensors, {k: meta[k] for k in ("format", "config", "backbone", "num_classes")})
    else:
        save_checkpoint(path, tensors, meta["config"], json.loads(meta["backbone"]),
                        classnames or json.loads(meta["classnames"]), "run /elsewhere/b on dataset other")
    return dst


def _predict_refused(run_dir: Path, tmp_path: Path, capsys, pattern: str) -> None:
    import re

    image = _image(tmp_path)
    before = _snapshot(run_dir)
    capsys.readouterr()
    assert cli.main(["predict", str(run_dir), str(image), "--device", "cpu"]) == 2
    out = capsys.readouterr()
    assert re.search(pattern, out.err), out.err
    assert "%" not in out.out  # no prediction printed
    assert _snapshot(run_dir) == before


def test_checkpoint_with_a_flipped_byte_never_predicts(run, tmp_path, capsys):
    other = _clone(run, tmp_path / "o")
    path = other / "checkpoint.safetensors"
    data = bytearray(path.read_bytes())
    assert len(data) - 1 >= 8 + int.from_bytes(data[:8], "little")  # in the tensors' data, not the header
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    _predict_refused(other, tmp_path, capsys, rf"error: checkpoint {path} is damaged or edited: its contents do not "
                                              r"match the sha256 checksum written with it\. Restore")
    from tailtune.inference.export import export_run

    for use in (tailtune.load_run, lambda d: export_run(d, tmp_path / "export")):
        with pytest.raises(CheckpointError, match="damaged or edited"):
            use(other)
    assert not (tmp_path / "export").exists()


def test_checkpoint_of_another_run_with_other_classes_is_refused(run, tmp_path, capsys):
    import json

    names = json.loads((run / "metrics.json").read_text())["data"]["classnames"]
    others = [*names[:3], "Coat", *names[4:]]  # same backbone, method and class count; class 3 differs
    other = _resave(run, tmp_path / "o", classnames=others)
    _predict_refused(other, tmp_path, capsys,
                     rf"checkpoint {other / 'checkpoint.safetensors'} was saved for other classes \(run /elsewhere/b "
                     rf"on dataset other\): its class 3 is 'Coat', in run {other} \(metrics\.json, dataset synthetic\) "
                     rf"it is '{names[3]}'\. It holds another run's weights")
    with pytest.raises(CheckpointError, match=rf"its class 3 is 'Coat', in the dataset synthetic of run {other} it is"):
        tailtune.load_run(other)


@pytest.mark.parametrize("old_format", [False, True])
def test_checkpoint_holding_nan_never_predicts(run, tmp_path, capsys, old_format):
    def poison(tensors):
        tensors["head.weight"].view(-1)[0] = float("nan")

    other = _resave(run, tmp_path / "o", edit=poison, old_format=old_format)
    _predict_refused(other, tmp_path, capsys, r"head\.weight holds 1 non-finite value\(s\) \(NaN or infinity\)")


def test_checkpoint_written_before_checksums_still_loads(run, tmp_path, capsys):
    old = _resave(run, tmp_path / "o", old_format=True)
    assert "sha256" not in (old / "checkpoint.safetensors").read_bytes()[:4096].decode("latin-1")
    image = _image(tmp_path)
    capsys.readouterr()
    assert cli.main(["predict", str(old), str(image), "--device", "cpu", "--json"]) == 0
    out = capsys.readouterr().out
    assert f"note: checkpoint {old / 'checkpoint.safetensors'} carries no checksum" in out
    assert cli.main(["predict", str(run), str(image), "--device", "cpu", "--json"]) == 0
    assert out.split("\n", 1)[1] == capsys.readouterr().out  # the same predictions as the run's own file
    assert cli.main(["eval", str(old), "-q"]) == 0
    assert "matches metrics.json" in capsys.readouterr().out


def test_eval_that_does_not_reproduce_metrics_json_exits_1(run, tmp_path, capsys):
    import json

    other = _clone(run, tmp_path / "o")
    metrics = json.loads((other / "metrics.json").read_text())
    was = metrics["test"]["overall"]
    metrics["test"]["overall"] = was + 1.0
    (other / "metrics.json").write_text(json.dumps(metrics))
    before = _snapshot(other)
    capsys.readouterr()
    assert cli.main(["eval", str(other), "-q"]) == 1
    err = capsys.readouterr().err
    assert (f"error: re-evaluating {other} (test split, tte none, fp32) does not reproduce its metrics.json: "
            f"overall {was:.6g} (saved {was + 1.0:.6g}). The model, the data or the software changed") in err, err
    assert cli.main(["eval", str(other), "-q", "--json"]) == 1  # also when the metrics are printed as JSON
    assert json.loads(capsys.readouterr().out)["overall"] == was
    # Other protocols measure something else: expected to differ, not a reproduction check.
    assert cli.main(["eval", str(other), "-q", "--tte", "fivecrop"]) == 0
    assert cli.main(["eval", str(other), "-q", "--split", "train"]) == 0
    assert "does not reproduce" not in capsys.readouterr().err
    assert _snapshot(other) == before
    assert cli.main(["eval", str(run), "-q"]) == 0  # the run's own metrics.json: reproduced
    assert "matches metrics.json" in capsys.readouterr().out


# --- resumed runs and locks (issue 15: 9, 10) ---

import json as _json  # noqa: E402
import shutil as _shutil  # noqa: E402
import socket as _socket  # noqa: E402
import subprocess as _subprocess  # noqa: E402
import sys as _sys  # noqa: E402

_RESUMABLE = ["train.epochs=2", "train.precision=fp32", "head.init=random", "eval.tte=none", "eval.gap_per_class=0"]


def _history(metrics: dict) -> list:
    return [(h["loss"], h["accuracy"], h["lr"], h["images"]) for h in metrics["history"]]


@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A 2-epoch run stopped after its first epoch's save (state kept, no lock left), and the same run
    uninterrupted (its metrics)."""
    import tailtune.runs.run as run_module
    from conftest import TINY_CLIP

    out = tmp_path_factory.mktemp("resumable")
    overrides = [*TINY_CLIP, f"output_dir={out}", *_RESUMABLE]
    reference = tailtune.fit(load_config("lift", overrides=[*overrides, "name=whole"]))
    real = run_module.save_state

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # the process stops right after the state of epoch 1 is saved

    run_module.save_state = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            tailtune.fit(load_config("lift", overrides=[*overrides, "name=stopped"]))
    finally:
        run_module.save_state = real
    stopped = out / "stopped"
    assert (stopped / "train_state.safetensors").is_file() and not (stopped / "run.lock").exists()
    return stopped, reference, overrides


def _copy(run: Path, dst: Path, edit=None) -> Path:
    _shutil.copytree(run, dst)
    if edit:
        (dst / "config.yaml").write_text(edit((dst / "config.yaml").read_text()))
    return dst


def _train(capsys, *args) -> tuple[int, str]:
    code = cli.main(["train", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("edit,named", [
    (lambda s: s.replace("lr: 0.01\n", "lr: 0.1\n"), ["train.lr 0.01 -> 0.1"]),
    (lambda s: s.replace("epochs: 2\n", "epochs: 4\n"), ["train.epochs 2 -> 4", "--extend-epochs N"]),
    (lambda s: s.replace("lr: 0.01\n", "lr: 0.1\n").replace("seed: 0\n", "seed: 3\n").replace("name: la", "name: ce"),
     ["loss.name 'la' -> 'ce'", "train.lr 0.01 -> 0.1", "train.seed 0 -> 3"]),
    (lambda s: s.replace("extra_epochs: []", "extra_epochs: []\n  deterministic_typo: 1"), None),
])
def test_resume_refuses_a_config_yaml_changed_in_what_the_run_computes(resumable, tmp_path, capsys, edit, named):
    """A hand-edited config.yaml that would change the result: exit 2, every changed key named with its
    saved and new value, the two ways out; nothing in the folder written."""
    run = _copy(resumable[0], tmp_path / "edited", edit)
    before = _snapshot(run)
    code, err = _train(capsys, "--resume", str(run))
    assert code == 2 and err.count("\n") == 1
    if named is None:  # an unknown key is refused by the config's own check
        assert "unknown config key 'train.deterministic_typo'" in err
    else:
        assert "was changed since the run's training state was saved" in err
        for text in named:
            assert text in err
        assert "Put the saved values back in config.yaml" in err and "in another folder" in err
    assert _snapshot(run) == before


def test_resume_takes_harmless_changes_with_a_note_and_the_same_numbers(resumable, tmp_path, capsys):
    stopped, reference, _ = resumable
    run = _copy(stopped, tmp_path / "harmless",
                lambda s: s.replace("num_workers: 0", "num_workers: 2").replace("log_every: 1", "log_every: 5"))
    code, err = _train(capsys, "--resume", str(run))
    assert code == 0, err
    log = (run / "log.txt").read_text()
    assert "changes data.num_workers 0 -> 2 since the state was saved: taken (loader processes" in log
    assert "changes train.log_every 1 -> 5" in log
    assert _history(_json.loads((run / "metrics.json").read_text())) == _history(reference)
    assert not (run / "run.lock").exists()


def test_every_config_key_is_classified_for_resume():
    """The allow-list names real keys, is exactly the expected set, and every other key (a new one
    included) counts as changing the result."""
    from tailtune.config.changes import HARMLESS_ON_RESUME, changes_result, flat

    keys = set(flat(tailtune.config.schema()()))
    assert set(HARMLESS_ON_RESUME) <= keys
    assert set(HARMLESS_ON_RESUME) == {"quiet", "overwrite", "output_dir", "name", "data.num_workers",
                                       "train.log_every", "train.save_every", "eval.report", "model.cache_dir"}
    for key in keys:
        assert changes_result(key) == (key not in HARMLESS_ON_RESUME)
    assert changes_result("train.some_key_added_later")
    for key in ("train.lr", "train.epochs", "train.extra_epochs", "peft.lr", "train.device", "data.root",
                "eval.tte", "train.seed", "loss.name"):
        assert changes_result(key)


def test_extend_epochs_trains_longer_on_a_defined_schedule_and_says_so(resumable, tmp_path, capsys):
    """--extend-epochs 1: the 2 planned epochs exactly as the uninterrupted run, then one more with
    the schedule restarted from train.lr; config.yaml, log and report say so; the same numbers as a
    run planned with train.extra_epochs=[1]."""
    stopped, reference, overrides = resumable
    run = _copy(stopped, tmp_path / "longer")
    code, err = _train(capsys, "--resume", str(run), "--extend-epochs", "1")
    assert code == 0, err
    metrics = _json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 3 and _history(metrics)[:2] == _history(reference)
    assert metrics["history"][2]["lr"] == pytest.approx(0.01)  # restarted (cosine_epoch: its first epoch's rate)
    saved = tailtune.config.from_yaml_text((run / "config.yaml").read_text())
    assert saved.train.epochs == 2 and saved.train.extra_epochs == [1]
    log = (run / "log.txt").read_text()
    assert "extended: train.extra_epochs=[1] (3 epochs in all" in log
    assert "epoch 3: the learning-rate schedule (cosine_epoch) starts again from lr 0.01 over 1 epochs" in log
    assert "2 epochs + 1 extra (extended; the learning-rate schedule restarted from train.lr" in (run / "report.html").read_text()
    planned = tailtune.fit(load_config("lift", overrides=[*overrides, "name=planned", "train.extra_epochs=[1]"]))
    assert _history(planned) == _history(metrics) and planned["test"] == metrics["test"]


def test_an_extension_not_yet_in_the_saved_state_is_continued(resumable, tmp_path, capsys):
    """Stopped after --extend-epochs wrote config.yaml but before the state was saved again: a plain
    --resume continues the extension (named in a note) rather than refusing it."""
    run = _copy(resumable[0], tmp_path / "pending", lambda s: s.replace("extra_epochs: []", "extra_epochs:\n  - 1"))
    code, err = _train(capsys, "--resume", str(run))
    assert code == 0, err
    assert "extends the run by [1] epochs (train.extra_epochs [] -> [1]" in (run / "log.txt").read_text()
    assert len(_json.loads((run / "metrics.json").read_text())["history"]) == 3


@pytest.mark.parametrize("args,pattern", [
    (["--extend-epochs", "0"], r"--extend-epochs 0: give the number of epochs to add, >= 1"),
    (["--extend-epochs", "-2"], r"--extend-epochs -2: give the number of epochs to add, >= 1"),
    (["--extend-epochs", "2", "train.epochs=3"], r"--extend-epochs N extends an interrupted run: tailtune train "
                                                 r"--resume RUN_DIR --extend-epochs N"),
])
def test_extend_epochs_misuse(capsys, args, pattern, tmp_path):
    code = cli.main(["train", *args, f"output_dir={tmp_path}"] if "train.epochs=3" in args else
                    ["train", "--resume", str(tmp_path), *args])
    assert code == 2
    import re
    assert re.search(pattern, capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


def test_extend_epochs_of_a_finished_run_is_refused(run, tmp_path, capsys):
    before = _snapshot(run)
    code, err = _train(capsys, "--resume", str(run), "--extend-epochs", "2")
    assert code == 2 and "holds a finished run: its training state was removed when it finished" in err
    assert "Train a new run in another folder (name=...) with train.epochs=3" in err
    assert _snapshot(run) == before


def _lock(run: Path, **owner) -> Path:
    lock = run / "run.lock"
    lock.write_text(_json.dumps({"pid": os.getpid(), "host": _socket.gethostname(), "process_start": None,
                                 "since": "2025-01-02 03:04:05 +0000", "command": "tailtune train X", **owner}))
    return lock


def test_a_run_folder_in_use_by_a_running_process_is_refused(resumable, tmp_path, capsys):
    """--resume, a new train into the folder and `tailtune report` are refused by name (PID, host,
    since when, what to do), --break-lock included; nothing written."""
    alive = _subprocess.Popen([_sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = _copy(resumable[0], tmp_path / "busy")
        _lock(run, pid=alive.pid)
        before = _snapshot(run)
        for args in (["--resume", str(run)], ["--resume", str(run), "--break-lock"]):
            code, err = _train(capsys, *args)
            assert code == 2, err
            assert (f"run folder {run} is in use by process {alive.pid} on host {_socket.gethostname()} since "
                    f"2025-01-02 03:04:05 +0000 (tailtune train X)") in err
            assert f"Wait for it to end, or stop it (kill {alive.pid})" in err
        overrides = [o for o in resumable[2] if not o.startswith("output_dir=")]
        code, err = _train(capsys, "-r", "lift", *overrides, f"output_dir={run.parent}", "name=busy")
        assert code == 2 and f"is in use by process {alive.pid}" in err
        assert _snapshot(run) == before
    finally:
        alive.kill()
        alive.wait()


def test_report_waits_for_the_process_writing_the_run(run, tmp_path, capsys):
    alive = _subprocess.Popen([_sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = _clone(run, tmp_path / "r")
        _lock(folder, pid=alive.pid)
        before = _snapshot(folder)
        assert cli.main(["report", str(folder)]) == 2
        err = capsys.readouterr().err
        assert f"is in use by process {alive.pid}" in err and _snapshot(folder) == before
    finally:
        alive.kill()
        alive.wait()
    assert cli.main(["report", str(folder)]) == 0  # the owner is gone: its lock is taken over, then released
    assert "which no longer runs (killed or crashed); its lock is taken over" in capsys.readouterr().out
    assert not (folder / "run.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_named_and_taken_over(resumable, tmp_path, capsys):
    dead = _subprocess.Popen([_sys.executable, "-c", "pass"])
    dead.wait()
    run = _copy(resumable[0], tmp_path / "stale")
    _lock(run, pid=dead.pid)
    code, err = _train(capsys, "--resume", str(run))
    assert code == 0, err
    note = (f"note: run folder {run} was locked by process {dead.pid} on host {_socket.gethostname()} since "
            "2025-01-02 03:04:05 +0000 (tailtune train X), which no longer runs (killed or crashed); its lock is "
            "taken over.")
    assert note in (run / "log.txt").read_text()
    assert (run / "metrics.json").is_file() and not (run / "run.lock").exists()


def test_a_reused_pid_is_not_the_locks_owner(resumable, tmp_path, capsys):
    """The lock's PID runs, but as another process (started at another time): stale."""
    run = _copy(resumable[0], tmp_path / "reused")
    _lock(run, pid=os.getppid(), process_start="1")
    code, err = _train(capsys, "--resume", str(run))
    assert code == 0, err
    assert "which no longer runs" in (run / "log.txt").read_text()


def test_a_lock_of_another_host_needs_break_lock(resumable, tmp_path, capsys):
    run = _copy(resumable[0], tmp_path / "remote")
    lock = _lock(run, pid=1234, host="gpu-node-7")
    before = _snapshot(run)
    code, err = _train(capsys, "--resume", str(run))
    assert code == 2
    assert (f"run folder {run} is locked by process 1234 on host gpu-node-7 since 2025-01-02 03:04:05 +0000 "
            f"(tailtune train X); from this host ({_socket.gethostname()}) tailtune cannot tell whether that "
            f"process still runs. If it does not, delete {lock} (or pass --break-lock), and run the command "
            "again.") in err
    assert _snapshot(run) == before
    code, err = _train(capsys, "--resume", str(run), "--break-lock")
    assert code == 0, err
    assert "the lock of process 1234 on host gpu-node-7" in (run / "log.txt").read_text()
    assert not lock.exists()


def test_an_unreadable_lock_is_refused_until_broken(resumable, tmp_path, capsys):
    run = _copy(resumable[0], tmp_path / "garbled")
    (run / "run.lock").write_text("{not json")
    code, err = _train(capsys, "--resume", str(run))
    assert code == 2 and "holds a lock" in err and "that cannot be read" in err and "--break-lock" in err
    code, err = _train(capsys, "--resume", str(run), "--break-lock")
    assert code == 0, err


def test_the_lock_is_released_when_a_run_fails(tiny_overrides, tmp_path):
    """An error after the lock was taken (here: missing dataset files) leaves no lock and no folder."""
    cfg = _cfg(tiny_overrides, "name=failed", "data.name=cifar100_lt", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="not found"):
        tailtune.fit(cfg)
    assert not (tmp_path / "runs" / "failed").exists()


def test_resume_of_a_folder_that_is_no_run_writes_no_lock(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _train(capsys, "--resume", str(tmp_path / "empty"))
    assert code == 2 and "is not a tailtune run folder" in err
    assert not any((tmp_path / "empty").iterdir())
