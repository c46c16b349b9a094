"""One recipe per published setting: each builds on LIFT, validates, carries its number, command and grid."""

import re
import shlex
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import tailtune
from tailtune.cli import app as cli
from tailtune.config import from_yaml_text, list_presets, load_config, read_recipe, to_dict, to_yaml
from tailtune.config.recipes import TABLE_ORDER, all_recipes, recipe_info, recipe_table
from tailtune.errors import ConfigError
from tailtune.report.compare import config_differences
from tailtune.runs.sweep import plan

README = Path(__file__).resolve().parents[2] / "README.md"
# The paper's overall accuracy (Shi et al., ICML 2024), written here by hand.
PUBLISHED = {
    "lift_cifar100_ir100": 81.7, "lift_cifar100_ir50": 83.1, "lift_cifar100_ir10": 84.9,
    "lift_imagenet_lt": 78.3, "lift_places_lt": 52.2,
    "lift_vitl14_imagenet_lt": 82.9, "lift_vitl14_places_lt": 53.7,
}
# Recipe -> (data preset, overrides on the `lift` recipe) that must give the same config.
SAME_AS_LIFT = {
    "lift_cifar100_ir100": ("cifar100_ir100", []), "lift_cifar100_ir50": ("cifar100_ir50", []),
    "lift_cifar100_ir10": ("cifar100_ir10", []), "lift_imagenet_lt": ("imagenet_lt", []),
    "lift_places_lt": ("places_lt", []), "lift_inat2018": ("inat2018", ["train.epochs=20"]),
    "lift_vitl14_imagenet_lt": ("imagenet_lt", ["model.name=ViT-L-14"]),
    "lift_vitl14_places_lt": ("places_lt", ["model.name=ViT-L-14"]),
}
# LIFT's CLIP-RN50 rows (LIFT scripts/run_tab17to23_backbones.sh: ssf_attn, bias_tuning, both; no TTE pass;
# configs/model/clip_rn50.yaml: the ViT-B/16 settings otherwise).
for _data in ("imagenet_lt", "places_lt"):
    for _row, _method in (("ssf_attn", "ssf_pool"), ("bias_tuning", "bitfit"), ("bias_ssf_attn", "bitfit+ssf_pool")):
        SAME_AS_LIFT[f"lift_rn50_{_data}_{_row}"] = (_data, ["model.name=RN50", f"peft.method={_method}",
                                                              "eval.tte=none"])
RECIPES = list_presets("recipes")


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_and_validates(name):
    cfg = load_config(name)
    tailtune.validate(cfg)  # every registry name in it exists
    info = recipe_info(name)
    assert info.description and info.path.name == f"{name}.yaml"
    assert info.published == PUBLISHED.get(name)
    if info.published is not None:  # the number is written in the description too
        assert f"{info.published}%" in info.description and info.benchmark


def test_every_published_setting_has_a_recipe():
    published = {r.name: r.published for r in all_recipes() if r.published is not None}
    assert published == PUBLISHED
    assert set(TABLE_ORDER) == set(RECIPES)
    assert recipe_info("lift_inat2018").published is None


@pytest.mark.parametrize("name", sorted(SAME_AS_LIFT))
def test_benchmark_recipes_are_lift_on_their_data_preset(name):
    preset, extra = SAME_AS_LIFT[name]
    assert load_config(name) == load_config("lift", preset, overrides=extra)


# Recipe -> (data preset, overrides on the `lift_plus` recipe) that must give the same config. LIFT+ groups
# many/medium/few by the training set's own counts (LIFT-plus trainer.py build_data), so IR 50 / 10 drop
# the presets' IR-100 groups.
SAME_AS_LIFT_PLUS = {
    "lift_plus_cifar100_ir100": ("cifar100_ir100", []),
    "lift_plus_cifar100_ir50": ("cifar100_ir50", ["data.group_imb_ratio=null"]),
    "lift_plus_cifar100_ir10": ("cifar100_ir10", ["data.group_imb_ratio=null"]),
    "lift_plus_imagenet_lt": ("imagenet_lt", []), "lift_plus_places_lt": ("places_lt", []),
    "lift_plus_inat2018": ("inat2018", ["train.epochs=15"]),
}


