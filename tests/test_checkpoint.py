import pytest
import torch
from torch import nn

from tailtune.checkpoint import load_checkpoint, save_checkpoint
from tailtune.errors import CheckpointError


class Toy(nn.Module):
    def __init__(self, n=3):
        super().__init__()
        self.head = nn.Linear(4, n)

    def trainable_state_dict(self):
        return {k: v.detach() for k, v in self.state_dict().items()}


INFO = {"provider": "open_clip", "name": "ViT-B-16", "pretrained": "openai"}


def test_roundtrip_and_atomic_write(tmp_path):
    src, dst = Toy(), Toy()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, src.trainable_state_dict(), "a: 1\n", INFO, 3)
    assert not (tmp_path / "c.safetensors.tmp").exists()
    meta = load_checkpoint(path, dst, INFO, 3)
    assert meta["config"] == "a: 1\n"
    assert torch.equal(src.head.weight, dst.head.weight)


def test_other_backbone_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Toy().trainable_state_dict(), "", INFO, 3)
    with pytest.raises(CheckpointError, match="trained on backbone .*ViT-B-16.*ViT-L-14"):
        load_checkpoint(path, Toy(), {**INFO, "name": "ViT-L-14"}, 3)


def test_shape_mismatch_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, Toy(3).trainable_state_dict(), "", INFO, 3)
    with pytest.raises(CheckpointError, match=r"head\.(weight|bias) has shape \(3, ?4?\),? the model needs"):
        load_checkpoint(path, Toy(5), INFO, 3)


def test_foreign_and_missing_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a tailtune checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors", Toy(), INFO, 3)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors", Toy(), INFO, 3)
