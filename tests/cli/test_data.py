"""`tailtune data fetch-splits / stats / check`, and model selection on the validation split."""

import gzip
import hashlib
import shutil
from types import SimpleNamespace

import pytest
import torch

from conftest import SPLITS
from datatrees import class_tree
from tailtune.cli import app as cli
from tailtune.data.fetch import SPLIT_LISTS, ListFile, fetch_splits
from tailtune.errors import DataError
from tailtune.training.selection import Selector

# ------------------------------------------------------------------ fetch-splits


def test_fetch_offline_says_which_files_go_where(tmp_path, capsys):
    with pytest.raises(DataError) as e:
        fetch_splits("places_lt", tmp_path / "lists", offline=True, log=lambda m: None)
    msg = str(e.value)
    assert f"Place these files in {tmp_path / 'lists'}: Places_LT_train.txt" in msg
    assert "Places_LT_test.txt" in msg and "classifier-balancing/main/data/Places_LT/Places_LT_train.txt" in msg
    assert "Places_LT_val.txt" not in msg  # optional: logged, not required
    assert cli.main(["data", "fetch-splits", "inat2018", "--root", str(tmp_path / "i"), "--offline"]) == 2
    err = capsys.readouterr().err
    assert "iNaturalist18_train.txt (no direct download)" in err
    assert "or place train2018.json and val2018.json there instead" in err


@pytest.fixture
def fake_lists(tmp_path, monkeypatch):
    """A registered benchmark whose lists download from local file:// URLs."""
    src = tmp_path / "server"
    src.mkdir()
    good = b"train/a/1.jpg 0\ntrain/b/1.jpg 1\n"
    (src / "good.txt").write_bytes(good)
    (src / "wrong.txt").write_bytes(b"train/a/1.jpg 5\n")
    digest = hashlib.sha256(good).hexdigest()
    specs = (ListFile("A_train.txt", (src / "good.txt").as_uri(), "the fake project", digest),
             ListFile("A_test.txt", (src / "good.txt").as_uri(), "the fake project", lines=2))
    monkeypatch.setitem(SPLIT_LISTS._items, "fake_lt", specs)
    return src, digest


def test_fetch_downloads_and_verifies(fake_lists, tmp_path):
    report = fetch_splits("fake_lt", tmp_path / "lists", log=lambda m: None)
    assert [r["status"] for r in report] == ["downloaded and verified"] * 2
    assert (tmp_path / "lists" / "A_train.txt").read_bytes() == b"train/a/1.jpg 0\ntrain/b/1.jpg 1\n"
    again = fetch_splits("fake_lt", tmp_path / "lists", offline=True, log=lambda m: None)
    assert [r["status"] for r in again] == ["verified"] * 2


def test_fetch_refuses_a_wrong_file(fake_lists, tmp_path, monkeypatch):
    src, digest = fake_lists
    wrong = hashlib.sha256(b"train/a/1.jpg 5\n").hexdigest()
    monkeypatch.setitem(SPLIT_LISTS._items, "fake_lt", (ListFile("A_train.txt", (src / "wrong.txt").as_uri(),
                                                                 "the fake project", digest),))
    with pytest.raises(DataError, match=rf"not the standard A_train.txt \(sha256 {wrong}, expected {digest}\) "
                                        r"and was removed"):
        fetch_splits("fake_lt", tmp_path / "lists", log=lambda m: None)
    assert not (tmp_path / "lists" / "A_train.txt").exists()
    (tmp_path / "lists" / "A_train.txt").write_bytes(b"x 0\n")  # a present file that is not the list
    with pytest.raises(DataError, match=r"A_train.txt is not the standard A_train.txt .*delete it and run again"):
        fetch_splits("fake_lt", tmp_path / "lists", offline=True, log=lambda m: None)


def test_fetch_reports_a_failed_download(fake_lists, tmp_path, monkeypatch):
    src, digest = fake_lists
    monkeypatch.setitem(SPLIT_LISTS._items, "fake_lt", (ListFile("A_train.txt", (src / "gone.txt").as_uri(),
                                                                 "the fake project", digest),))
    with pytest.raises(DataError, match=r"A_train.txt \(download failed: .*\): download file://.*gone.txt or get "
                                        r"it from the fake project"):
        fetch_splits("fake_lt", tmp_path / "lists", log=lambda m: None)


