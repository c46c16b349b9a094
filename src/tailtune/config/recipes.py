"""The packaged recipes as a catalogue: what each is, what it builds on, what it should reach.

A recipe is a YAML config that may build on another and carries its own description::

    base: lift                    # a packaged recipe, or a .yaml path (relative to this file)
    recipe:                       # about the recipe; never part of the run's config
      description: "LIFT on ImageNet-LT, CLIP ViT-B/16: published 78.3% overall accuracy"
      benchmark: ImageNet-LT      # the data set it is set up for, or null
      published: 78.3             # the paper's overall top-1 accuracy (%), or null
      command: tailtune train -r lift_imagenet_lt data.root=DIR   # default: tailtune train -r NAME
      sweep: ["peft.r=1,2,4"]     # the axes `tailtune sweep NAME` runs, as on its command line
    data:                         # then only the config keys that differ from the base
      name: imagenet_lt

Bases chain (``ablation_peft`` -> ``lift_imagenet_lt`` -> ``lift``); the config keys merge
farthest base first, and the ``recipe:`` section belongs to its own file only (a published
number is not inherited). Reading, chaining and checking the fields is
:func:`tailtune.config.read_recipe`'s; a run folder's ``config.yaml`` is the resolved config,
with neither key. This module lists them: ``tailtune list recipes`` and the README's table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tailtune.config.load import list_presets, read_recipe
from tailtune.errors import ConfigError

# The README table's order: the published results, then the baselines, then the ablations.
TABLE_ORDER = (
    "lift_cifar100_ir100", "lift_cifar100_ir50", "lift_cifar100_ir10", "lift_imagenet_lt", "lift_places_lt",
    "lift_inat2018", "lift_vitl14_imagenet_lt", "lift_vitl14_places_lt",
    "lift_plus_cifar100_ir100", "lift_plus_cifar100_ir50", "lift_plus_cifar100_ir10", "lift_plus_imagenet_lt",
    "lift_plus_places_lt", "lift_plus_inat2018",
    "lift_rn50_imagenet_lt_ssf_attn", "lift_rn50_imagenet_lt_bias_tuning", "lift_rn50_imagenet_lt_bias_ssf_attn",
    "lift_rn50_places_lt_ssf_attn", "lift_rn50_places_lt_bias_tuning", "lift_rn50_places_lt_bias_ssf_attn",
    "zeroshot_clip", "classifier_only", "crt", "lws",
    "full_finetune", "coop", "ablation_peft", "ablation_loss", "ablation_init", "ablation_tte", "ablation_epochs",
    "ablation_bottleneck", "ablation_backbones", "lift", "lift_plus", "demo",
)
# The header comments that carried these fields before they were YAML keys.
_OLD_HEADER = re.compile(r"#\s*(expected|command|sweep)\s*:")


@dataclass(frozen=True)
class RecipeInfo:
    """A recipe's own fields (its ``recipe:`` section) and the chain of recipes it builds on."""

    name: str
    path: Path
    description: str
    published: float | None = None
    benchmark: str | None = None
    command: str | None = None
    sweep: tuple[str, ...] = ()
    bases: tuple[str, ...] = ()  # what it builds on, nearest first


def recipe_info(name: str) -> RecipeInfo:
    """The fields of a packaged recipe (by name) or of a recipe YAML file (by path)."""
    *bases, own = read_recipe(name)
    meta = own.meta
    if not meta:
        _refuse_old_header(own.path)
    return RecipeInfo(own.path.stem if own.path == Path(name) else name, own.path, meta.get("description") or "",
                      meta.get("published"), meta.get("benchmark"), meta.get("command"),
                      tuple(meta.get("sweep") or ()), tuple(b.name for b in reversed(bases)))


def _refuse_old_header(path: Path) -> None:
    """A recipe file still written the old way (``# sweep: ...`` comments) would lose its axes unsaid."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        m = _OLD_HEADER.match(line)
        if m:
            field = "published" if m.group(1) == "expected" else m.group(1)
            raise ConfigError(f"{path}: the comment {line.strip()!r} is no longer read; write it as the YAML field "
                              f"recipe.{field} (e.g. recipe: {{{field}: ...}}), as the packaged recipes do.")


def all_recipes() -> list[RecipeInfo]:
    """Every packaged recipe, in the README table's order (others after, by name)."""
    names = list_presets("recipes")
    ordered = [n for n in TABLE_ORDER if n in names] + [n for n in names if n not in TABLE_ORDER]
    return [recipe_info(n) for n in ordered]


def recipe_listing() -> str:
    """``tailtune list recipes``: name, published accuracy (or -) and description, one a line."""
    return "".join(f"{r.name:24s} {'-' if r.published is None else f'{r.published:g}':>5s}  {r.description}\n"
                   for r in all_recipes())


def recipe_table() -> str:
    """The README's Markdown table of recipes: name, base, what it is, benchmark, command, published accuracy."""
    def cell(text: str | None) -> str:
        return (text or "").replace("|", "\\|")

    lines = ["| recipe | builds on | what | benchmark | command | published |", "|---|---|---|---|---|---:|"]
    for r in all_recipes():
        base = f"`{r.bases[0]}`" if r.bases else ""
        command = f"`{cell(r.command or f'tailtune train -r {r.name}')}`"
        published = f"{r.published:g}" if r.published is not None else ""
        lines.append(f"| `{r.name}` | {base} | {cell(r.description)} | {cell(r.benchmark)} | {command} | {published} |")
    return "\n".join(lines) + "\n"
