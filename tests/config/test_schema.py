from pathlib import Path

import pytest

from tailtune.config import Config, from_yaml_text, list_presets, load_config, to_yaml
from tailtune.errors import ConfigError


def test_defaults_are_the_method():
    cfg = load_config("lift")
    assert cfg.model.name == "ViT-B-16" and cfg.model.pretrained == "openai"
    assert cfg.peft.method == "adaptformer" and cfg.head.init == "text" and cfg.head.scale == 25
    assert cfg.loss.name == "la" and cfg.train.lr == 0.01 and cfg.train.batch_size == 128
    assert cfg.train.weight_decay == 5e-4 and cfg.train.epochs == 10 and cfg.eval.tte == "fivecrop"


def test_data_presets_and_overrides():
    cfg = load_config("lift", "cifar100_ir50", overrides=["train.epochs=3", "data.root=/x"])
    assert cfg.data.name == "cifar100_lt" and cfg.data.imb_ratio == 50 and cfg.data.group_imb_ratio == 100
    assert cfg.train.epochs == 3 and cfg.data.root == "/x"


@pytest.mark.parametrize("name", list_presets("recipes"))
def test_every_recipe_validates(name):
    assert isinstance(load_config(name), Config)


def test_unknown_key_names_the_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*Did you mean train.epochs"):
        load_config(overrides=["train.epoch=3"])


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(overrides=["train.epochs=many"])


def test_bad_value_lists_choices():
    with pytest.raises(ConfigError, match="eval.tte='sevencrop'.*none, fivecrop"):
        load_config(overrides=["eval.tte=sevencrop"])


def test_micro_batch_must_divide_batch():
    with pytest.raises(ConfigError, match="not divisible.*micro_batch_size=48"):
        load_config(overrides=["train.batch_size=128", "train.micro_batch_size=48"])


def test_unknown_recipe_and_malformed_override():
    with pytest.raises(ConfigError, match="unknown recipe preset 'lfit'.*lift"):
        load_config("lfit")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["train.epochs"])


def test_yaml_roundtrip():
    cfg = load_config("lift", overrides=["peft.r=8"])
    assert from_yaml_text(to_yaml(cfg)) == cfg


def test_runs_save_their_files_and_folders_as_absolute_paths(tmp_path, monkeypatch):
    from tailtune.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "list.csv").write_text("path,label\n")
    (tmp_path / "w.pt").write_bytes(b"")
    cfg = load_config("lift", overrides=["data.name=csv", "data.root=photos", "data.store=store", "data.csv.file=list.csv",
                                         "model.pretrained=w.pt", "train.cache_dir=~/cache"])
    out = with_absolute_paths(cfg)
    assert out.data.root == str(tmp_path / "photos") and out.data.store == str(tmp_path / "store")
    assert out.data.csv.file == str(tmp_path / "photos" / "list.csv")  # found under data.root, as the csv source looks
    assert out.model.pretrained == str(tmp_path / "w.pt")
    assert out.train.cache_dir == str(Path("~/cache").expanduser())
    assert cfg.data.root == "photos"  # a copy
    assert with_absolute_paths(load_config("lift")).model.pretrained == "openai"  # a tag stays a tag


@pytest.mark.parametrize("key", ["eval.tte", "train.scheduler", "data.interpolation"])
def test_a_newly_registered_choice_is_accepted_without_touching_the_config(key):
    """A key whose values are a registry's names (eval.tte: data.transforms.TTE_MODES, train.scheduler:
    training.trainer.SCHEDULES, ...) takes an entry registered after import, and lists it in the docs."""
    from tailtune.config.reference import config_reference
    from tailtune.registry import filling

    registry = filling(key)
    assert registry.fills == key
    with pytest.raises(ConfigError, match=f"{key}='dummy' is not valid; choose one of"):
        load_config(overrides=[f"{key}=dummy"])
    registry.register("dummy", help="a test's entry")(object())
    try:
        cfg = load_config(overrides=[f"{key}=dummy"])
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == "dummy"
        assert "`dummy` — a test's entry" in config_reference()
    finally:
        registry.unregister("dummy")
    assert "dummy" not in registry
    with pytest.raises(ConfigError, match=f"{key}='dummy' is not valid"):
        load_config(overrides=[f"{key}=dummy"])
