"""Options that live with their methods: gathered into the schema, old flat keys refused in a
user's layers and read under the new keys from a run folder's saved config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailtune.config import from_yaml_text, load_config, schema, to_dict, to_yaml
from tailtune.config.options import moved_keys
from tailtune.errors import ConfigError

LEGACY = Path(__file__).parent / "legacy" / "config_flat_keys.yaml"
# Every key the legacy file sets off its default, under its new name.
NEW_KEYS = ["peft.method=vpt_deep+ssf", "peft.vpt.length=7", "peft.vpt.position=after_cls",
            "peft.ssf.parts=qkv+mlp", "peft.masked.ratio=0.3", "peft.masked.seed=2",
            "loss.name=ldam", "loss.la.tau=0.5", "loss.focal.gamma=1.5", "loss.cb.beta=0.99", "loss.ldam.beta=0.99",
            "loss.ldam.max_margin=0.4", "loss.ldam.scale=20", "loss.ldam.drw_epoch=3", "loss.lade.alpha=0.2",
            "loss.lade.remine_lambda=0.3",
            "head.init=k_shot", "head.k_shot.shots=4", "head.k_shot.seed=5"]


def test_a_saved_config_with_the_old_flat_keys_loads_under_the_new_ones():
    cfg = from_yaml_text(LEGACY.read_text(), str(LEGACY))
    assert (cfg.peft.vpt.length, cfg.peft.vpt.position, cfg.peft.ssf.parts) == (7, "after_cls", "qkv+mlp")
    assert (cfg.peft.masked.ratio, cfg.peft.masked.seed) == (0.3, 2)
    assert (cfg.head.k_shot.shots, cfg.head.k_shot.seed) == (4, 5)
    assert (cfg.loss.la.tau, cfg.loss.cb.beta, cfg.loss.ldam.beta, cfg.loss.ldam.drw_epoch) == (0.5, 0.99, 0.99, 3)
    # The legacy run holds options of entries it did not choose (peft.masked.*, loss.la.tau): read back
    # as saved; given by a user they would be refused (tests/config/test_unchosen.py), hence unchecked.
    assert to_dict(cfg) == to_dict(load_config("lift", overrides=NEW_KEYS, check_options=False))
    synthetic = LEGACY.read_text().replace("  num_classes: null", "  num_classes: 5")
    assert from_yaml_text(synthetic).data.synthetic.num_classes == 5


def test_a_saved_config_with_the_old_flat_dataset_keys_loads_under_the_new_ones():
    # data.csv (the file) was a flat key of the name the csv source's options section has now.
    text = (LEGACY.read_text().replace("  taxonomy: species", "  taxonomy: genus")
            .replace("  csv: null", "  csv: /data/mine/labels.csv")
            .replace("  allow_absolute_paths: false", "  allow_absolute_paths: true"))
    data = from_yaml_text(text).data
    assert data.inat2018.taxonomy == "genus"
    assert (data.csv.file, data.csv.allow_absolute_paths) == ("/data/mine/labels.csv", True)
    assert from_yaml_text(to_yaml(from_yaml_text(text))) == from_yaml_text(text)  # the new form reads back as is


def test_the_old_flat_keys_in_a_users_file_are_refused_with_the_new_name(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("peft:\n  vpt_length: 5\n")
    with pytest.raises(ConfigError, match=r"'peft.vpt_length' in config file .*mine.yaml is now peft.vpt.length"):
        load_config(files=[str(user)])
    with pytest.raises(ConfigError, match=r"'loss.beta' in command-line overrides is now loss.cb.beta or loss.ldam.beta"):
        load_config(overrides=["loss.beta=0.9"])


def test_the_old_flat_dataset_keys_are_refused_with_the_new_name(tmp_path):
    with pytest.raises(ConfigError, match=r"'data.csv' in command-line overrides is now data.csv.file"):
        load_config(None, "csv", overrides=["data.csv=labels.csv"])
    user = tmp_path / "mine.yaml"
    user.write_text("data:\n  csv: labels.csv\n")
    with pytest.raises(ConfigError, match=r"'data.csv' in config file .*mine.yaml is now data.csv.file"):
        load_config(None, "csv", files=[str(user)])
    with pytest.raises(ConfigError, match=r"'data.allow_absolute_paths' in .* is now data.csv.allow_absolute_paths"):
        load_config(None, "csv", overrides=["data.allow_absolute_paths=true"])
    with pytest.raises(ConfigError, match=r"'data.taxonomy' in command-line overrides is now data.inat2018.taxonomy"):
        load_config(None, "inat2018", overrides=["data.taxonomy=genus"])
    user.write_text("data:\n  csv:\n    file: labels.csv\n")  # the section itself is no old key
    assert load_config(None, "csv", files=[str(user)]).data.csv.file == "labels.csv"
    assert load_config(None, "csv", overrides=["data.csv.file=x.csv"]).data.csv.file == "x.csv"


def test_every_moved_key_names_a_real_new_key():
    fields = to_dict(schema()())
    for section in ("data", "peft", "head", "loss"):
        for old, new in moved_keys(section).items():
            # an old key may only share its name with the options section that took it over (data.csv)
            assert old not in fields[section] or (isinstance(fields[section][old], dict)
                                                  and f"{old}." in " ".join(new)), f"{section}.{old} is both old and current"
            for path in new:
                key, leaf = path.split(".")
                assert leaf in fields[section][key], f"{section}.{old} -> {section}.{path}"


# ------------------------------------------------------------------ every registered entry, end to end
#
# Each entry of each registry is built from its default options (the gathered schema's), trains
# one step in a tiny run, is saved, and the run folder reloads strictly (load_run). Adding an
# entry (one file plus its registration) puts it here with no edit. Losses, inits and sources run
# with bitfit: its biases start as the backbone's, so a changed bias proves an optimizer step.

import warnings  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import tailtune  # noqa: E402
from conftest import TINY_CLIP, fake_fashion_mnist, real_data  # noqa: E402
from tailtune.data.sources.base import SOURCES  # noqa: E402
from tailtune.losses import LOSSES  # noqa: E402
from tailtune.models.heads import HEAD_INITS  # noqa: E402
from tailtune.models.peft.base import PEFT_METHODS  # noqa: E402
from tailtune.runtime.rundir import CHECKPOINT  # noqa: E402

FAST = ["data.synthetic.num_classes=4", "data.synthetic.train_per_class=8", "data.synthetic.test_per_class=2", "train.batch_size=8",
        "eval.tte=none", "eval.gap_per_class=0", "eval.report=false", "train.cache_features=never",
        "train.precision=fp32"]
TINY_CNN = ["model.provider=timm", "model.name=test_resnet", "model.resolution=32", "head.init=class_mean"]
OFFLINE_SOURCES = ("synthetic", "fashion_mnist_lt", "cifar100_lt")  # the others need their files


def _run(tmp_path, overrides, name="run", files=False):
    base = [*TINY_CLIP, *FAST]
    base = real_data(base) if files else base  # a source reading files refuses the synthetic source's options
    cfg = load_config("lift", overrides=[*base, f"output_dir={tmp_path}", *overrides])
    run_dir = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny fixtures: "not the standard 500 images per class" and the like
        metrics = tailtune.fit(cfg, run_dir)
    exp = tailtune.load_run(run_dir)  # strict: every saved tensor goes into the rebuilt model
    return cfg, metrics, exp, load_file(run_dir / CHECKPOINT)


def _assert_trained_and_reloaded(cfg, exp, saved, backbone_too: bool):
    fresh = tailtune.build(cfg).model.state_dict()
    loaded = exp.model.trainable_state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    changed = [k for k, v in loaded.items() if not torch.equal(v, fresh[k])]
    assert "head.weight" in changed  # initialised and trained
    if backbone_too:
        assert any(not k.startswith("head.") for k in changed), "no PEFT tensor was trained and saved"


@pytest.mark.parametrize("method", PEFT_METHODS.names())
def test_every_peft_method_builds_trains_saves_and_reloads(tmp_path, method):
    cnn_only = "vit" not in PEFT_METHODS.get(method).kinds
    cfg, _, exp, saved = _run(tmp_path, [f"peft.method={method}", *(TINY_CNN if cnn_only else [])])
    assert exp.cfg.peft == cfg.peft  # its options, as gathered, survive the saved config.yaml
    _assert_trained_and_reloaded(cfg, exp, saved, backbone_too=method != "none")


@pytest.mark.parametrize("loss", LOSSES.names())
def test_every_loss_builds_trains_saves_and_reloads(tmp_path, loss):
    cfg, _, exp, saved = _run(tmp_path, [f"loss.name={loss}", "peft.method=bitfit"])
    assert exp.cfg.loss == cfg.loss
    _assert_trained_and_reloaded(cfg, exp, saved, backbone_too=True)


@pytest.mark.parametrize("init", HEAD_INITS.names())
def test_every_head_init_builds_trains_saves_and_reloads(tmp_path, init):
    cfg, metrics, exp, saved = _run(tmp_path, [f"head.init={init}", "peft.method=bitfit"])
    assert exp.cfg.head == cfg.head and metrics["head_init"]
    _assert_trained_and_reloaded(cfg, exp, saved, backbone_too=True)


@pytest.mark.filterwarnings("ignore:.*images per class, not the standard")
@pytest.mark.parametrize("source", [s for s in SOURCES.names() if s in OFFLINE_SOURCES])
def test_every_offline_source_builds_trains_saves_and_reloads(tmp_path, source):
    root = tmp_path / "data"
    if source == "fashion_mnist_lt":
        fake_fashion_mnist(root, per_class=6, test_per_class=1)
    elif source == "cifar100_lt":
        from datatrees import fake_cifar100

        fake_cifar100(root, per_class=3, test_per_class=1)
    extra = [] if source == "synthetic" else [f"data.root={root}", "data.imb_ratio=3"]
    cfg, _, exp, saved = _run(tmp_path, [f"data.name={source}", "peft.method=bitfit", *extra], files=bool(extra))
    assert exp.data.classnames == tailtune.build(cfg).data.classnames
    _assert_trained_and_reloaded(cfg, exp, saved, backbone_too=True)


def test_the_offline_sources_are_registered():
    assert set(OFFLINE_SOURCES) <= set(SOURCES.names())