@pytest.mark.skipif(not SPLITS.is_dir(), reason=f"{SPLITS} not present")
def test_fetch_verifies_the_real_lists(tmp_path):
    for name in ("Places_LT_train.txt", "Places_LT_test.txt"):
        shutil.copy(SPLITS / f"{name}.gz", tmp_path / f"{name}.gz")
    with gzip.open(SPLITS / "Places_LT_val.txt.gz", "rb") as f, open(tmp_path / "Places_LT_val.txt", "wb") as out:
        shutil.copyfileobj(f, out)
    report = fetch_splits("places_lt", tmp_path, offline=True, log=lambda m: None)
    assert [r["status"] for r in report] == ["verified"] * 3
    (tmp_path / "Places_LT_val.txt").write_text("train/airfield/1.jpg 0\n")
    with pytest.raises(DataError, match=r"Places_LT_val.txt is not the standard .*expected 719e3cf3"):
        fetch_splits("places_lt", tmp_path, offline=True, log=lambda m: None)


# ------------------------------------------------------------------ stats and check


def test_stats_prints_the_profile_and_saves_a_plot(tmp_path, capsys):
    class_tree(tmp_path / "img", [150, 60, 30, 10, 10, 5])
    plot = tmp_path / "counts.png"
    assert cli.main(["data", "stats", "folder", f"data.root={tmp_path / 'img'}", "data.holdout_per_class=1",
                     "data.val=none", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    # one image per class held out for the test split: 149, 59, 29, 9, 9, 4 remain
    assert "folder: 6 classes, 259 training images, 0 validation (none), 6 test" in out
    assert "per class: max 149, median 19, min 4; imbalance ratio 37.2" in out
    assert "groups: many 1 classes / 149 images, medium 2 classes / 88 images, few 3 classes / 22 images" in out
    assert "head: c0 (149), c1 (59), c2 (29), c3 (9), c4 (9)" in out
    assert "tail: c5 (4), c4 (9), c3 (9)" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_command(tmp_path, capsys):
    class_tree(tmp_path / "img", [8, 8])
    assert cli.main(["data", "check", "folder", f"data.root={tmp_path / 'img'}"]) == 0
    out = capsys.readouterr().out
    assert "folder: 2 classes; train 10, val 2, test 4 images; every listed file present and decodable" in out
    (tmp_path / "img" / "c1" / "0.jpg").write_bytes(b"GIF89a")
    assert cli.main(["data", "check", "folder", f"data.root={tmp_path / 'img'}"]) == 2
    assert "c1/0.jpg is corrupt" in capsys.readouterr().err


# ------------------------------------------------------------------ model selection


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def trainable_state_dict(self):
        return {"w": self.w.detach()}


@pytest.mark.parametrize("accs,best", [([50.0, 70.0, 60.0], 2), ([40.0, 40.0, 30.0], 1)])
def test_selector_restores_the_best_epoch(accs, best):
    model, seen = _Toy(), iter([*accs, 99.0])
    sel = Selector(model, SimpleNamespace(val=[0], val_source="val split"), True,
                   lambda: {"overall": next(seen)}, log=lambda m: None)
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.w.fill_(float(epoch))  # what training would have changed
        sel.after_epoch(epoch)
    out = sel.finish()
    assert model.w.item() == float(best)  # the best (earliest on ties) epoch's tensors are back
    assert out["model_selection"]["best_epoch"] == best and out["model_selection"]["val_overall_per_epoch"] == accs
    assert out["selection"] == "val split" and out["val"] == {"overall": 99.0}


def test_selector_without_validation_reports_none():
    model = _Toy()
    out = Selector(model, SimpleNamespace(val=None, val_source=None), False, lambda: 1 / 0).finish()
    assert out["selection"] == "none" and out["val"] is None and out["model_selection"]["best_epoch"] is None
