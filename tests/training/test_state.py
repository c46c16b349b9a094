import random

import numpy as np
import pytest
import torch

from tailtune.errors import CheckpointError
from tailtune.training.state import load_state, save_state, set_rng_state


def test_state_roundtrip_restores_optimizer_and_every_rng(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    random.seed(3)
    np.random.set_state(np.random.RandomState(3).get_state())  # the global stream is what is saved
    torch.manual_seed(3)
    path = tmp_path / "state.safetensors"
    save_state(path, {"w": model.weight}, opt, {"epoch": 1, "step": 7}, {"history": [1.5]})
    want = (random.random(), np.random.rand(), torch.rand(1))
    random.random(), np.random.rand(), torch.rand(1)  # move every stream on

    st = load_state(path)
    assert st["counters"] == {"epoch": 1, "step": 7} and st["extra"] == {"history": [1.5]}
    assert torch.equal(st["model"]["w"], model.weight.detach())
    fresh = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    fresh.load_state_dict(st["optimizer"])
    for param in model.parameters():
        assert torch.equal(opt.state[param]["momentum_buffer"], fresh.state[param]["momentum_buffer"])
    set_rng_state(*st["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[0] == want[0] and got[1] == want[1] and torch.equal(got[2], want[2])
    assert not (tmp_path / "state.safetensors.tmp").exists()


def test_missing_and_truncated_state(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        load_state(tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_state(tmp_path / "bad.safetensors")


def test_reading_while_a_job_replaces_the_file_sees_a_whole_state(tmp_path):
    """A watcher (or the resume test) may read while training rewrites the state; every read is whole."""
    import threading

    path = tmp_path / "state.safetensors"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    stop = threading.Event()

    def writer():
        step = 0
        while not stop.is_set():  # alternate sizes so a mixed-up read cannot go unnoticed
            save_state(path, {"w": torch.full((1 + step % 7,), float(step))}, opt, {"step": step}, {"pad": "x" * (step % 5)})
            step += 1

    save_state(path, {"w": torch.zeros(1)}, opt, {"step": 0}, {"pad": ""})
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            st = load_state(path)
            step = st["counters"]["step"]
            assert torch.equal(st["model"]["w"], torch.full((1 + step % 7,), float(step)))
    finally:
        stop.set()
        thread.join()


def _state(path, classnames=("a", "b")):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_state(path, {"w": model.weight}, opt, {"step": 1}, {}, classnames=classnames, origin="run /r on dataset d")
    return model


def test_a_damaged_state_is_refused(tmp_path):
    path = tmp_path / "state.safetensors"
    _state(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # a byte of the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"training state {path} is damaged or edited: .*cannot resume"):
        load_state(path)


def test_a_state_of_other_classes_is_refused(tmp_path):
    path = tmp_path / "state.safetensors"
    _state(path, ["a", "b"])
    assert load_state(path, ["a", "b"])["counters"] == {"step": 1}
    with pytest.raises(CheckpointError, match=r"training state .* was saved for other classes \(run /r on dataset d\): "
                                              r"its class 1 is 'b', in the dataset e it is 'c'"):
        load_state(path, ["a", "c"], "the dataset e")
    with pytest.raises(CheckpointError, match="it has 2 classes, the dataset e has 3"):
        load_state(path, ["a", "b", "c"], "the dataset e")


def test_a_state_written_the_old_way_loads_with_a_note(tmp_path):
    from safetensors.torch import load_file, save_file

    from tailtune.runtime.checkpoint import read_snapshot

    path = tmp_path / "state.safetensors"
    model = _state(path)
    meta, _ = read_snapshot(path, "test file")
    old = {k: v for k, v in meta.items() if k not in ("sha256", "classnames", "origin")}  # as written before
    save_file(load_file(str(path)), str(path), metadata=old)
    notes = []
    st = load_state(path, ["x", "y"], log=notes.append)
    assert torch.equal(st["model"]["w"], model.weight.detach())
    assert notes == [f"note: training state {path} carries no checksum (written by an older tailtune): "
                     "loaded without an integrity check."]
