"""Your own data: image folders and CSV files, held-out splits, start-up checks, one epoch end to end."""

import json

import numpy as np
import pytest

import tailtune
from conftest import real_data
from datatrees import class_tree, jpeg_bytes, write_images
from tailtune.cli import app as cli
from tailtune.config import load_config
from tailtune.data.holdout import balanced_holdout
from tailtune.data.sources.base import build_data
from tailtune.errors import ConfigError, DataError


def _cfg(*over, preset="folder"):
    return load_config(None, preset, overrides=list(over)).data


def _by_class(ds, num):
    return np.bincount(ds.targets, minlength=num).tolist()


# ------------------------------------------------------------------ folder


def test_flat_folder_holds_out_balanced_test_and_val(tmp_path):
    names = class_tree(tmp_path, [40, 20, 8], prefix="kind_")
    data = build_data(_cfg(f"data.root={tmp_path}"))
    assert names == ["kind_0", "kind_1", "kind_2"] and data.classnames == ["kind 0", "kind 1", "kind 2"]
    # test: a quarter of the smallest class (8 // 4 = 2) per class; val: a quarter of what is left (6 // 4 = 1)
    assert _by_class(data.test, 3) == [2, 2, 2]
    assert _by_class(data.val, 3) == [1, 1, 1] and data.val_source == "held-out slice of train"
    assert _by_class(data.train, 3) == [37, 17, 5]
    splits = [set(data.train.paths), set(data.val.paths), set(data.test.paths)]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert len(splits[0] | splits[1] | splits[2]) == 68
    assert data.record["test"]["files"] == data.test.paths and data.record["test"]["per_class"] == 2
    assert data.record["val"]["files"] == data.val.paths
    assert data.groups.tolist() == [1, 2, 2]  # 37 medium, 17 and 5 few
    again = build_data(_cfg(f"data.root={tmp_path}"))
    assert again.test.paths == data.test.paths and again.val.paths == data.val.paths
    other = build_data(_cfg(f"data.root={tmp_path}", "data.subset_seed=1"))
    assert other.test.paths != data.test.paths


def test_balanced_holdout_draws_per_class():
    targets = [0] * 5 + [1] * 3 + [2] * 4
    keep, held = balanced_holdout(targets, 3, 2, seed=0, stream="test")
    assert np.bincount(np.asarray(targets)[held]).tolist() == [2, 2, 2]
    assert sorted([*keep, *held]) == list(range(12))
    _, held_val = balanced_holdout(targets, 3, 2, seed=0, stream="val")
    assert held.tolist() != held_val.tolist()  # separate streams


def test_holdout_per_class_explicit_and_too_large(tmp_path):
    class_tree(tmp_path, [40, 20, 8])
    data = build_data(_cfg(f"data.root={tmp_path}", "data.holdout_per_class=3"))
    assert _by_class(data.test, 3) == [3, 3, 3] and _by_class(data.val, 3) == [3, 3, 3]
    assert _by_class(data.train, 3) == [34, 14, 2]
    with pytest.raises(DataError, match=r"holdout_per_class=8 would leave 1 classes without training images "
                                        r"for the test split \(e.g. 'c2' \(8\)\)"):
        build_data(_cfg(f"data.root={tmp_path}", "data.holdout_per_class=8"))


def test_split_folders_and_val_policies(tmp_path):
    class_tree(tmp_path / "train", [6, 3])
    class_tree(tmp_path / "val", [1, 1], start=100)
    class_tree(tmp_path / "test", [2, 2], start=200)
    data = build_data(_cfg(f"data.root={tmp_path}"))
    assert data.val_source == "val split" and len(data.val) == 2 and len(data.test) == 4 and len(data.train) == 9
    assert data.record == {}
    assert build_data(_cfg(f"data.root={tmp_path}", "data.val=none")).val is None
    (tmp_path / "val" / "c0" / "100.jpg").unlink()
    (tmp_path / "val" / "c0").rmdir()
    with pytest.raises(DataError, match=r"class folders of .*val differ from the training classes: missing \['c0'\]"):
        build_data(_cfg(f"data.root={tmp_path}"))


