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
