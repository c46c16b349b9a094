"""What the packaged recipes say about themselves: description, published number, command, sweep.

A recipe is a YAML config (validated like any other); its leading comment lines carry the
rest. The first is the one-line description shown by ``tailtune list recipes``; then, each
on its own line where it applies:

    # expected: 81.7                            the published overall accuracy (%) to reach
    # command: tailtune train -r NAME ...       how to run it (the README table shows it)
    # sweep: peft.r=1,2,4 loss=ce,la            the grid `tailtune sweep NAME` runs

A recipe without an ``expected`` line has no published number to compare with.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .config import _preset_path, list_presets
from .errors import ConfigError

_META = re.compile(r"#\s*(expected|command|sweep)\s*:\s*(.*?)\s*$")
# The README table's order: the published results, then the baselines, then the ablations.
TABLE_ORDER = (
    "lift_cifar100_ir100", "lift_cifar100_ir50", "lift_cifar100_ir10", "lift_imagenet_lt", "lift_places_lt",
    "lift_inat2018", "lift_vitl14_imagenet_lt", "lift_vitl14_places_lt", "zeroshot_clip", "classifier_only",
    "full_finetune", "ablation_peft", "ablation_loss", "ablation_init", "ablation_tte", "ablation_epochs",
    "ablation_bottleneck", "ablation_backbones", "lift", "demo",
)


@dataclass(frozen=True)
class RecipeInfo:
    """A recipe's header: description, published accuracy (or None), command and sweep axes."""

    name: str
    path: Path
    description: str
    expected: float | None = None
    command: str | None = None
    sweep: tuple[str, ...] = ()


def _header(path: Path) -> list[str]:
    """The comment lines before the first YAML line."""
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            lines.append(line)
        elif line.strip():
            break
    return lines


def recipe_info(name: str) -> RecipeInfo:
    """Parse the header of a packaged recipe (by name) or of a YAML file (by path)."""
    path = _preset_path("recipes", name)
    header = _header(path)
    description = header[0].lstrip("# ").strip() if header else ""
    meta: dict[str, str] = {}
    for line in header[1:]:
        m = _META.fullmatch(line)
        if m:
            meta[m.group(1)] = m.group(2)
    expected = None
    if "expected" in meta:
        try:
            expected = float(meta["expected"])
        except ValueError:
            raise ConfigError(f"{path}: '# expected: {meta['expected']}' is not a number; write the published "
                              "accuracy in percent, e.g. '# expected: 81.7'.") from None
    try:
        sweep = tuple(shlex.split(meta.get("sweep", "")))
    except ValueError as e:
        raise ConfigError(f"{path}: cannot read '# sweep: {meta['sweep']}' ({e}).") from None
    return RecipeInfo(Path(name).stem if path == Path(name) else name, path, description, expected,
                      meta.get("command"), sweep)


def all_recipes() -> list[RecipeInfo]:
    """Every packaged recipe, in the README table's order (others after, by name)."""
    names = list_presets("recipes")
    ordered = [n for n in TABLE_ORDER if n in names] + [n for n in names if n not in TABLE_ORDER]
    return [recipe_info(n) for n in ordered]


def recipe_table() -> str:
    """The README's Markdown table of recipes: name, what it is, command, published accuracy."""
    lines = ["| recipe | what | command | published |", "|---|---|---|---:|"]
    for r in all_recipes():
        command = f"`{r.command}`" if r.command else f"`tailtune train -r {r.name}`"
        expected = f"{r.expected:g}" if r.expected is not None else ""
        what = r.description.replace("|", "\\|")
        lines.append(f"| `{r.name}` | {what} | {command.replace('|', chr(92) + '|')} | {expected} |")
    return "\n".join(lines) + "\n"
