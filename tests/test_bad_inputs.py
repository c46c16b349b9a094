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


# --- predict, export and compare (issue 15: 13, 13b) ---
# A command's --device / --precision that this machine cannot do is named as that option (not the
# train.* / eval.* key it sets); a run trained in fp16 loads and exports on a CPU; `predict` on a
# folder with unreadable files predicts the others, names every bad file and exits 1; `export` to a
# path named like a model file is refused before anything is written; `compare` of runs tested on
# different test sets warns (console, report.html, comparison.json) and marks nothing best across them.


def _no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_predict_and_eval_device_errors_name_the_option(run, tmp_path, capsys, monkeypatch):
    _no_cuda(monkeypatch)
    image = _image(tmp_path)
    before = _snapshot(run)
    for args, want in [
        (["predict", str(run), str(image), "--device", "cuda"],
         "error: --device cuda but CUDA is not available here; use --device cpu or --device auto."),
        (["predict", str(run), str(image), "--device", "gpu"],
         "error: --device gpu is not a device; use auto, cpu, cuda or cuda:N."),
        (["predict", str(run), str(image), "--device", "cpu", "--precision", "fp16"],
         "error: --precision fp16 is not supported on CPU; use bf16 or fp32."),
        (["eval", str(run), "-q", "--device", "cuda:1"],
         "error: --device cuda:1 but CUDA is not available here; use --device cpu or --device auto."),
        (["eval", str(run), "-q", "--precision", "fp16"],
         "error: --precision fp16 is not supported on CPU; use bf16 or fp32."),
    ]:
        capsys.readouterr()
        assert cli.main(args) == 2, args
        out = capsys.readouterr()
        assert out.err.strip() == want and "train." not in out.err and "%" not in out.out
    with pytest.raises(ConfigError, match=r"^device=cuda but CUDA is not available here; use device=cpu"):
        tailtune.load(run, device="cuda")
    assert _snapshot(run) == before


def test_run_trained_on_a_gpu_in_fp16_evaluates_predicts_and_exports_on_a_cpu(run, tmp_path, capsys, monkeypatch):
    _no_cuda(monkeypatch)
    other = _clone(run, tmp_path / "o", lambda s: s.replace("device: cpu", "device: cuda")
                   .replace("precision: fp32", "precision: fp16").replace("device: auto", "device: cuda"))
    assert "device: cuda" in (other / "config.yaml").read_text()
    image = _image(tmp_path)
    capsys.readouterr()
    assert cli.main(["eval", str(other), "-q"]) == 2  # its own device: the run is named, and the way out
    err = capsys.readouterr().err
    assert err.startswith(f"error: run {other} computes on its config's train.device=cuda but CUDA is not available "
                          "here; use train.device=cpu or train.device=auto; or give another device for this "
                          "evaluation (--device cpu"), err
    assert cli.main(["predict", str(other), str(image), "--device", "cpu"]) == 2  # its own precision: fp16
    err = capsys.readouterr().err
    assert f"error: run {other} evaluates in fp16 (eval.precision=fp16 in its config), which is not supported " \
           "on CPU; give another precision (fp32 or bf16: --precision fp32" in err, err
    assert cli.main(["predict", str(other), str(image), "--device", "cpu", "--precision", "fp32", "-q"]) == 0
    assert "1. " in capsys.readouterr().out
    assert cli.main(["eval", str(other), "-q", "--device", "cpu", "--precision", "fp32"]) == 0
    assert "matches metrics.json" in capsys.readouterr().out
    # export builds on the CPU in fp32 whatever the run used; config.json keeps the run's own precision
    assert cli.main(["export", str(other), str(tmp_path / "exp"), "--no-onnx"]) == 0
    import json

    meta = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert meta["config"]["eval"]["precision"] == "fp16" and meta["config"]["train"]["device"] == "auto"
    with pytest.raises(ConfigError, match=rf"export {tmp_path / 'exp'} evaluates in fp16"):
        tailtune.load(tmp_path / "exp", device="cpu")
    assert tailtune.load(tmp_path / "exp", device="cpu", precision="fp32").predict(image)[0].names


def _images(folder: Path, n: int, bad: list[int]) -> list[Path]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        if i in bad:
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        files.append(path)
    return files


