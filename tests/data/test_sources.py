import pickle

import numpy as np
import pytest
import torch

from conftest import fake_fashion_mnist, write_idx
from datatrees import fake_cifar100
from tailtune.config import DataConfig
from tailtune.data.sources.base import SOURCES, build_data
from tailtune.data.sources.cifar import read_cifar100
from tailtune.data.sources.fashion_mnist import read_fashion_mnist, read_idx
from tailtune.errors import DataError


def test_idx_reader_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", arr)
    write_idx(tmp_path / "b-idx3-ubyte.gz", arr, gz=True)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    assert np.array_equal(read_idx(tmp_path / "b-idx3-ubyte.gz"), arr)


def test_idx_reader_rejects_bad_and_truncated_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(tmp_path / "bad")
    arr = np.zeros((2, 2), dtype=np.uint8)
    write_idx(tmp_path / "t", arr)
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "t")


def test_fashion_mnist_lt_from_a_folder(tmp_path):
    fake_fashion_mnist(tmp_path, per_class=70)
    with pytest.warns(UserWarning, match="70 images per class, not the standard 6000"):
        data = build_data(DataConfig(name="fashion_mnist_lt", root=str(tmp_path), imb_ratio=1))
    assert data.num_classes == 10 and len(data.train) == 700 and len(data.test) == 30
    assert data.group_names == ("head", "middle", "tail")
    img, y = data.train[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 28, 28) and torch.equal(img[0], img[2])  # gray as RGB
    assert "thirds" in data.notes[0]


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("tailtune.data.sources.fashion_mnist.FASHION_MNIST_DEBIAN", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        read_fashion_mnist(None)
    # issue 15 (1): a data.root is the only place looked at (no silent fall-back to the system copy)
    with pytest.raises(DataError, match=r"data.root=.*empty does not exist"):
        read_fashion_mnist(str(tmp_path / "empty"))


def test_cifar100_lt_counts_and_groups(tmp_path):
    fake_cifar100(tmp_path)
    data = build_data(DataConfig(name="cifar100_lt", root=str(tmp_path), imb_ratio=100))
    assert len(data.train) == 10847
    counts = data.train_counts
    assert counts[0] == 500 and counts[-1] == 5
    assert data.classnames[0] == "class 0"
    assert [int((data.groups == g).sum()) for g in range(3)] == [35, 35, 30]


def test_cifar100_ir50_uses_ir100_groups(tmp_path):
    fake_cifar100(tmp_path)
    data = build_data(DataConfig(name="cifar100_lt", root=str(tmp_path), imb_ratio=50, group_imb_ratio=100))
    assert len(data.train) == 12608
    assert [int((data.groups == g).sum()) for g in range(3)] == [35, 35, 30]
    assert any("imbalance ratio 100" in n for n in data.notes)


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for n in ("train", "test", "meta"):
        pickle.dump({"x": print}, open(folder / n, "wb"))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        read_cifar100(tmp_path)


def test_cifar_files_pickled_by_python3_with_protocol_2_load(tmp_path):
    # Python 3 writes bytes (and the arrays' raw data) under protocol 2 as _codecs.encode(str, 'latin1').
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    labels = list(np.tile(np.arange(100), 500))
    data = rng.integers(0, 255, (len(labels), 3072), dtype=np.uint8)
    with open(folder / "train", "wb") as f:
        pickle.dump({"data": data, "fine_labels": labels, "batch_label": b"training batch 1 of 1",
                     "filenames": [b"a_s_000001.png", b""]}, f, protocol=2)
    with open(folder / "test", "wb") as f:
        pickle.dump({"data": data[:200], "fine_labels": labels[:200], "batch_label": b"testing batch"}, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class_{i}" for i in range(100)], "coarse_label_names": [b"x"]}, f,
                    protocol=2)
    assert b"c_codecs\nencode" in (folder / "train").read_bytes()  # the call this test is about
    (xtr, ytr), (xte, yte), names = read_cifar100(tmp_path)
    assert np.array_equal(xtr, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)) and ytr == labels
    assert len(xte) == 200 and names[5] == "class 5"


@pytest.mark.parametrize("payload, refused", [
    (b"cos\nsystem\n(S'echo pwned'\ntR.", "os.system"),  # GLOBAL os.system, called by REDUCE
    (b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.", "posix.system"),
    (b"\x80\x02c_codecs\ndecode\nX\x02\x00\x00\x00abX\x06\x00\x00\x00latin1\x86R.", "_codecs.decode"),
    # the allowed call with other arguments than pickle writes
    (b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x05\x00\x00\x00utf-8\x86R.", "other than"),
    (b"\x80\x02c_codecs\nencode\nK\x05X\x06\x00\x00\x00latin1\x86R.", "other than"),
    (b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00ab\x85R.", "other than"),
    (b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x10\x85R.", "bytes"),
])
def test_cifar_reader_still_refuses_every_other_call(tmp_path, payload, refused):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for n in ("train", "test", "meta"):
        (folder / n).write_bytes(payload)
    with pytest.raises(DataError, match=rf"not a valid CIFAR-100 python file \(refusing .*{refused}"):
        read_cifar100(tmp_path)


def test_cifar_missing_files_message(tmp_path):
    with pytest.raises(DataError, match="cifar-100-python.*data.download=true"):
        read_cifar100(tmp_path)


def test_image_folder_source(tmp_path):
    from PIL import Image

    for split, n in (("train", [6, 3, 1]), ("test", [2, 2, 2])):
        for c, k in enumerate(n):
            d = tmp_path / split / f"cls_{c}"
            d.mkdir(parents=True)
            for i in range(k):
                Image.new("RGB", (8, 8), (c * 80, 0, 0)).save(d / f"{i}.png")
    data = build_data(DataConfig(name="folder", root=str(tmp_path), imb_ratio=1))
    assert data.classnames == ["cls 0", "cls 1", "cls 2"]
    assert data.train_counts.tolist() == [6, 3, 1]
    (tmp_path / "train" / "cls_0" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="0.png is corrupt"):
        data.train[0]


@pytest.mark.parametrize("name", SOURCES.names())
def test_every_source_has_help(name):
    assert SOURCES.help(name)
