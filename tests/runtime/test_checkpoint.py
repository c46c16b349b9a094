import os

import pytest
import torch
from torch import nn

from tailtune.errors import CheckpointError
from tailtune.runtime.checkpoint import load_checkpoint, save_checkpoint, write_safetensors


class Toy(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.head = nn.Linear(4, n)

    def trainable_state_dict(self):
        return {k: v.detach() for k, v in self.state_dict().items()}


INFO = {"provider": "open_clip", "name": "ViT-B-16", "pretrained": "openai"}
NAMES = ["cat", "dog", "fox"]


def test_roundtrip_and_atomic_write(tmp_path):
    src, dst = Toy(), Toy()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, src.trainable_state_dict(), "a: 1\n", INFO, NAMES)
    assert not (tmp_path / "c.safetensors.tmp").exists()
    meta = load_checkpoint(path, dst, INFO, NAMES)
    assert meta["config"] == "a: 1\n"
    assert torch.equal(src.head.weight, dst.head.weight)


def test_other_backbone_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Toy().trainable_state_dict(), "", INFO, NAMES)
    with pytest.raises(CheckpointError, match="trained on backbone .*ViT-B-16.*ViT-L-14"):
        load_checkpoint(path, Toy(), {**INFO, "name": "ViT-L-14"}, NAMES)


def test_shape_mismatch_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Toy(3).trainable_state_dict(), "", INFO, NAMES)
    with pytest.raises(CheckpointError, match=r"head\.(weight|bias) has shape \(3, ?4?\),? the model needs"):
        load_checkpoint(path, Toy(5), INFO, NAMES)


def test_foreign_and_missing_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a tailtune checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors", Toy(), INFO, NAMES)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors", Toy(), INFO, NAMES)


def test_read_snapshot_matches_safetensors_and_gives_writable_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    from tailtune.runtime.checkpoint import read_snapshot

    tensors = {"f": torch.randn(3, 4), "b": torch.randn(5).bfloat16(), "h": torch.randn(2, 2).half(),
               "i": torch.arange(7), "u": torch.arange(6, dtype=torch.uint8).view(2, 3),
               "t": torch.tensor([True, False]), "empty": torch.zeros(0, dtype=torch.int64), "s": torch.tensor(2.5)}
    save_file(tensors, str(tmp_path / "x.safetensors"), metadata={"k": "v"})
    meta, got = read_snapshot(tmp_path / "x.safetensors", "test file")
    want = load_file(str(tmp_path / "x.safetensors"))
    assert meta == {"k": "v"} and got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    got["f"].add_(1)  # views of one writable buffer (the optimizer updates loaded momentum in place)
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        read_snapshot(tmp_path / "cut.safetensors", "test file")


def test_written_files_have_the_usual_permissions(tmp_path):
    import os
    import stat

    save_checkpoint(tmp_path / "c.safetensors", Toy(3).trainable_state_dict(), "", INFO, NAMES)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "c.safetensors").stat().st_mode) == 0o666 & ~umask


def _rewrite_forever(path, stop):
    step = 0
    while not stop.is_set():  # new sizes and metadata every step: a mixed-up read cannot go unnoticed
        write_safetensors(path, {"w": torch.full((1 + step % 7, 1000), float(step))}, {"step": str(step)})
        step += 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks a writer process")
def test_read_snapshot_is_whole_while_another_process_replaces_the_file(tmp_path):
    """A writer in another process (a training job; a thread would hold the GIL and hide the race):
    safetensors' default mmap reader mixed header and tensors of two files here in ~1% of reads."""
    import multiprocessing

    from tailtune.runtime.checkpoint import read_snapshot

    path = tmp_path / "state.safetensors"
    write_safetensors(path, {"w": torch.zeros(1, 1000)}, {"step": "0"})
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    writer = ctx.Process(target=_rewrite_forever, args=(path, stop))
    writer.start()
    try:
        for _ in range(1500):
            meta, tensors = read_snapshot(path, "test file")
            step = int(meta["step"])
            assert torch.equal(tensors["w"], torch.full((1 + step % 7, 1000), float(step))), step
    finally:
        stop.set()
        writer.join()


# ---- integrity: checksum, class names, finite weights, files written before them