def test_predict_on_a_folder_with_a_corrupt_image_predicts_the_rest(run, tmp_path, capsys):
    import json

    files = _images(tmp_path / "imgs", 4, bad=[2])
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(tmp_path / "imgs"), "--device", "cpu", "-q", "-k", "1"]) == 1
    out = capsys.readouterr()
    blocks = [line for line in out.out.splitlines() if not line.startswith(" ")]
    assert blocks == [str(files[i]) for i in (0, 1, 3)]  # the others are predicted
    assert out.err.startswith(f"error: 1 of 4 images cannot be read: {files[2]} is not a readable image (")
    assert out.err.rstrip().endswith("The other images are predicted above; replace or remove the unreadable files.")
    # the same predictions as without the bad file
    assert cli.main(["predict", str(run), *map(str, [files[0], files[1], files[3]]), "--device", "cpu", "-q",
                     "-k", "1"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith(" ")] == \
           [line for line in out.out.splitlines() if line.startswith(" ")]
    assert cli.main(["predict", str(run), str(tmp_path / "imgs"), "--device", "cpu", "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert [sorted(g) for g in got] == [["image", "top"]] * 2 + [["error", "image"]] + [["image", "top"]]
    assert got[2]["image"] == str(files[2]) and "is not a readable image" in got[2]["error"]
    # the Python API: an error naming them, or (skip_unreadable) a Prediction with the error
    predictor = tailtune.load(run, device="cpu")
    with pytest.raises(DataError, match=rf"^1 of 4 images cannot be read: {files[2]} is not a readable image"):
        predictor.predict(tmp_path / "imgs")
    preds = predictor.predict(tmp_path / "imgs", skip_unreadable=True)
    assert [p.error is None for p in preds] == [True, True, False, True] and preds[2].names == []


def test_predict_names_every_unreadable_file_up_to_ten(run, tmp_path, capsys):
    files = _images(tmp_path / "imgs", 14, bad=list(range(1, 13)))
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(tmp_path / "imgs"), "--device", "cpu", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 12 of 14 images cannot be read: ")
    assert all(str(files[i]) in err for i in range(1, 11)) and str(files[11]) not in err and "; and 2 more." in err
    _images(tmp_path / "all_bad", 2, bad=[0, 1])  # nothing readable: nothing predicted, exit 2
    assert cli.main(["predict", str(run), str(tmp_path / "all_bad"), "--device", "cpu", "-q"]) == 2
    out = capsys.readouterr()
    assert out.err.startswith("error: 2 of 2 images cannot be read: ") and out.out.strip() == ""


def test_predict_help_gives_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 every image predicted; 1 some files could not be read" in text
    assert "2 nothing predicted" in text


@pytest.mark.parametrize("name", ["model.safetensors", "model.onnx", "config.json", "weights.pt"])
def test_export_to_a_path_named_like_a_file_is_refused(run, tmp_path, capsys, name):
    target = tmp_path / "out" / name
    capsys.readouterr()
    assert cli.main(["export", str(run), str(target)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: export destination {target} is named like a file, but the export target is a "
                           "folder: tailtune export writes model.safetensors and config.json (and model.onnx with "
                           f"the onnx package) into it. Give a folder, e.g. {target.with_suffix('')} (then "
                           f"{target.with_suffix('') / 'model.safetensors'}).")
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    assert cli.main(["export", str(run), str(tmp_path / "file")]) == 2
    assert "is a file; the export target is a folder" in capsys.readouterr().err


def _renamed_data(run: Path, dst: Path, **edits) -> Path:
    """A copy of ``run`` whose record says it was tested on other data (config and metrics edited)."""
    import json
    import shutil

    import yaml

    shutil.copytree(run, dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    metrics = json.loads((dst / "metrics.json").read_text())
    for key, value in edits.items():
        if key == "test_images":
            metrics["data"]["test_images"] = value
        else:
            cfg["data"][key] = value
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg))
    (dst / "metrics.json").write_text(json.dumps(metrics))
    return dst


def test_compare_of_runs_on_different_test_sets_warns_and_marks_no_best(run, tmp_path, capsys):
    import json

    other = _renamed_data(run, tmp_path / "other", root="/data/elsewhere", test_images=999)
    capsys.readouterr()
    assert cli.main(["compare", str(run), str(other), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert ("warning: these runs were tested on 2 different test sets (A: r; B: other; they differ in data.root, "
            "test images): their accuracies are not comparable, and no value is marked best across test sets.") in out
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "Warning: different test sets" in html and "/data/elsewhere" in html
    results = html.split('id="results"')[1].split("</section>")[0]
    assert "<b>" not in results and "only where it is the best of the runs on the same test set" in results
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert summary["test_sets"]["same"] is False and summary["test_sets"]["differences"]["data.root"][1] == \
           "/data/elsewhere"
    assert [r["test_set"] for r in summary["runs"]] == [0, 1]
    # the same test set (another imbalance ratio trains on other images, tests on the same): no warning
    same = _renamed_data(run, tmp_path / "same", imb_ratio=10.0)
    assert cli.main(["compare", str(run), str(same), "--out", str(tmp_path / "cmp2")]) == 0
    assert "warning" not in capsys.readouterr().out
    summary = json.loads((tmp_path / "cmp2" / "comparison.json").read_text())
    assert summary["test_sets"] == {"same": True, "differences": {}, "warning": None}
    assert "<b>" in (tmp_path / "cmp2" / "report.html").read_text().split('id="results"')[1].split("</section>")[0]
