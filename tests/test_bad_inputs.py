"""A catalogue of bad inputs: each gets a clear error (what, where, what to do) and leaves disk intact."""

import errno
import os
from pathlib import Path

import pytest

import tailtune
from conftest import real_data
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
        tailtune.build(_cfg(real_data(tiny_overrides), "data.name=cifar100_lt", f"data.root={tmp_path / 'nowhere'}"))


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
        tailtune.build(_cfg(real_data(tiny_overrides), "data.name=folder", f"data.root={tmp_path / 'd'}", "data.imb_ratio=1"))


def test_corrupt_jpeg_names_the_file(tiny_overrides, tmp_path):
    _folder(tmp_path / "d", [3, 2], corrupt=True)
    cfg = _cfg(real_data(tiny_overrides), "data.name=folder", f"data.root={tmp_path / 'd'}", "data.imb_ratio=1",
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


# --- image files (issue 15: 5, 6, 7) ---
# Every file becomes pixels through one function (data/images.py): each PIL mode is read as its
# 8-bit RGB picture (16 bit by its high byte, transparency on white) or refused by name, the same
# way by `data check`, training, the image store and `predict`; a file over PIL's
# decompression-bomb limit gets tailtune's message, not PIL's warning; several unreadable files
# are all named (their count per split, the first ten of every split, each with its reason).

def _picture():
    """An 8-bit RGB reference picture: gradients in every channel, 24 x 16."""
    import numpy as np

    y, x = np.mgrid[0:16, 0:24]
    return np.stack([x * 11, y * 17, (x * 7 + y * 9) % 256], -1).astype(np.uint8)


def _grey_picture():
    import numpy as np

    return np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))  # every 16th level, 0 to 240


