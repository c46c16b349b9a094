"""One recipe per published setting: each builds on LIFT, validates, carries its number, command and grid."""

import re
import shlex
from pathlib import Path

import pytest

from tailtune import api, cli
from tailtune.config import list_presets, load_config, to_dict
from tailtune.recipes import TABLE_ORDER, all_recipes, recipe_info, recipe_table
from tailtune.report import config_differences
from tailtune.sweep import plan

README = Path(__file__).resolve().parents[1] / "README.md"
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
    "lift_vitl14_imagenet_lt": ("imagenet_lt", ["model.name=ViT-L-14", "eval.expand=21"]),
    "lift_vitl14_places_lt": ("places_lt", ["model.name=ViT-L-14", "eval.expand=21"]),
}
RECIPES = list_presets("recipes")


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_and_validates(name):
    cfg = load_config(name)
    api.validate(cfg)  # every registry name in it exists
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

