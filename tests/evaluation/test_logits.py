"""A run's stored logits (logits.safetensors): the file, the size rule of eval.save_logits=auto, and
when RunLogits reads them or runs the model (and says so)."""

import numpy as np
import pytest
from safetensors import safe_open

from tailtune.errors import CheckpointError, ConfigError
from tailtune.evaluation import logits as L

SHA = "ab" * 32
RNG = np.random.default_rng(0)
TEST_Y = RNG.integers(0, 5, 12)
VAL_Y = RNG.integers(0, 5, 4)
TEST_Z = RNG.normal(size=(12, 5)).astype(np.float32)
PLAIN_Z = RNG.normal(size=(12, 5)).astype(np.float32)
VAL_Z = RNG.normal(size=(4, 5)).astype(np.float32)


def _entries():
    return [L.SplitLogits("test", "fivecrop", TEST_Z, TEST_Y, "fp32", 5),
            L.SplitLogits("test", "none", PLAIN_Z, TEST_Y, "fp32", 1),
            L.SplitLogits("val", "fivecrop", VAL_Z, VAL_Y, "fp32", 5)]


@pytest.fixture
def stored(tmp_path):
    path = tmp_path / "logits.safetensors"
    L.save_logits(path, _entries(), SHA)
    return path


def test_the_file_holds_each_split_and_mode_with_what_ties_it_to_the_model(stored):
    with safe_open(str(stored), framework="np") as f:
        keys, meta = set(f.keys()), f.metadata()
        assert f.get_tensor("test/fivecrop/logits").dtype == np.float32
        assert f.get_tensor("test/labels").dtype == np.int64
    assert keys == {"test/fivecrop/logits", "test/none/logits", "test/labels", "val/fivecrop/logits", "val/labels"}
    assert meta["format"] == L.FORMAT and meta["checkpoint_sha256"] == SHA and "sha256" in meta
    sha, entries = L.read_logits(stored)
    assert sha == SHA and set(entries) == {("test", "fivecrop"), ("test", "none"), ("val", "fivecrop")}
    e = entries[("test", "fivecrop")]
    assert e.logits.shape == (12, 5) and np.array_equal(e.logits, TEST_Z) and np.array_equal(e.labels, TEST_Y)
    assert (e.precision, e.views) == ("fp32", 5) and entries[("val", "fivecrop")].logits.shape == (4, 5)


def test_an_edited_or_foreign_file_is_refused_by_name(stored, tmp_path):
    data = bytearray(stored.read_bytes())
    data[-5] ^= 0xFF  # a bit of the last tensor
    stored.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged or edited: its contents do not match the sha256"):
        L.read_logits(stored)
    stored.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        L.read_logits(stored)
    import torch

    from tailtune.runtime.checkpoint import write_safetensors
    write_safetensors(tmp_path / "other.safetensors", {"x": torch.zeros(2)}, {"format": "tailtune-checkpoint-1"}, True)
    with pytest.raises(CheckpointError, match="not a tailtune logits file"):
        L.read_logits(tmp_path / "other.safetensors")


def test_the_size_rule_of_auto():
    assert L.logits_nbytes([12, 12, 4], 5) == (12 + 12 + 4) * (5 * 4 + 8)
    # iNaturalist 2018 (24,426 test images, 8,142 classes) with fivecrop and none: about 1.6 GB, over the limit
    assert L.logits_nbytes([24426, 24426], 8142) > L.AUTO_MAX_BYTES
    # ImageNet-LT (50,000 test, 20,000 val, 1,000 classes) with fivecrop and none: under it
    assert L.logits_nbytes([50000, 50000, 20000], 1000) <= L.AUTO_MAX_BYTES
    assert L.save_decision("auto", L.AUTO_MAX_BYTES) == (True, None)
    keep, note = L.save_decision("auto", L.AUTO_MAX_BYTES + 1)
    assert not keep and "eval.save_logits=auto: the logits are not saved" in note and "512 MiB" in note
    assert "eval.save_logits=true" in note
    assert L.save_decision(True, 10 * L.AUTO_MAX_BYTES) == (True, None)
    assert L.save_decision(False, 1) == (False, None)
    with pytest.raises(ConfigError, match="eval.save_logits='yes' is not valid"):
        L.save_decision("yes", 1)


class _Model:
    """The compute of RunLogits: counts what it is asked for."""

    def __init__(self):
        self.asked = []

    def __call__(self, split, tte):
        self.asked.append((split, tte))
        z = {"test": TEST_Z + 1, "val": VAL_Z + 1}[split]
        return z, {"test": TEST_Y, "val": VAL_Y}[split], 5


def _source(path, sha=SHA, precision="fp32", labels=None, why_not=None):
    model = _Model()
    now = labels or {"test": TEST_Y, "val": VAL_Y}
    return L.RunLogits(model, lambda s: now[s], precision, path, sha, why_not), model


def test_matching_logits_are_read_and_the_model_is_not_run(stored):
    src, model = _source(stored)
    z, y, views = src.get("test", "fivecrop")
    assert np.array_equal(z, TEST_Z) and np.array_equal(y, TEST_Y) and views == 5
    src.get("val", "fivecrop")
    src.get("test", "fivecrop")  # asked again (a second method): the same arrays
    assert model.asked == [] and src.forwards == 0
    assert src.line() == f"logits: read from {stored} (test fivecrop, val fivecrop): no model forward"


@pytest.mark.parametrize("change, why", [
    ({"sha": "cd" * 32}, r"written for another checkpoint \(sha256 abababababab\.\.\., the run's checkpoint"),
    ({"sha": None}, r"the checkpoint carries no sha256"),
    ({"precision": "bf16"}, r"test logits were computed in fp32, this evaluation is in bf16"),
    ({"labels": {"test": TEST_Y[::-1], "val": VAL_Y}}, r"test labels differ from the test split's labels now"),
    ({"why_not": "asked to recompute them"}, r"asked to recompute them"),
], ids=["other-checkpoint", "no-checksum", "precision", "labels", "recompute"])
def test_a_mismatch_runs_the_model_and_says_why(stored, change, why):
    import re

    src, model = _source(stored, **change)
    z, y, _ = src.get("test", "fivecrop")
    assert np.array_equal(z, TEST_Z + 1)  # the model's
    src.get("test", "fivecrop")
    assert model.asked == [("test", "fivecrop")]  # once, whoever asks again
    line = src.line()
    assert line.startswith("logits: computed by the model (test fivecrop): ") and re.search(why, line), line


def test_missing_or_damaged_file_or_entry_runs_the_model(stored, tmp_path):
    src, model = _source(tmp_path / "none.safetensors")
    src.get("test", "fivecrop")
    assert model.asked == [("test", "fivecrop")] and "no none.safetensors in the run folder" in src.line()
    src, model = _source(stored)
    src.get("val", "none")  # not stored: val is kept with the run's tte only
    src.get("test", "none")
    assert model.asked == [("val", "none")]
    assert src.line() == (f"logits: read from {stored} (test none); computed by the model (val none): "
                          "logits.safetensors holds no val logits with tte none (it holds test fivecrop, test none, "
                          "val fivecrop)")
    stored.write_bytes(stored.read_bytes()[:-3])
    src, model = _source(stored)
    src.get("test", "fivecrop")
    assert model.asked == [("test", "fivecrop")] and "truncated or not a safetensors file" in src.line()