def test_val_split_required_and_holdout_on_any_source(tmp_path):
    class_tree(tmp_path / "train", [6, 3])
    class_tree(tmp_path / "test", [1, 1])
    with pytest.raises(DataError, match=r"data.val=split but folder has no val split"):
        build_data(_cfg(f"data.root={tmp_path}", "data.val=split"))
    syn = load_config(overrides=["data.name=synthetic", "data.synthetic.num_classes=3", "data.synthetic.train_per_class=12",
                                 "data.imb_ratio=1", "data.val=holdout"]).data
    data = build_data(syn)
    assert data.val_source == "held-out slice of train" and _by_class(data.val, 3) == [3, 3, 3]
    assert _by_class(data.train, 3) == [9, 9, 9] and data.record["val"]["indices"] is not None


def test_classnames_file(tmp_path):
    class_tree(tmp_path / "img", [8, 8])
    (tmp_path / "names.txt").write_text("red fox\n\narctic fox\n")
    data = build_data(_cfg(f"data.root={tmp_path / 'img'}", f"data.classnames_file={tmp_path / 'names.txt'}"))
    assert data.classnames == ["red fox", "arctic fox"]
    (tmp_path / "names.txt").write_text("red fox\narctic fox\nfennec\n")
    with pytest.raises(DataError, match=r"names.txt has 3 names for 2 class folders"):
        build_data(_cfg(f"data.root={tmp_path / 'img'}", f"data.classnames_file={tmp_path / 'names.txt'}"))


def test_class_with_too_few_images_for_a_test_split(tmp_path):
    class_tree(tmp_path, [8, 3])
    # issue 15 (14): the refusal names the proportional policy and its trade-off, beside holdout_per_class
    with pytest.raises(DataError, match=r"no test split and its smallest class, 'c1', has 3 images.*"
                                        r"holdout_policy=proportional.*no test image.*holdout_per_class"):
        build_data(_cfg(f"data.root={tmp_path}"))


# ------------------------------------------------------------------ csv