def _flip_data_byte(path, from_end: int = 1) -> None:
    """Flip one byte in the tensors' data region (after the 8-byte length and the JSON header)."""
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    i = len(data) - from_end
    assert i >= header
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_tensor_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Toy().trainable_state_dict(), "", INFO, NAMES)
    _flip_data_byte(path)
    dst = Toy()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is damaged or edited: .*sha256.*Restore"):
        load_checkpoint(path, dst, INFO, NAMES)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())  # nothing was loaded


def test_an_edited_header_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from tailtune.runtime.checkpoint import read_snapshot

    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Toy().trainable_state_dict(), "a: 1\n", INFO, NAMES)
    meta, _ = read_snapshot(path, "test file")
    save_file(load_file(str(path)), str(path), metadata={**meta, "classnames": '["cat", "dog", "wolf"]'})
    with pytest.raises(CheckpointError, match="damaged or edited"):
        load_checkpoint(path, Toy(), INFO, ["cat", "dog", "wolf"])


def test_a_checkpoint_of_other_classes_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Toy().trainable_state_dict(), "", INFO, ["cat", "dog", "fox"], "run /x/b on dataset pets")
    with pytest.raises(CheckpointError, match=r"was saved for other classes \(run /x/b on dataset pets\): its class 2 "
                                              r"is 'fox', in the dataset zoo it is 'wolf'\. It holds another run's"):
        load_checkpoint(path, Toy(), INFO, ["cat", "dog", "wolf"], "the dataset zoo")
    load_checkpoint(path, Toy(), INFO, ["cat", "dog", "fox"])  # its own classes: fine


def test_the_checksum_is_over_names_dtypes_shapes_and_bytes():
    from tailtune.runtime.checkpoint import content_sha256

    t = {"a": torch.arange(6, dtype=torch.float32), "b": torch.zeros(2, dtype=torch.bfloat16)}
    base = content_sha256(t, {"k": "v"})
    assert base == content_sha256(dict(reversed(list(t.items()))), {"k": "v"})  # key order of the dict: none
    assert base == content_sha256(t, {"k": "v", "sha256": "anything"})  # the checksum is not over itself
    for other in ({"a": t["a"].view(2, 3), "b": t["b"]}, {"a": t["a"].int(), "b": t["b"]},
                  {"c": t["a"], "b": t["b"]}, {"a": t["a"], "b": t["b"].half()}):
        assert content_sha256(other, {"k": "v"}) != base
    assert content_sha256(t, {"k": "w"}) != base


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("with_checksum", [True, False])
def test_non_finite_weights_are_refused(tmp_path, value, with_checksum):
    src = Toy()
    tensors = src.trainable_state_dict()
    tensors["head.weight"] = tensors["head.weight"].clone()
    tensors["head.weight"][1, 2] = value
    path = tmp_path / "c.safetensors"
    if with_checksum:
        save_checkpoint(path, tensors, "", INFO, NAMES)
    else:
        write_safetensors(path, tensors, _old_meta())
    with pytest.raises(CheckpointError, match=r"head\.weight holds 1 non-finite value\(s\) \(NaN or infinity\) "
                                              r"of 12; these weights cannot predict"):
        load_checkpoint(path, Toy(), INFO, NAMES)


def _old_meta(num_classes: int = 3) -> dict:
    """The metadata save_checkpoint wrote before checksums and class names."""
    import json

    return {"format": "tailtune-checkpoint-1", "config": "a: 1\n", "backbone": json.dumps(INFO, sort_keys=True),
            "num_classes": str(num_classes)}


def test_a_checkpoint_written_the_old_way_loads_with_a_note(tmp_path):
    src, dst = Toy(), Toy()
    path = tmp_path / "old.safetensors"
    write_safetensors(path, src.trainable_state_dict(), _old_meta())
    notes = []
    meta = load_checkpoint(path, dst, INFO, ["any", "names", "fit"], log=notes.append)
    assert meta["config"] == "a: 1\n" and torch.equal(src.head.weight, dst.head.weight)
    assert notes == [f"note: checkpoint {path} carries no checksum (written by an older tailtune): "
                     "loaded without an integrity check."]
    with pytest.raises(CheckpointError, match="has 3 classes, the dataset has 2"):  # the count is still checked
        load_checkpoint(path, Toy(), INFO, ["a", "b"])
    save_checkpoint(tmp_path / "new.safetensors", src.trainable_state_dict(), "", INFO, NAMES)
    notes.clear()
    load_checkpoint(tmp_path / "new.safetensors", Toy(), INFO, NAMES, log=notes.append)
    assert notes == []  # verified: nothing to say
