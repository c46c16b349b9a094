"""Options that live with their methods: gathered into the schema, old flat keys refused in a
user's layers and read under the new keys from a run folder's saved config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailtune.config import from_yaml_text, load_config, schema, to_dict
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
    assert to_dict(cfg) == to_dict(load_config("lift", overrides=NEW_KEYS))


def test_the_old_flat_keys_in_a_users_file_are_refused_with_the_new_name(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("peft:\n  vpt_length: 5\n")
    with pytest.raises(ConfigError, match=r"'peft.vpt_length' in config file .*mine.yaml is now peft.vpt.length"):
        load_config(files=[str(user)])
    with pytest.raises(ConfigError, match=r"'loss.beta' in command-line overrides is now loss.cb.beta or loss.ldam.beta"):
        load_config(overrides=["loss.beta=0.9"])


def test_every_moved_key_names_a_real_new_key():
    fields = to_dict(schema()())
    for section in ("data", "peft", "head", "loss"):
        for old, new in moved_keys(section).items():
            assert old not in fields[section], f"{section}.{old} is both old and current"
            for path in new:
                key, leaf = path.split(".")
                assert leaf in fields[section][key], f"{section}.{old} -> {section}.{path}"