def _white_composite(rgb, alpha):
    import numpy as np

    a = alpha.astype(np.int64)[..., None]
    return ((rgb.astype(np.int64) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _mode_cases():
    """(name, write(folder) -> path, the 8-bit RGB expected, tolerance): every PIL mode a file opens as."""
    import numpy as np
    from PIL import Image

    rgb, grey = _picture(), _grey_picture()
    grey3 = np.repeat(grey[..., None], 3, -1)
    alpha = np.tile(np.linspace(0, 255, 24).astype(np.uint8), (16, 1))
    alpha[:, -1] = 255
    four = (rgb // 128) * 255  # four-ish colours: a palette holds them exactly
    p_img = Image.fromarray(four).quantize(8, method=Image.Quantize.MEDIANCUT)
    p_rgb = np.asarray(p_img.convert("RGB"))
    p_trans = p_img.copy()
    p_trans.info["transparency"] = int(np.asarray(p_img)[0, 0])  # the colour of the top-left pixel
    p_trans_expected = p_rgb.copy()
    p_trans_expected[np.asarray(p_img) == np.asarray(p_img)[0, 0]] = 255
    bw = (grey >= 128).astype(np.uint8) * 255
    grey16 = grey.astype(np.uint16) * 257

    def save(img, name, **kw):
        def write(folder):
            path = folder / name
            (img() if callable(img) else img).save(path, **kw)
            return path
        return write

    def pgm16(folder):  # a 16-bit PGM: PIL opens it as mode I
        path = folder / "grey16.pgm"
        path.write_bytes(b"P5\n16 8\n65535\n" + grey16.astype(">u2").tobytes())
        return path

    return [
        ("RGB", save(Image.fromarray(rgb), "rgb.png"), rgb, 0),
        ("L", save(Image.fromarray(grey), "grey.png"), grey3, 0),
        ("1", save(Image.fromarray(bw).convert("1"), "bw.png"), np.repeat(bw[..., None], 3, -1), 0),
        ("P", save(p_img, "palette.png"), p_rgb, 0),
        ("P+transparency", save(p_trans, "palette_t.png"), p_trans_expected, 0),
        ("RGBA", save(Image.fromarray(np.dstack([rgb, alpha])), "rgba.png"), _white_composite(rgb, alpha), 0),
        ("LA", save(Image.fromarray(np.dstack([grey3[..., 0], alpha[:8, :16]]), "LA"), "la.png"),
         _white_composite(grey3, alpha[:8, :16]), 0),
        ("CMYK", save(Image.fromarray(rgb).convert("CMYK"), "cmyk.tif"), rgb, 1),
        ("YCbCr", save(Image.fromarray(rgb).convert("YCbCr"), "ycbcr.tif"), rgb, 3),  # PIL's JPEG matrices, rounded twice
        ("I;16", save(Image.fromarray(grey16), "grey16.png"), grey3, 0),
        ("I;16 TIFF", save(Image.fromarray(grey16), "grey16.tif"), grey3, 0),
        ("I;16B", save(Image.fromarray(grey16.astype(">u2")), "grey16b.tif"), grey3, 0),
        ("I (16-bit PGM)", pgm16, grey3, 0),
        ("I (32-bit TIFF)", save(Image.fromarray(grey16.astype(np.int32)), "grey32.tif"), grey3, 0),
        ("F in 0..1", save(Image.fromarray(grey.astype(np.float32) / 255), "float01.tif"), grey3, 0),
        ("F in 0..255", save(Image.fromarray(grey.astype(np.float32)), "float255.tif"), grey3, 0),
    ]


@pytest.mark.parametrize("case", _mode_cases(), ids=lambda c: c[0])
def test_every_image_mode_reads_as_its_8bit_picture(tmp_path, case):
    import numpy as np
    from PIL import Image

    from tailtune.data.base import FileDataset
    from tailtune.data.images import open_image
    from tailtune.data.validate import decode_error

    name, write, expected, tolerance = case
    path = write(tmp_path)
    with Image.open(path) as raw:
        assert raw.mode == name.split()[0].split("+")[0], raw.mode  # the file really opens in that mode
    img, _ = FileDataset([path], [0])[0]
    got = np.asarray(img)
    assert img.mode == "RGB" and got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance
    assert np.array_equal(np.asarray(open_image(path)), got)  # predict and the store read the same
    assert decode_error(str(path)) is None  # and `data check` passes it


def test_8bit_rgb_and_grey_files_give_the_same_pixels_as_before(tmp_path):
    from PIL import Image

    from tailtune.data.base import FileDataset

    Image.fromarray(_picture()).save(tmp_path / "a.jpg", quality=80)
    Image.fromarray(_grey_picture()).save(tmp_path / "b.jpg")
    Image.fromarray(_picture()).save(tmp_path / "c.png")
    for name in ("a.jpg", "b.jpg", "c.png"):
        with Image.open(tmp_path / name) as img:
            before = img.convert("RGB")  # what tailtune did before it had its own conversion
        assert FileDataset([tmp_path / name], [0])[0][0].tobytes() == before.tobytes()


def test_a_16bit_png_predicts_as_its_8bit_picture(run, tmp_path):
    import numpy as np
    from PIL import Image

    rgb = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p8.png")
    Image.fromarray(rgb.astype(np.uint16) * 257).save(tmp_path / "p16.png")
    assert Image.open(tmp_path / "p16.png").mode == "I;16"
    predictor = tailtune.load(run, device="cpu")
    logits = predictor.logits([tmp_path / "p8.png", tmp_path / "p16.png"])
    assert torch_equal(logits[0], logits[1])
    transparent = Image.fromarray(np.dstack([np.stack([rgb] * 3, -1), np.full_like(rgb, 0)]))
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    logits = predictor.logits([transparent, white])  # an in-memory RGBA image: composited on white too
    assert torch_equal(logits[0], logits[1])


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def _refused_cases():
    import numpy as np
    from PIL import Image

    grey = _grey_picture().astype(np.float32)
    return [
        ("F outside 0..255", lambda: Image.fromarray(grey * 2 - 100), "float.tif",
         "has PIL mode F (32-bit float) with values from -100 to 380: neither 0..1 nor 0..255, so its brightness "
         "scale cannot be known"),
        ("F with NaN", lambda: Image.fromarray(np.where(grey > 100, np.nan, grey).astype(np.float32)), "nan.tif",
         "has PIL mode F (32-bit float) holding NaN or infinite values"),
        ("I above 16 bit", lambda: Image.fromarray((grey * 1000).astype(np.int32)), "big.tif",
         "has PIL mode I (32-bit integers) with values from 0 to 240000, outside the 16-bit range 0..65535, so its "
         "brightness scale cannot be known"),
        ("LAB", lambda: Image.fromarray(_picture()).convert("LAB"), "lab.tif",
         "has PIL mode LAB, which tailtune does not convert to RGB"),
    ]


@pytest.mark.parametrize("case", _refused_cases(), ids=lambda c: c[0])
def test_an_image_mode_that_cannot_be_read_is_refused_by_name(tmp_path, capsys, case):
    from PIL import Image

    from tailtune.data.base import FileDataset

    _, make, name, problem = case
    root = tmp_path / "d"
    _folder(root, [3, 2])
    bad = root / "train" / "c1" / name
    make().save(bad)
    with Image.open(bad) as img:
        assert img.mode == case[0].split()[0]
    err = _check_fails(["data", "check", "folder", f"data.root={root}"], capsys, root,
                       f"error: image file {bad} {problem}; save it as an 8-bit RGB or grey image (PNG or JPEG)",
                       "or set data.skip_corrupt=true to leave such files out.")
    assert err.count("\n") == 1  # one line
    with pytest.raises(DataError, match="save it as an 8-bit RGB or grey image"):
        FileDataset([bad], [0])[0]  # training reads it the same way (had the start-up check been off)


def test_decompression_bomb_sizes_get_tailtunes_message(tmp_path, capsys, monkeypatch, recwarn):
    from PIL import Image

    root = tmp_path / "d"
    _folder(root, [3, 2])
    big, huge = root / "train" / "c0" / "big.png", root / "test" / "c1" / "huge.png"
    Image.new("RGB", (40, 30)).save(big)  # 1,200 pixels: over the limit (PIL would warn)
    Image.new("RGB", (100, 100)).save(huge)  # 10,000: over twice the limit (PIL would raise)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    err = _check_fails(["data", "check", "folder", f"data.root={root}"], capsys, root,
                       "error: 2 image files cannot be read (train 1 of 6, test 1 of 3). ",
                       f"train: {big} is 40 x 30 = 1,200 pixels, more than the 1,000 of PIL's decompression-bomb "
                       "guard (PIL.Image.MAX_IMAGE_PIXELS).",
                       f"test: {huge} is 10,000 pixels, more than the 1,000 of PIL's decompression-bomb guard",
                       "Replace or remove them (resize an image over the size limit), or set data.skip_corrupt=true")
    assert "DecompressionBomb" not in err
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    from tailtune.data.images import open_image

    with pytest.raises(DataError, match=r"image file .*big.png is 40 x 30 = 1,200 pixels, .* resize it \(the models "
                                        r"see a few hundred pixels a side\) or leave it out"):
        open_image(big)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def _corrupt(root: Path, rels) -> list[Path]:
    paths = [root / r for r in rels]
    for p in paths:
        p.write_bytes(b"\xff\xd8\xff broken jpeg")
    return paths


def test_every_unreadable_file_is_named_in_every_split(tmp_path, capsys):
    root = tmp_path / "d"
    _folder(root, [4, 3])
    train = _corrupt(root, ["train/c0/0.jpg", "train/c0/2.jpg", "train/c1/1.jpg"])
    test = _corrupt(root, ["test/c1/0.jpg"])
    args = ["data", "check", "folder", f"data.root={root}"]
    err = _check_fails(args, capsys, root, "error: 4 image files cannot be read (train 3 of 7, test 1 of 2). train: ",
                       *(f"{p} is corrupt or not an image (not a format PIL reads)" for p in [*train, *test]),
                       " test: ", "Replace or remove them, or set data.skip_corrupt=true to leave such files out.")
    assert err.count("\n") == 1 and "more" not in err
    # Left out on request: every one named in the notes, per split.
    assert cli.main([*args, "data.skip_corrupt=true", "data.val=none"]) == 0
    out = capsys.readouterr().out
    assert f"note: skipped 3 corrupt or unreadable train images of 7 (data.skip_corrupt=true): {train[0]} is " in out
    assert all(str(p) in out for p in [*train, *test])
    assert "note: skipped 1 corrupt or unreadable test images of 2" in out


def test_many_unreadable_files_give_the_count_and_the_first_ten(tmp_path, capsys):
    root = tmp_path / "d"
    _folder(root, [14, 3])
    bad = _corrupt(root, [f"train/c0/{i}.jpg" for i in range(13)])
    err = _check_fails(["data", "check", "folder", f"data.root={root}"], capsys, root,
                       "error: 13 image files cannot be read (train 13 of 17). ", "; and 3 more.")
    shown = sorted(bad, key=str)  # the folder source lists files in sorted order
    assert sum(str(p) + " is corrupt" in err for p in shown) == 10


def test_an_unreadable_file_met_while_training_names_the_way_to_find_all(tiny_overrides, tmp_path):
    root = tmp_path / "d"
    _folder(root, [3, 2], corrupt=True)
    cfg = _cfg(real_data(tiny_overrides), "data.name=folder", f"data.root={root}", "data.imb_ratio=1",
               "data.verify_images=false",
               "head.init=class_mean")
    with pytest.raises(DataError, match=r"image file .*c0/0.jpg is corrupt or not an image \(.*\) \(sample \d+\); "
                                        r"replace or remove it; `tailtune data check` with the run's data settings "
                                        r"names every such file"):
        tailtune.fit(cfg)


# --- writing runs and the log (issue 15: 11, 12) ---
# A write that fails (disk full, read-only folder, no permission) at any stage of a run is one
# line on the console and in log.txt: the file, the cause, what is kept and the command that
# continues; no temporary file is left. Every error that ends a run is in its log.txt.


def _fail_replace(monkeypatch, name: str, code: int = errno.ENOSPC, nth: int = 1) -> None:
    """os.replace onto a file called ``name`` fails with ``code`` at its ``nth`` call (the temporary
    file is then complete: the failure is the one that can leave it behind)."""
    real, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            calls.append(dst)
            if len(calls) == nth:
                raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def _train_fails(args, capsys, code: int = 2) -> str:
    assert cli.main(["train", "-r", "lift", *args]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def _no_tmp(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name], sorted(folder.rglob("*"))


def _log_has(run_dir: Path, line: str) -> None:
    assert line in (run_dir / "log.txt").read_text().splitlines()


def _same_numbers(a: Path, b: Path) -> None:
    import json

    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    assert ma["test"]["overall"] == mb["test"]["overall"] and ma["test"]["per_class"] == mb["test"]["per_class"]


def test_disk_full_while_saving_the_training_state(run, tiny_overrides, tmp_path, capsys, monkeypatch):
    """safetensors' own error (a partial temporary file on disk), at the 3rd periodic save: the 2nd
    is kept, the run resumes from it to the same numbers as an uninterrupted run."""
    from safetensors import SafetensorError

    import tailtune.runtime.checkpoint as ckpt

    real, calls = ckpt.save_file, []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 3:
            Path(filename).write_bytes(b"half a file")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    d = tmp_path / "runs" / "w"
    err = _train_fails([*tiny_overrides, "eval.tte=none", "name=w", "train.save_every=1"], capsys)
    assert err == (f"error: cannot write {d}/train_state.safetensors: the disk is full (no space left on device). "
                   "The training state at step 2 of epoch 1 (1 in all) is saved; continue with "
                   f"`tailtune train --resume {d}`.")
    _log_has(d, err)
    _no_tmp(d)
    monkeypatch.setattr(ckpt, "save_file", real)
    assert cli.main(["train", "--resume", str(d)]) == 0
    _same_numbers(d, run)
    _no_tmp(d)


def test_read_only_checkpoint_then_resume_evaluates(run, tiny_overrides, tmp_path, capsys, monkeypatch):
    _fail_replace(monkeypatch, "checkpoint.safetensors", errno.EROFS)
    d = tmp_path / "runs" / "w"
    err = _train_fails([*tiny_overrides, "eval.tte=none", "name=w"], capsys)
    assert err == (f"error: cannot write {d}/checkpoint.safetensors: the file system is read-only. Training "
                   "finished: its state (epoch 1 of 1) is saved. "
                   f"`tailtune train --resume {d}` evaluates it and writes the results.")
    _log_has(d, err)
    _no_tmp(d)
    assert not (d / "checkpoint.safetensors").exists() and (d / "train_state.safetensors").exists()
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(d)]) == 0
    _same_numbers(d, run)
    assert not (d / "train_state.safetensors").exists()


@pytest.mark.parametrize("name,code,cause", [
    ("predictions.npz", errno.EDQUOT, "the disk quota is exceeded"),
    ("metrics.json", errno.EACCES, "permission denied"),
])
def test_results_not_written(tiny_overrides, tmp_path, capsys, monkeypatch, name, code, cause):
    _fail_replace(monkeypatch, name, code)
    d = tmp_path / "runs" / "w"
    err = _train_fails([*tiny_overrides, "eval.tte=none", "name=w"], capsys)
    assert err == (f"error: cannot write {d}/{name}: {cause}. Training finished: its state (epoch 1 of 1) is "
                   f"saved; checkpoint.safetensors is complete. `tailtune train --resume {d}` evaluates it and "
                   "writes the results.")
    _log_has(d, err)
    _no_tmp(d)
    assert not (d / "metrics.json").exists()


def test_disk_full_at_the_report(tiny_overrides, tmp_path, capsys, monkeypatch):
    _fail_replace(monkeypatch, "report.html")
    d = tmp_path / "runs" / "w"
    err = _train_fails([*tiny_overrides, "eval.tte=none", "name=w"], capsys)
    assert err == (f"error: cannot write {d}/report.html: the disk is full (no space left on device). The run is "
                   "complete (metrics.json, checkpoint.safetensors and predictions.npz are written); write its "
                   f"report with `tailtune report {d}`.")
    _log_has(d, err)
    _no_tmp(d)
    assert not (d / "report.html").exists()
    monkeypatch.undo()
    assert cli.main(["report", str(d)]) == 0 and (d / "report.html").is_file()


def test_atomic_writes_leave_no_temporary_file(tmp_path, monkeypatch):
    from tailtune.errors import WriteError
    from tailtune.runtime.files import write_text

    (tmp_path / "a.json").write_text("old")
    _fail_replace(monkeypatch, "a.json", errno.ENOSPC)
    with pytest.raises(WriteError, match=r"cannot write .*a.json: the disk is full \(no space left on device\)\."):
        write_text(tmp_path / "a.json", "new")
    assert (tmp_path / "a.json").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_feature_cache_without_room(tmp_path, monkeypatch):
    """The memmap's blocks are reserved first: a full disk is an error naming the cache, not a SIGBUS later."""
    from tailtune.errors import WriteError
    from tailtune.training.feature_cache import FeatureStore

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    with pytest.raises(WriteError, match=r"cannot write .*k.bf16: the disk is full .* The feature cache needs "
                                         r"0.00 GiB there: set train.cache_dir to a folder with room, "
                                         r"train.cache_dir=null \(in memory\) or train.cache_features=never."):
        FeatureStore((1, 4, 2), tmp_path / "cache", "k", {})
    assert list((tmp_path / "cache").iterdir()) == []


def test_export_without_room_names_the_output(run, tmp_path, capsys, monkeypatch):
    _fail_replace(monkeypatch, "config.json")
    out = tmp_path / "exp"
    assert cli.main(["export", str(run), str(out), "--no-onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: cannot write {out}/config.json: the disk is full (no space left on device). The export "
                   f"in {out} is incomplete (the run {run} is untouched); make room, then run "
                   f"`tailtune export {run} {out} --overwrite` again.")
    _no_tmp(out)


@pytest.mark.parametrize("fault", ["nan", "corrupt"])
def test_fatal_errors_are_in_the_log(tiny_overrides, tmp_path, capsys, monkeypatch, fault):
    import torch

    import tailtune.runs.run as run_module

    if fault == "nan":
        class NanLoss(torch.nn.Module):
            def forward(self, logits, y):
                return (logits * float("nan")).sum()

        monkeypatch.setattr(run_module, "build_loss", lambda *args: NanLoss())
    else:
        def corrupt(*args, **kwargs):
            raise DataError("test image /data/c0/3.jpg is corrupt (cannot identify image file)")

        monkeypatch.setattr(run_module, "evaluate_with_logits", corrupt)
    d = tmp_path / "runs" / "w"
    err = _train_fails([*tiny_overrides, "eval.tte=none", "name=w"], capsys)
    assert err.startswith("error: the loss became nan at epoch 1, step 1." if fault == "nan" else
                          "error: test image /data/c0/3.jpg is corrupt")
    _log_has(d, err)


def test_unexpected_exception_one_line_on_the_console_traceback_in_the_log(tiny_overrides, tmp_path, capsys,
                                                                          monkeypatch):
    import tailtune.runs.run as run_module

    def bug(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(run_module, "evaluate_with_logits", bug)
    d = tmp_path / "runs" / "w"
    err = _train_fails([*tiny_overrides, "eval.tte=none", "name=w"], capsys, code=1)
    assert err == ("error: unexpected RuntimeError: boom. This is a bug in tailtune (please report it); the "
                   f"traceback is in {d}/log.txt.")
    log = (d / "log.txt").read_text()
    assert "error: unexpected RuntimeError: boom\nTraceback (most recent call last):" in log
    assert 'raise RuntimeError("boom")' in log


def test_sigterm_during_the_final_evaluation(run, tiny_overrides, tmp_path, capsys, monkeypatch):
    import signal

    import tailtune.runs.run as run_module

    real = run_module.evaluate_with_logits

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate_with_logits", killed)
    d = tmp_path / "runs" / "w"
    err = _train_fails([*tiny_overrides, "eval.tte=none", "name=w"], capsys, code=143)
    assert err == ("stopped by signal 15 while in the final evaluation. Training finished: its state (epoch 1 of 1) "
                   f"is saved; checkpoint.safetensors is complete. `tailtune train --resume {d}` evaluates it and "
                   "writes the results.")
    _log_has(d, err)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(d)]) == 0
    _same_numbers(d, run)


def test_splits_json_is_written_before_training_and_kept_on_resume(tiny_overrides, tmp_path, capsys,
                                                                  monkeypatch):
    import json

    from datatrees import class_tree
    from tailtune.training.trainer import Trainer

    class_tree(tmp_path / "d", [12, 8])
    real, seen = Trainer.fit, []

    def fit(self, *args, **kwargs):
        seen.append((tmp_path / "runs" / "w" / "splits.json").is_file())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit)
    _fail_replace(monkeypatch, "checkpoint.safetensors")
    d = tmp_path / "runs" / "w"
    args = [*real_data(tiny_overrides), "eval.tte=none", "name=w", "data.name=folder", f"data.root={tmp_path / 'd'}"]
    _train_fails(args, capsys)
    assert seen == [True]
    splits = json.loads((d / "splits.json").read_text())
    assert set(splits) == {"test", "val"}
    class_tree(tmp_path / "d", [4], prefix="c", start=100)  # the data changed since the run started
    assert cli.main(["train", "--resume", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: the held-out splits drawn now differ from the run's {d}/splits.json: the images under "
                   f"data.root={tmp_path / 'd'} changed since the run started, so resuming would train and test on "
                   "other images. Put the data back as it was, or train a new run.")
    _log_has(d, err)
    assert json.loads((d / "splits.json").read_text()) == splits


def test_report_command_without_room_keeps_the_previous_report(run, tmp_path, capsys, monkeypatch):
    import shutil

    d = tmp_path / "r"
    shutil.copytree(run, d)
    before = _snapshot(d)
    _fail_replace(monkeypatch, "report.html")
    assert cli.main(["report", str(d)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: cannot write {d}/report.html: the disk is full (no space left on device). The run's "
                   f"results are untouched; make room, then run `tailtune report {d}` again.")
    _no_tmp(d)
    assert (d / "report.html").read_bytes() == before[d / "report.html"]


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
                                       "train.log_every", "train.save_every", "eval.report", "eval.save_logits",
                                       "model.cache_dir"}
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
    cfg = _cfg(real_data(tiny_overrides), "name=failed", "data.name=cifar100_lt", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(DataError, match="not found"):
        tailtune.fit(cfg)
    assert not (tmp_path / "runs" / "failed").exists()


def test_resume_of_a_folder_that_is_no_run_writes_no_lock(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _train(capsys, "--resume", str(tmp_path / "empty"))
    assert code == 2 and "is not a tailtune run folder" in err
    assert not any((tmp_path / "empty").iterdir())


# --- data roots and hold-outs (issue 15: 1, 13, 14) ---


def _fails(args, capsys, *parts: str, watch: Path | None = None, code: int = 2) -> str:
    """``tailtune ARGS`` exits ``code`` with one message holding every part, no traceback, nothing written."""
    before = _snapshot(watch) if watch else None
    assert cli.main(args) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1, err
    for part in parts:
        assert part in err, (part, err)
    if watch:
        assert _snapshot(watch) == before
    return err


@pytest.mark.parametrize("dry_run", [True, False])
def test_demo_with_a_root_of_class_folders_names_the_folder_preset(tmp_path, capsys, dry_run):
    from datatrees import class_tree

    class_tree(tmp_path / "mine", [4, 4])
    runs = tmp_path / "runs"
    _fails(["train", *(["--dry-run"] if dry_run else []), f"data.root={tmp_path / 'mine'}", f"output_dir={runs}"],
           capsys, f"data.root={tmp_path / 'mine'} holds no Fashion-MNIST IDX files", "data.name=fashion_mnist_lt",
           "(c0/, c1/)", f"-d folder data.root={tmp_path / 'mine'}", watch=tmp_path / "mine")
    assert not runs.exists() or not any(runs.rglob("*.safetensors"))  # nothing trained on the system copy


def test_demo_with_a_missing_root_never_falls_back_to_the_system_copy(tmp_path, capsys):
    _fails(["train", "--dry-run", f"data.root={tmp_path / 'nowhere'}"], capsys,
           f"data.root={tmp_path / 'nowhere'} does not exist", "Fashion-MNIST IDX files")


def test_demo_with_a_root_holding_a_csv_names_the_csv_preset(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("path,label\n")
    _fails(["data", "stats", "--no-plot", "fashion_mnist_ir100", f"data.root={tmp_path}"], capsys,
           "it holds labels.csv", f"-d csv data.root={tmp_path} data.csv.file=labels.csv")


def test_a_root_for_a_source_that_reads_no_files(tmp_path, capsys):
    from datatrees import class_tree

    class_tree(tmp_path, [2, 2])
    _fails(["data", "check", "synthetic", f"data.root={tmp_path}"], capsys,
           f"data.root={tmp_path} is not read by data.name=synthetic, which needs no files",
           f"-d folder data.root={tmp_path}")


@pytest.mark.parametrize("source,override,parts", [
    ("folder", "data.download=true", ["data.download=True is not read by data.name=folder",
                                      "only cifar100_lt, fashion_mnist_lt read it"]),
    ("folder", "data.splits_dir=/lists", ["data.splits_dir='/lists' is not read by data.name=folder",
                                          "only imagenet_lt, inat2018, places_lt read it"]),
    ("folder", "data.path_map=[a=b]", ["data.path_map=['a=b'] is not read by data.name=folder"]),
    ("folder", "data.group_imb_ratio=100", ["data.group_imb_ratio=100.0 is not read by data.name=folder",
                                            "only cifar100_lt"]),
    ("folder", "data.csv.file=labels.csv", ["data.csv.file='labels.csv' applies to data.name=csv only, not to "
                                            "data.name=folder", "-d csv"]),
    ("folder", "data.synthetic.num_classes=3", ["data.synthetic.num_classes=3 applies to data.name=synthetic only",
                                                "or use data.name=synthetic."]),
    ("folder", "data.inat2018.taxonomy=genus", ["data.inat2018.taxonomy='genus' applies to data.name=inat2018 only",
                                                "-d inat2018"]),
    ("csv", "data.folder.layout=classes", ["data.folder.layout='classes' applies to data.name=folder only, not to "
                                           "data.name=csv"]),
])
def test_a_setting_the_chosen_source_does_not_read_is_refused(tmp_path, capsys, source, override, parts):
    from datatrees import class_tree

    class_tree(tmp_path / "img", [8, 8])
    (tmp_path / "img" / "labels.csv").write_text("".join(f"c{c}/{i}.jpg,c{c}\n" for c in (0, 1) for i in range(8)))
    extra = ["data.csv.file=labels.csv"] if source == "csv" else []
    _fails(["data", "check", source, f"data.root={tmp_path / 'img'}", *extra, override], capsys, *parts,
           "the run would ignore", watch=tmp_path)


def test_holdout_settings_unused_by_data_with_their_own_splits_are_a_note(tmp_path, capsys):
    _folder(tmp_path / "d", [3, 3])
    assert cli.main(["data", "check", "folder", f"data.root={tmp_path / 'd'}", "data.val=none",
                     "data.holdout_per_class=2"]) == 0
    assert "data.holdout_per_class=2 not used: nothing was held out" in capsys.readouterr().out


def test_a_root_that_is_a_file_says_so(tmp_path, capsys):
    csv = tmp_path / "labels.csv"
    csv.write_text("a.jpg,cat\n")
    _fails(["data", "check", "folder", f"data.root={csv}"], capsys,
           f"data.root={csv} is a file, not a folder: data.root is the folder holding your images",
           f"use -d csv data.csv.file={csv}")
    _fails(["data", "check", "imagenet_lt", f"data.root={csv}"], capsys, f"data.root={csv} is a file, not a folder",
           "ImageNet (ILSVRC-2012) images")


def test_symbolic_link_loops_are_named_not_missing(tmp_path, capsys):
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    _fails(["data", "check", "folder", f"data.root={tmp_path / 'loop_a'}"], capsys,
           f"{tmp_path / 'loop_a'} -> {tmp_path / 'loop_b'} -> {tmp_path / 'loop_a'} (a loop of symbolic links)")
    from datatrees import class_tree

    class_tree(tmp_path / "img", [4, 4])
    (tmp_path / "img" / "c0" / "x.jpg").symlink_to("y.jpg")
    (tmp_path / "img" / "c0" / "y.jpg").symlink_to("x.jpg")
    (tmp_path / "img" / "c1" / "gone.jpg").symlink_to("nothing.jpg")
    err = _fails(["data", "check", "folder", f"data.root={tmp_path / 'img'}"], capsys,
                 "2 image names in", "are symbolic links leading to no file",
                 f"{tmp_path / 'img' / 'c0' / 'x.jpg'} -> y.jpg -> x.jpg (a loop of symbolic links)")
    assert "missing" not in err


def test_csv_row_naming_a_looping_link_is_named_not_missing(tmp_path, capsys):
    args = _csv(tmp_path, _clean_rows())
    (tmp_path / "img" / "3.jpg").unlink()
    (tmp_path / "img" / "3.jpg").symlink_to("3b.jpg")
    (tmp_path / "img" / "3b.jpg").symlink_to("3.jpg")
    err = _check_fails(args, capsys, tmp_path, "1 listed image files cannot be opened (",
                       f"{tmp_path / 'img' / '3.jpg'} -> 3b.jpg -> 3.jpg (a loop of symbolic links)",
                       "Point each link at its image file")
    assert "missing" not in err


def _long_tail(root: Path) -> Path:
    from datatrees import class_tree

    class_tree(root, [300, 40, 12, 6, 3], prefix="sp")
    return root


def test_long_tailed_folder_balanced_refusal_explains_the_trade_off(tmp_path, capsys):
    root = _long_tail(tmp_path / "lt")
    _fails(["data", "check", "folder", f"data.root={root}"], capsys,
           "its smallest class, 'sp4', has 3 images: too few for the balanced hold-out",
           "data.holdout_policy=proportional", "keeps at least 3/4 for training",
           "get no test image", "noisier few-shot accuracy", "data.holdout_per_class=K", watch=root)


def test_data_stats_describes_a_folder_whose_default_holdout_is_impossible(tmp_path, capsys):
    root = _long_tail(tmp_path / "lt")
    assert cli.main(["data", "stats", "--no-plot", "folder", f"data.root={root}"]) == 0
    out = capsys.readouterr().out
    assert "5 classes, 361 training images, 0 validation (none), 0 test" in out
    assert "note: training with this config stops here:" in out and "data.holdout_policy=proportional" in out


def test_proportional_holdout_keeps_every_class_trained_and_says_what_it_took(tmp_path):
    import numpy as np

    from tailtune.data.sources.base import build_data

    root = _long_tail(tmp_path / "lt")
    cfg = load_config(None, "folder", overrides=[f"data.root={root}", "data.holdout_policy=proportional"]).data
    data = build_data(cfg)
    test, val, train = (np.bincount(d.targets, minlength=5).tolist() for d in (data.test, data.val, data.train))
    assert test == [20, 10, 3, 1, 0]  # a quarter of each class, at most 20
    assert val == [20, 7, 2, 1, 0]  # a quarter of what is left
    assert train == [260, 23, 7, 4, 3] and min(train) >= 1
    assert data.record["test"]["per_class"] == {"sp0": 20, "sp1": 10, "sp2": 3, "sp3": 1, "sp4": 0}
    assert data.record["val"]["per_class"]["sp4"] == 0 and "proportional" in data.record["test"]["made_by"]
    note = next(n for n in data.notes if n.startswith("no test split given"))
    assert "data.holdout_policy=proportional" in note and "0 from 1 class ('sp4')" in note
    assert "not measured: left out of the balanced and group means" in note


def test_val_holdout_of_a_benchmark_with_tiny_classes_names_the_proportional_policy(tiny_overrides, capsys):
    tiny = [*tiny_overrides, "data.synthetic.train_per_class=8", "data.val=holdout", "eval.report=false"]
    # imb_ratio=8 over 6 classes from 8 images: the rarest classes have 1-2 images
    _fails(["data", "check", "synthetic", *[o for o in tiny if o.startswith("data.")]], capsys,
           "data.val=holdout:", "too few for the balanced hold-out", "data.holdout_policy=proportional")
    assert cli.main(["data", "check", "synthetic", *[o for o in tiny if o.startswith("data.")],
                     "data.holdout_policy=proportional"]) == 0
    assert "validation: a quarter of each class's images, at most 20" in capsys.readouterr().out


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
    assert out.err.startswith(f"error: 1 of 4 images cannot be read: {files[2]} is corrupt or not an image (")
    assert out.err.rstrip().endswith("The other images are predicted above; replace or remove the unreadable files.")
    # the same predictions as without the bad file
    assert cli.main(["predict", str(run), *map(str, [files[0], files[1], files[3]]), "--device", "cpu", "-q",
                     "-k", "1"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith(" ")] == \
           [line for line in out.out.splitlines() if line.startswith(" ")]
    assert cli.main(["predict", str(run), str(tmp_path / "imgs"), "--device", "cpu", "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert [sorted(g) for g in got] == [["image", "top"]] * 2 + [["error", "image"]] + [["image", "top"]]
    assert got[2]["image"] == str(files[2]) and "is corrupt or not an image" in got[2]["error"]
    # the Python API: an error naming them, or (skip_unreadable) a Prediction with the error
    predictor = tailtune.load(run, device="cpu")
    with pytest.raises(DataError, match=rf"^1 of 4 images cannot be read: {files[2]} is corrupt or not an image .*\. Replace or remove them "
                                        r"\(or pass skip_unreadable=True to predict the others\)\.$"):
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