def _csv_tree(tmp_path):
    write_images(tmp_path / "data", [f"img/{i}.jpg" for i in range(12)])
    rows = ["path,label,split"]
    rows += [f"img/{i}.jpg,{'zebra' if i < 6 else 'aardvark'},train" for i in range(8)]
    rows += ["img/8.jpg,zebra,val", "img/9.jpg,aardvark,val", "img/10.jpg,zebra,test", "img/11.jpg,aardvark,test"]
    (tmp_path / "data" / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "data"


def test_csv_source(tmp_path):
    root = _csv_tree(tmp_path)
    data = build_data(_cfg(f"data.root={root}", "data.csv.file=labels.csv", preset="csv"))
    assert data.classnames == ["aardvark", "zebra"]  # sorted label names
    assert _by_class(data.train, 2) == [2, 6] and data.train.paths[0] == str(root / "img/0.jpg")
    assert data.train.targets[0] == 1
    assert data.val_source == "val split" and data.val.targets == [1, 0] and data.test.targets == [1, 0]


def test_csv_paths_stay_under_the_root(tmp_path):
    root = _csv_tree(tmp_path)
    (root / "bad.csv").write_text("img/0.jpg,a\n../outside.jpg,b\n")
    with pytest.raises(DataError, match=r"bad.csv row 2: path '../outside.jpg' leads outside the data root"):
        build_data(_cfg(f"data.root={root}", "data.csv.file=bad.csv", preset="csv"))
    (root / "abs.csv").write_text("\n".join(f"{root / 'img' / f'{i}.jpg'},{'ab'[i % 2]}" for i in range(12)))
    with pytest.raises(DataError, match=r"abs.csv row 1: absolute path .*data.csv.allow_absolute_paths=true"):
        build_data(_cfg(f"data.root={root}", "data.csv.file=abs.csv", preset="csv"))
    data = build_data(_cfg(f"data.root={root}", "data.csv.file=abs.csv", "data.csv.allow_absolute_paths=true", preset="csv"))
    assert len(data.train) + len(data.val) + len(data.test) == 12


def test_csv_labels_and_rows(tmp_path):
    root = _csv_tree(tmp_path)
    (root / "num.csv").write_text("".join(f"img/{i}.jpg,{i % 2}\n" for i in range(12)))
    with pytest.raises(DataError, match=r"labels of .*num.csv are numbers; give the class names"):
        build_data(_cfg(f"data.root={root}", "data.csv.file=num.csv", preset="csv"))
    (root / "names.txt").write_text("cat\ndog\n")
    data = build_data(_cfg(f"data.root={root}", "data.csv.file=num.csv", f"data.classnames_file={root / 'names.txt'}",
                           preset="csv"))
    assert data.classnames == ["cat", "dog"] and len(data.test) == 2  # held out: 6 // 4 = 1 per class
    (root / "split.csv").write_text("img/0.jpg,a,train\nimg/1.jpg,b,holdout\n")
    with pytest.raises(DataError, match=r"split.csv row 2: split 'holdout' is not one of train, val, test"):
        build_data(_cfg(f"data.root={root}", "data.csv.file=split.csv", preset="csv"))
    with pytest.raises(DataError, match=r"CSV file nope.csv not found"):
        build_data(_cfg(f"data.root={root}", "data.csv.file=nope.csv", preset="csv"))


# ------------------------------------------------------------------ start-up validation


def test_missing_files_are_counted_before_anything_runs(tmp_path):
    root = _csv_tree(tmp_path)
    for i in (1, 3, 10):
        (root / "img" / f"{i}.jpg").unlink()
    with pytest.raises(DataError, match=r"3 listed image files are missing \(train 2 of 8, test 1 of 2\), "
                                        r"e.g. .*img/1.jpg, .*img/3.jpg, .*img/10.jpg"):
        build_data(_cfg(f"data.root={root}", "data.csv.file=labels.csv", preset="csv"))


def test_corrupt_image_is_named_or_skipped(tmp_path):
    class_tree(tmp_path, [9, 8])
    (tmp_path / "c0" / "3.jpg").write_bytes(jpeg_bytes()[:60])  # truncated JPEG
    with pytest.raises(DataError, match=r"image file .*c0/3.jpg is corrupt or not an image.*data.skip_corrupt=true"):
        build_data(_cfg(f"data.root={tmp_path}"))
    data = build_data(_cfg(f"data.root={tmp_path}", "data.skip_corrupt=true"))
    total = len(data.train) + len(data.test) + (len(data.val) if data.val is not None else 0)
    assert total == 16 and all("c0/3.jpg" not in p for p in data.train.paths + data.test.paths)
    assert any("skipped 1 corrupt" in n for n in data.notes)
    unchecked = build_data(_cfg(f"data.root={tmp_path}", "data.verify_images=false"))
    assert len(unchecked.train) + len(unchecked.test) + len(unchecked.val) == 17


def test_select_by_val_needs_a_val_split(tiny_overrides):
    cfg = load_config("lift", overrides=[*tiny_overrides, "train.select_by_val=true"])
    with pytest.raises(ConfigError, match=r"train.select_by_val=true needs a validation split.*data.val=holdout"):
        tailtune.fit(cfg)


# ------------------------------------------------------------------ end to end


def test_one_run_on_a_custom_folder_selects_by_val(tiny_overrides, tmp_path, capsys):
    class_tree(tmp_path / "mine", [24, 12, 8, 8])
    out = tmp_path / "runs"
    cfg = load_config("lift", "folder", overrides=[
        *real_data(tiny_overrides), "data.name=folder", "data.imb_ratio=1", f"data.root={tmp_path / 'mine'}", "train.epochs=2", "train.select_by_val=true",
        "eval.tte=none", f"output_dir={out}", "name=own"])
    metrics = tailtune.fit(cfg)
    run = out / "own"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["selection"] == "held-out slice of train"
    assert saved["data"]["val_images"] == 4 and saved["data"]["test_images"] == 8
    ms = saved["model_selection"]
    assert ms["by_val_accuracy"] and len(ms["val_overall_per_epoch"]) == 2 and not ms["test_used_for_selection"]
    best = max(ms["val_overall_per_epoch"])
    assert ms["best_epoch"] == ms["val_overall_per_epoch"].index(best) + 1
    assert saved["val"]["overall"] == pytest.approx(best)  # the kept tensors are the best epoch's
    assert tailtune.evaluate(run, "none", "val", quiet=True)["overall"] == pytest.approx(best)
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["test"]["files"]) == 8 and len(splits["val"]["files"]) == 4
    assert "validation: held-out slice of train" in (run / "log.txt").read_text()
    assert metrics["test"]["overall"] == saved["test"]["overall"]
    assert cli.main(["eval", str(run), "--split", "val", "--tte", "none", "-q"]) == 0
    assert "(val split)" in capsys.readouterr().out
