"""Options of an entry that is not chosen (config/options.py ``unchosen_options``): refused from a
user's file or override, accepted from a recipe, a data preset or a run's sections, never checked in a
saved config; every registry with options declares what chooses its entries."""

from __future__ import annotations

import dataclasses

import pytest

from tailtune.config import from_yaml_text, load_config, to_yaml
from tailtune.config.options import sections
from tailtune.errors import ConfigError
from tailtune.registry import option_registries


def test_a_users_option_of_a_loss_not_chosen_is_refused_naming_the_key_the_choice_and_the_way_out():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["loss.name=ce", "loss.ldam.drw_epoch=3"])
    assert str(e.value) == ("loss.ldam.drw_epoch=3 applies to loss.name=ldam only, not to loss.name=ce: the run "
                            "would ignore it (command-line overrides set it). Drop it, or use loss.name=ldam.")
    assert load_config(overrides=["loss.name=ldam", "loss.ldam.drw_epoch=3"]).loss.ldam.drw_epoch == 3


def test_a_users_config_file_is_named(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("peft:\n  method: lora\n  vpt:\n    length: 5\n")
    with pytest.raises(ConfigError, match=r"peft.vpt.length=5 applies to peft.method=vpt_shallow or vpt_deep only, "
                                          r"not to peft.method=lora and peft.text.method=none: .*config file "
                                          r".*mine.yaml set it"):
        load_config(files=[str(mine)])
    # a later override naming the method makes the file's option apply
    assert load_config(files=[str(mine)], overrides=["peft.method=vpt_deep"]).peft.vpt.length == 5


def test_an_option_set_to_its_default_is_accepted_as_on_the_data_side():
    """It changes nothing (the data side refuses only a value away from the default, too)."""
    assert load_config(overrides=["loss.name=ce", "loss.la.tau=1.0", "loss.ldam.drw_epoch=null"]).loss.name == "ce"


def test_a_recipes_option_of_a_choice_it_leaves_to_a_derived_recipe_or_an_override_is_accepted(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("loss:\n  name: la\n  la:\n    tau: 2.0\n  ldam:\n    drw_epoch: 3\n")
    derived = tmp_path / "derived.yaml"
    derived.write_text("base: base.yaml\nloss:\n  name: ce\n")
    assert load_config(str(derived)).loss.la.tau == 2.0  # the recipe's protocol for when la is chosen
    cfg = load_config(str(base), overrides=["loss.name=focal"])  # the ablation_loss sweep's way
    assert (cfg.loss.name, cfg.loss.ldam.drw_epoch) == ("focal", 3)
    # the same value given by the user is refused where the recipe's was not
    with pytest.raises(ConfigError, match=r"loss.la.tau=2.0 applies to loss.name=la only, not to loss.name=ce"):
        load_config(str(derived), overrides=["loss.la.tau=2.0"])


def test_a_run_layers_and_a_data_presets_options_are_accepted():
    layer = ("run folder /runs/a (train.from_run)", {"head": {"type": "cosine", "text": {"scale": 50.0}}})
    assert load_config("lift", run_layer=layer).head.text.scale == 50.0


def test_a_saved_config_with_options_of_entries_not_chosen_reads_back():
    """A run folder's config.yaml (eval, --resume, predict) is one layer, never checked: old runs still load."""
    cfg = load_config(overrides=["loss.name=ce", "loss.ldam.drw_epoch=3", "train.minimal.schedule=max",
                                 "head.init=text", "head.class_mean.max_per_class=5"], check_options=False)
    again = from_yaml_text(to_yaml(cfg), "runs/old/config.yaml")
    assert (again.loss.ldam.drw_epoch, again.train.minimal.schedule, again.head.class_mean.max_per_class) == (3, "max", 5)


def test_an_unknown_choice_is_named_by_its_own_error_first():
    cfg = load_config(overrides=["loss.name=ladm", "loss.ldam.drw_epoch=3"])  # no "applies to": start-up names it
    assert cfg.loss.name == "ladm"


def test_the_text_sides_methods_read_the_image_sides_options_but_vpts():
    cfg = load_config(overrides=["peft.method=lora", "peft.text.method=ssf", "peft.ssf.parts=qkv"])
    assert cfg.peft.ssf.parts == "qkv"
    with pytest.raises(ConfigError, match="peft.vpt.length=3 applies to peft.method=vpt_shallow or vpt_deep only"):
        load_config(overrides=["peft.method=lora", "peft.text.method=vpt_deep", "peft.vpt.length=3"])
    # fields of the text side's shared options that only some of its methods read (APPLIES)
    with pytest.raises(ConfigError, match=r"peft.text.context_length=8 applies to peft.text.method=coop only, not to "
                                          r"peft.text.method=lora"):
        load_config(overrides=["peft.text.method=lora", "peft.text.context_length=8"])
    assert load_config(overrides=["peft.text.method=coop+lora", "peft.text.context_length=8",
                                  "peft.text.r=8"]).peft.text.r == 8


def test_head_init_auto_takes_the_options_of_both_inits_it_may_be():
    assert load_config(overrides=["head.init=auto", "head.class_mean.max_per_class=100"]).head.init == "auto"
    with pytest.raises(ConfigError, match="head.k_shot.shots=4 applies to head.init=k_shot only, not to head.init=auto"):
        load_config(overrides=["head.init=auto", "head.k_shot.shots=4"])


def test_data_options_name_the_preset_of_their_source():
    with pytest.raises(ConfigError, match=r"data.inat2018.taxonomy='genus' applies to data.name=inat2018 only, not to "
                                          r"data.name=fashion_mnist_lt.*use data.name=inat2018 \(its data preset: "
                                          r"-d inat2018\)"):
        load_config(overrides=["data.inat2018.taxonomy=genus"])


# ------------------------------------------------------------------ every registry with options


def _registries():
    return [(section, r) for section in sections() for r in option_registries(section) if r.option_types()]


def test_every_registry_with_options_declares_what_chooses_its_entries():
    """A new registry with options (``Registry(..., section=...)``) must say what picks its entries
    (``chosen_by``), else the options of its unchosen entries would pass silently."""
    found = _registries()
    assert {r.kind for _, r in found} >= {"PEFT method", "loss", "classifier", "head initialisation", "augmentation",
                                          "dataset", "tracker", "text-side method", "batch mixing"}
    for _, registry in found:
        assert registry.every or registry.choices, f"{registry.kind}: Registry(..., chosen_by=...) is missing"


def _candidates(f: dataclasses.Field, default):
    """Values of an options field other than its default, one of which its own checks accept."""
    if "choices" in f.metadata:
        return [c for c in f.metadata["choices"] if c != default]
    if isinstance(default, bool):
        return [str(not default).lower()]
    if isinstance(default, (int, float)):
        return [default + 1, default / 2 or 0.5, 3]
    if default is None:
        hint = str(f.type)
        return ["3", "0.5", "true"] if ("int" in hint or "float" in hint or "bool" in hint) else ["x"]
    return ["x", "1", "first 1"]  # first 1: a block selection (peft.text.blocks)


def _refused(section, key, cls, selector, value, only=None) -> bool:
    """Whether some field of ``cls`` (or field ``only``) set by the user is refused as an option of an
    entry not chosen, with ``selector=value``."""
    for f in dataclasses.fields(cls):
        if only is not None and f.name != only:
            continue
        for cand in _candidates(f, getattr(cls(), f.name)):
            try:
                load_config(overrides=[f"{selector}={value}", f"{section}.{key}.{f.name}={cand}"])
            except ConfigError as e:
                if " only, not to " in str(e):
                    return True
    return False


@pytest.mark.parametrize("section,registry", _registries(), ids=lambda v: getattr(v, "kind", v))
def test_every_registrys_unchosen_options_are_refused_from_a_user(section, registry):
    if registry.every:
        return  # their options apply whatever the section holds (train.mixup.*)
    selector = registry.choices[0].key
    for key, cls in registry.option_types().items():
        readers = [n for n in registry.names() if registry.options_key(n) == key]
        others = [n for n in registry.names() if n not in readers]
        if others:
            assert _refused(section, key, cls, selector, others[0]), f"{section}.{key}.* with {selector}={others[0]}"
        for leaf, applies in getattr(cls, "APPLIES", {}).items():
            other = next(n for n in readers if n not in applies)
            assert _refused(section, key, cls, selector, other, only=leaf), f"{section}.{key}.{leaf} with {selector}={other}"


def test_section_shorthands_and_sections_given_a_value_on_the_command_line():
    """`loss=ce` is loss.name=ce in train as in sweep; a section set to a value, or a key set both
    whole and inside, is refused instead of one silently replacing the other."""
    from tailtune.config import load_config
    from tailtune.errors import ConfigError

    cfg = load_config("lift", overrides=["loss=ce", "peft=lora"])
    assert cfg.loss.name == "ce" and cfg.peft.method == "lora"
    with pytest.raises(ConfigError, match="'train' is a section of the config"):
        load_config("lift", overrides=["train=5"])
    with pytest.raises(ConfigError, match="sets peft.vpt as a whole"):
        load_config("lift", overrides=["peft.vpt=1", "peft.vpt.length=5"])
    with pytest.raises(ConfigError, match="loss.la.tau=2.0 applies to loss.name=la only"):
        load_config("lift", overrides=["loss=ce", "loss.la.tau=2"])
