"""The preprocessed image store: round trip, refusal of a foreign store, the CLI and data.store."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_CLIP
from tailtune.cli.app import main
from tailtune.config import DataConfig, load_config
from tailtune.data import transforms
from tailtune.data.base import FileDataset
from tailtune.data.sources.base import LTData
from tailtune.data.store import StoreSplit, use_store, write_store
from tailtune.errors import DataError

SIZES = [(500, 375), (375, 500), (40, 30)]  # landscape, portrait, already small


def _jpegs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // w), (yy * 255 // h), rng.integers(0, 255, (h, w))], -1).astype(np.uint8)
        paths.append(folder / f"img{i}.jpg")
        Image.fromarray(img).save(paths[-1], quality=90)
    return paths


def _data(tmp_path):
    paths = _jpegs(tmp_path / "images")
    train = FileDataset(paths, [0, 1, 0])
    test = FileDataset(paths[:2], [1, 0])
    return LTData(train, test, ["a", "b"], np.array([0, 0]))


def test_round_trip_equals_the_raw_path_after_resize(tmp_path):
    data = _data(tmp_path)
    meta = write_store(data, DataConfig(name="folder"), tmp_path / "store", short_side=64)
    store = StoreSplit(tmp_path / "store", "train")
    assert store.targets == [0, 1, 0] and meta["splits"]["train"]["images"] == 3
    # short side brought down to 64 with the long side scaled (torchvision's Resize rule), small images kept
    assert [tuple(store[i][0].shape) for i in range(3)] == [(3, 64, 85), (3, 85, 64), (3, 30, 40)]
    for i, path in enumerate(data.train.paths):
        raw = Image.open(path).convert("RGB")
        expected = raw if min(raw.size) <= 64 else raw.resize((64 * raw.size[0] // min(raw.size),
                                                                64 * raw.size[1] // min(raw.size)), Image.BICUBIC)
        assert np.array_equal(store[i][0].permute(1, 2, 0).numpy(), np.asarray(expected)), path


def test_test_views_are_identical_when_stored_at_the_test_resize(tmp_path):
    data = _data(tmp_path)
    p = transforms.Preprocess(56, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    write_store(data, DataConfig(name="folder"), tmp_path / "store", short_side=int(56 * 8 / 7))
    store = StoreSplit(tmp_path / "store", "train")
    view = transforms.test_transform(p)
    for i in range(2):  # the same pixels; only the float conversion's rounding differs
        torch.testing.assert_close(view(store[i][0]), view(data.train[i][0]), rtol=0, atol=1e-5)


def test_store_refuses_another_config_and_half_written_stores(tmp_path):
    cfg = load_config(None, None, (), ["data.name=synthetic", "data.synthetic.num_classes=3"]).data
    from tailtune.data.sources.base import build_data

    write_store(build_data(cfg), cfg, tmp_path / "store", short_side=16)
    other = load_config(None, None, (), ["data.name=synthetic", "data.synthetic.num_classes=3", "data.subset_seed=1",
                                         f"data.store={tmp_path / 'store'}"]).data
    with pytest.raises(DataError, match=r"differs in data.subset_seed"):
        use_store(build_data(other), other)
    (tmp_path / "store" / "meta.json").unlink()
    same = load_config(None, None, (), ["data.name=synthetic", "data.synthetic.num_classes=3",
                                        f"data.store={tmp_path / 'store'}"]).data
    with pytest.raises(DataError, match="not an image store"):
        use_store(build_data(same), same)


def test_a_store_written_with_the_old_flat_data_keys_is_still_used(tmp_path):
    cfg = load_config(None, None, (), ["data.name=synthetic", "data.synthetic.num_classes=3",
                                       f"data.store={tmp_path / 'store'}"]).data
    from tailtune.data.sources.base import build_data

    write_store(build_data(cfg), cfg, tmp_path / "store", short_side=16)
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    data = meta["data"]  # as written before the sources owned their options: flat keys
    data.update(data.pop("synthetic"), taxonomy="species", csv=None, allow_absolute_paths=False)
    (tmp_path / "store" / "meta.json").write_text(json.dumps(meta))
    assert len(use_store(build_data(cfg), cfg).train) == len(build_data(cfg).train)
    data["num_classes"] = 4
    (tmp_path / "store" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"differs in data.synthetic"):
        use_store(build_data(cfg), cfg)


def test_truncated_store_is_named(tmp_path):
    write_store(_data(tmp_path), DataConfig(name="folder"), tmp_path / "store", short_side=64)
    pixels = tmp_path / "store" / "train.u8"
    pixels.write_bytes(pixels.read_bytes()[:100])
    with pytest.raises(DataError, match="truncated"):
        StoreSplit(tmp_path / "store", "train")


def test_cli_cache_then_train_from_the_store(tmp_path, capsys):
    store = tmp_path / "store"
    args = ["data.synthetic.num_classes=6", "data.synthetic.train_per_class=24", "data.imb_ratio=8", "data.synthetic.test_per_class=4"]
    assert main(["data", "cache", "synthetic", *args, "--out", str(store), "--short-side", "16", "-q",
                 "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert f"data.store={store}" in out
    meta = json.loads((store / "meta.json").read_text())
    assert meta["splits"]["train"]["images"] == 62 and meta["short_side"] == 16
    # the store holds 16 px images (32 px synthetic images, downscaled): training reads those
    from tailtune.experiment import build

    exp = build(load_config("lift", overrides=[*TINY_CLIP, f"data.store={store}"]))
    assert isinstance(exp.data.train, StoreSplit) and exp.data.train[0][0].shape == (3, 16, 16)
    assert any("below the test view's resize" in n for n in exp.notes)


def test_a_store_spares_the_start_up_decode_of_every_raw_file(tmp_path):
    from datatrees import class_tree
    from tailtune.experiment import build

    root = tmp_path / "photos"
    class_tree(root / "train", [6, 3])
    class_tree(root / "test", [2, 2])
    data_args = ["folder", f"data.root={root}"]
    assert main(["data", "cache", *data_args, "--out", str(tmp_path / "store"), "--short-side", "8", "-q",
                 "--workers", "0"]) == 0
    (root / "train" / "c0" / "0.jpg").write_bytes(b"not a jpeg any more")  # the raw file breaks later

    def cfg(*more):
        model = [o for o in TINY_CLIP if o.startswith("model.")]
        return load_config("lift", "folder", overrides=[*model, "quiet=true", f"data.root={root}", *more])

    with pytest.raises(DataError, match="0.jpg"):
        build(cfg())  # from the files: the start-up check names the broken one
    exp = build(cfg(f"data.store={tmp_path / 'store'}"))  # from the store: its pixels were decoded when built
    assert isinstance(exp.data.train, StoreSplit) and len(exp.data.train) == 9


def test_a_store_is_refused_for_other_classes_or_other_files(tmp_path):
    import shutil

    from datatrees import class_tree
    from tailtune.experiment import build

    model = [o for o in TINY_CLIP if o.startswith("model.")]

    def cfg(root, *more):
        return load_config("lift", "folder", overrides=[*model, "quiet=true", f"data.root={root}",
                                                        f"data.store={tmp_path / 'store'}", *more])

    a = tmp_path / "a"
    class_tree(a / "train", [6, 3])
    class_tree(a / "test", [2, 2])
    assert main(["data", "cache", "folder", f"data.root={a}", "--out", str(tmp_path / "store"), "--short-side", "8",
                 "-q", "--workers", "0"]) == 0
    other_names = tmp_path / "b"  # the same counts under other class names
    class_tree(other_names / "train", [6, 3], prefix="k")
    class_tree(other_names / "test", [2, 2], prefix="k")
    with pytest.raises(DataError, match="built for other classes .*'c0'.*'k0'"):
        build(cfg(other_names))
    other_files = tmp_path / "c"  # the same classes and counts, other files
    class_tree(other_files / "train", [6, 3], start=100)
    class_tree(other_files / "test", [2, 2])
    with pytest.raises(DataError, match=r"train split .* other files .*9 stored, 9 listed.*c0/0\.jpg"):
        build(cfg(other_files))
    moved = tmp_path / "moved"  # the same folder elsewhere: fine (paths are relative to data.root)
    shutil.copytree(a, moved)
    assert len(build(cfg(moved)).data.train) == 9
    (moved / "train" / "c0" / "5.jpg").unlink()
    with pytest.raises(DataError, match=r"1 stored file\(s\) no longer listed \(e\.g\. train/c0/5\.jpg\)"):
        build(cfg(moved))
    with pytest.raises(DataError, match="does not exist"):
        build(cfg(a, f"data.store={tmp_path / 'nowhere'}"))


def test_a_store_inside_the_image_folder_is_refused(tmp_path, capsys):
    from datatrees import class_tree

    class_tree(tmp_path / "photos", [3, 3])
    assert main(["data", "cache", "folder", f"data.root={tmp_path / 'photos'}", "--out",
                 str(tmp_path / "photos" / "store"), "-q", "--workers", "0"]) == 2
    assert "inside data.root" in capsys.readouterr().err


def test_a_store_of_another_filter_than_the_run_is_used_and_named_in_the_notes(tmp_path, capsys):
    from tailtune.experiment import build

    store = tmp_path / "store"
    args = ["data.synthetic.num_classes=6", "data.synthetic.train_per_class=24", "data.imb_ratio=8", "data.synthetic.test_per_class=4"]
    # the cache command takes the config's data.interpolation as its filter (auto: bicubic)
    assert main(["data", "cache", "synthetic", *args, "data.interpolation=bilinear", "--out", str(store),
                 "--short-side", "36", "-q", "--workers", "0"]) == 0
    assert json.loads((store / "meta.json").read_text())["interpolation"] == "bilinear"
    assert "36 px, bilinear" in capsys.readouterr().out

    def notes(*more):
        return build(load_config("lift", overrides=[*TINY_CLIP, f"data.store={store}", *more])).notes

    assert not [n for n in notes("data.interpolation=bilinear") if "resized with" in n]
    # the run's filter differs (auto: the backbone's bicubic): used, and said, with the fix
    (note,) = [n for n in notes("data.interpolation=auto") if "resized with" in n]
    assert "resized with bilinear, this run resizes with bicubic" in note
    assert "--interpolation bicubic" in note
    # the key picks no images: it is not part of the store's data fingerprint
    assert main(["data", "cache", "synthetic", *args, "--out", str(tmp_path / "s2"), "--short-side", "36", "-q",
                 "--workers", "0", "--interpolation", "nearest"]) == 0
    assert json.loads((tmp_path / "s2" / "meta.json").read_text())["interpolation"] == "nearest"
    assert "interpolation" not in json.loads((store / "meta.json").read_text())["data"]