@pytest.mark.parametrize("name", sorted(SAME_AS_LIFT_PLUS))
def test_lift_plus_recipes_are_lift_plus_on_their_data_preset(name):
    preset, extra = SAME_AS_LIFT_PLUS[name]
    assert load_config(name) == load_config("lift_plus", preset, overrides=extra)
    info = recipe_info(name)
    assert info.published is None and "published: see the paper (arXiv 2504.13282)" in info.description
    assert info.bases[-2:] == ("lift_plus", "lift") and info.benchmark


def test_lift_plus_recipe_has_lift_plus_defaults():
    """Written by hand from LIFT-plus (ea555ea): utils/config.py (num_epochs 5, batch_size 128, lr 0.02,
    weight_decay 5e-4, momentum 0.9, loss_type LA, mda True, mda_func convex, classifier_scale 25,
    classifier_init semantic), configs/method/lift+.yaml (CosineClassifier, v.adaptformer), trainer.py
    (CosineAnnealingLR(num_epochs) stepped per epoch, bicubic views, five crops at resolution + 24),
    scripts/run_main.sh (tte True after training), README (iNaturalist: num_epochs 15)."""
    expected = {"model.name": "ViT-B-16", "model.pretrained": "openai", "peft.method": "adaptformer", "peft.r": None,
                "head.type": "cosine", "head.scale": 25.0, "head.init": "text", "head.prompt": "a photo of a {}.",
                "loss.name": "la", "loss.la.tau": 1.0, "train.epochs": 5, "train.batch_size": 128, "train.lr": 0.02,
                "train.momentum": 0.9, "train.weight_decay": 0.0005, "train.scheduler": "cosine_epoch",
                "train.augment": "minimal", "train.minimal.schedule": "convex", "data.interpolation": "bicubic",
                "eval.tte": "fivecrop", "eval.expand": 24, "data.name": "imagenet_lt"}
    cfg = OmegaConf.create(to_dict(load_config("lift_plus_imagenet_lt")))
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected
    assert load_config("lift_plus_inat2018").train.epochs == 15
    assert load_config("lift_plus", overrides=["model.name=ViT-L-14"]).eval.expand == 24  # LIFT+: 24 for every backbone


def test_baseline_recipes():
    zs, clf, full = load_config("zeroshot_clip"), load_config("classifier_only"), load_config("full_finetune")
    assert (zs.model.name, zs.model.pretrained, zs.eval.tte) == ("ViT-B-16", "openai", "none")
    assert (clf.peft.method, clf.train.lr) == ("none", 0.02)
    assert (full.peft.method, full.train.lr, full.peft.lr) == ("full", 0.0005, None)


@pytest.mark.parametrize("info", [r for r in all_recipes() if r.command], ids=lambda r: r.name)
def test_recipe_commands_parse_and_name_their_recipe(info):
    first = shlex.split(info.command.split("&&")[0])
    assert first[0] == "tailtune"
    args = cli.build_parser().parse_args(first[1:])
    named = getattr(args, "recipe", None) or getattr(args, "base", None)
    if info.name != "demo":  # `tailtune train` alone runs the default recipe, demo
        assert named == info.name


SWEEPS = {
    "ablation_peft": ("peft.method", ["bitfit", "vpt_shallow", "vpt_deep", "adapter", "lora", "adaptformer", "masked"]),
    "ablation_loss": ("loss.name", ["ce", "focal", "ldam", "cb", "grw", "lade", "la"]),
    "ablation_init": ("head.init", ["random", "class_mean", "linear_probe", "text"]),
    "ablation_epochs": ("train.epochs", [5, 10, 20, 30]),
    "ablation_bottleneck": ("peft.r", [1, 2, 4, 8, 16, 32, 64, 128, 256]),
    "ablation_backbones": ("model.name", ["ViT-B-16", "ViT-L-14"]),
}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_ablation_recipes_expand_into_valid_points(name, tmp_path):
    key, values = SWEEPS[name]
    sweep = plan(name, out=tmp_path / name)
    section, field = key.split(".")
    assert [getattr(getattr(p.cfg, section), field) for p in sweep.points] == values
    base = to_dict(load_config("lift_imagenet_lt"))
    for p in sweep.points:  # only the swept key (and the run's name and place) differ from LIFT on ImageNet-LT
        assert set(config_differences([base, to_dict(p.cfg)])) <= {key}
    assert not (tmp_path / name).exists()  # planning writes nothing


def test_readme_table_is_current():
    text = README.read_text()
    m = re.search(r"<!-- recipes:start[^>]*-->\n(.*?)<!-- recipes:end -->", text, re.S)
    assert m, "README.md lacks the recipes table markers"
    assert m.group(1) == recipe_table(), "README's recipe table is stale: run `tailtune list recipes --markdown`"
    for name, number in PUBLISHED.items():
        assert re.search(rf"\| `{name}` \|.*\| {number} \|", text)


def test_list_recipes_shows_the_published_numbers(capsys):
    assert cli.main(["list", "recipes"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == set(RECIPES)
    for name, number in PUBLISHED.items():
        assert lines[name].split()[1] == f"{number:g}"
    assert lines["lift_inat2018"].split()[1] == "-"


# --- composition: `base:` chains, checked `recipe:` fields -----------------------------------------------------


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_recipes_build_on_lift_instead_of_copying_it():
    chains = {r.name: r.bases for r in all_recipes()}
    assert chains["ablation_peft"] == ("lift_imagenet_lt", "lift")
    assert chains["lift_cifar100_ir10"] == ("lift_cifar100_ir100", "lift")
    assert chains["lift_vitl14_places_lt"] == ("lift_places_lt", "lift")
    assert chains["lift"] == chains["demo"] == ()
    assert {name for name, bases in chains.items() if bases and bases[-1] == "lift"} == set(RECIPES) - {"lift", "demo"}
    assert [s.name for s in read_recipe("ablation_tte")] == ["lift", "lift_imagenet_lt", "ablation_tte"]


@pytest.mark.parametrize("name", [n for n in RECIPES if read_recipe(n)[-1].base])
def test_a_recipe_states_only_what_differs_from_its_base(name):
    *bases, own = read_recipe(name)
    inherited = OmegaConf.merge(*[b.layer for b in bases])
    for key, value in _leaves(OmegaConf.to_container(own.layer)).items():
        assert OmegaConf.select(inherited, key) != value, f"{name} repeats {key}={value!r} of its base"


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


# Written by hand from the recipes as they were before they composed (each a full copy of lift),
# with the reference's protocol keys that lift gained since (interpolation, evaluation precision;
# the five-crop expand now follows the backbone, 21 for ViT-L/14, so no recipe sets it).
@pytest.mark.parametrize("name, expected", [
    ("lift_vitl14_places_lt", {"data.name": "places_lt", "data.root": "data/places365", "data.imb_ratio": 1,
                               "model.name": "ViT-L-14", "model.pretrained": "openai", "peft.method": "adaptformer",
                               "head.init": "text", "loss.name": "la", "train.lr": 0.01, "train.epochs": 10,
                               "train.scheduler": "cosine_epoch", "eval.tte": "fivecrop", "eval.expand": None,
                               "data.interpolation": "bilinear", "eval.precision": "fp32"}),
    ("lift_cifar100_ir50", {"data.name": "cifar100_lt", "data.imb_ratio": 50, "data.group_imb_ratio": 100,
                            "model.name": "ViT-B-16", "eval.expand": None, "train.scheduler": "cosine_epoch"}),
    ("zeroshot_clip", {"data.name": "fashion_mnist_lt", "model.name": "ViT-B-16", "head.prompt": "a photo of a {}.",
                       "eval.tte": "none", "data.interpolation": "bilinear", "eval.precision": "fp32"}),
    ("ablation_epochs", {"data.name": "imagenet_lt", "train.epochs": 10, "peft.method": "adaptformer"}),
])
def test_resolved_recipes_keep_their_values(name, expected):
    cfg = to_dict(load_config(name))
    assert {key: OmegaConf.select(OmegaConf.create(cfg), key) for key in expected} == expected


def test_a_users_recipe_file_builds_on_a_packaged_one_and_saves_a_full_config(tmp_path):
    mine = _write(tmp_path / "mine.yaml", "base: lift_imagenet_lt\n"
                  "recipe:\n  description: mine\n  sweep: ['peft.r=4,8']\ntrain:\n  epochs: 3\n")
    cfg = load_config(mine)
    assert cfg == load_config("lift_imagenet_lt", overrides=["train.epochs=3"])
    saved = to_yaml(cfg)
    assert "base" not in saved and "description" not in saved and from_yaml_text(saved) == cfg
    info = recipe_info(mine)
    assert (info.name, info.description, info.bases, info.published) == ("mine", "mine", ("lift_imagenet_lt", "lift"), None)
    assert [p.cfg.peft.r for p in plan(mine, out=tmp_path / "s").points] == [4, 8]  # its own sweep field


def test_a_base_path_counts_from_the_file_naming_it(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "a.yaml", "base: lift\ntrain:\n  lr: 0.5\n")
    top = _write(tmp_path / "sub" / "b.yaml", "base: a.yaml\ntrain:\n  epochs: 2\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(top)
    assert (cfg.train.lr, cfg.train.epochs, cfg.peft.method) == (0.5, 2, "adaptformer")
    assert [s.name for s in read_recipe(top)] == ["lift", "a.yaml", top]


def test_a_cycle_of_bases_is_refused_naming_the_recipe(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    b = _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=rf"recipe {re.escape(b)}: its bases form a cycle .*-> a.yaml -> b.yaml\)"):
        load_config(b)
    me = _write(tmp_path / "me.yaml", "base: me.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        recipe_info(me)


def test_an_unknown_base_is_refused_with_close_matches(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "base: lfit\n")
    with pytest.raises(ConfigError, match=rf"recipe {re.escape(bad)}: unknown base 'lfit'\. Did you mean lift\b"):
        load_config(bad)
    with pytest.raises(ConfigError, match="base file .*nowhere.yaml does not exist"):
        load_config(_write(tmp_path / "far.yaml", "base: nowhere.yaml\n"))
    with pytest.raises(ConfigError, match="must name a recipe"):
        load_config(_write(tmp_path / "list.yaml", "base: [lift]\n"))


@pytest.mark.parametrize("meta, message", [
    ("published: '78.3'\n  benchmark: ImageNet-LT", r"published must be a number.*got '78.3'"),
    ("published: true\n  benchmark: ImageNet-LT", "published must be a number"),
    ("published: 178.3\n  benchmark: ImageNet-LT", "published must be a number"),
    ("published: 78.3", r"published \(78.3\) needs recipe.benchmark"),
    ("publshed: 78.3", r"publshed is not a recipe field\. Did you mean recipe.published\?"),
    ("description: 3", "description must be a non-empty text"),
    ("sweep: peft.r=4,8", "sweep must be a list"),
    ("sweep: ['peft.r=4']", "sweep entry 'peft.r=4' is not an axis"),
])
def test_recipe_fields_are_checked(tmp_path, meta, message):
    path = _write(tmp_path / "r.yaml", f"base: lift\nrecipe:\n  {meta}\n")
    with pytest.raises(ConfigError, match=rf"recipe {re.escape(path)}: recipe\.{message}"):
        load_config(path)  # a run refuses it too, not only `tailtune list`


def test_recipe_keys_belong_to_recipes_and_old_comments_are_refused(tmp_path):
    extra = _write(tmp_path / "extra.yaml", "base: lift\n")
    with pytest.raises(ConfigError, match=r"has 'base:', which only a recipe has; pass the file as the recipe \(-r"):
        load_config("lift", files=[extra])
    old = _write(tmp_path / "old.yaml", "# my grid\n# sweep: peft.r=4,8\nbase: lift\n")
    with pytest.raises(ConfigError, match=r"no longer read; write it as the YAML field recipe.sweep"):
        plan(old, out=tmp_path / "s")


def test_a_data_preset_replaces_the_recipes_dataset_and_keeps_its_protocol():
    # lift_cifar100_ir50 describes CIFAR-100-LT (imbalance 50, groups by the IR-100 counts);
    # none of that may reach ImageNet-LT, while the reference's resize filter must.
    cfg = load_config("lift_cifar100_ir50", "imagenet_lt")
    alone = load_config("lift", "imagenet_lt")
    assert cfg.data == alone.data
    assert cfg.data.name == "imagenet_lt" and cfg.data.imb_ratio == 1 and cfg.data.group_imb_ratio is None
    assert cfg.data.interpolation == "bilinear"
    assert load_config("lift_cifar100_ir50").data.group_imb_ratio == 100  # without a preset it stays
