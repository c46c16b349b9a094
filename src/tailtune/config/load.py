"""Composing a run's config: recipes (and the recipes they build on), data presets, YAML files
and ``key=value`` overrides merged onto the schema by OmegaConf, with error texts that name
the key, the layer at fault and what is allowed; the saved form of a config (YAML).

Order of the layers: schema defaults <- recipe chain (farthest base first) <- data preset <-
user YAML files <- overrides. A data preset replaces the recipe's dataset keys (its protocol
keys, DATA_PROTOCOL_KEYS, stay).
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tailtune.config.options import (
    migrate_saved,
    refuse_moved_keys,
    refuse_unchosen_options,
    schema,
    unchosen_options,
)
from tailtune.config.schema import Config
from tailtune.errors import ConfigError


def _preset_path(kind: str, name: str) -> Path:
    """Path of a packaged preset (`recipes/NAME.yaml` or `data/NAME.yaml`), or NAME itself if a file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    root = resources.files("tailtune") / "config" / "presets" / kind
    candidate = Path(str(root)) / f"{name}.yaml"
    if not candidate.exists():
        known = list_presets(kind)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown {kind[:-1] if kind.endswith('s') else kind} preset {name!r}.{hint} "
                          f"Known: {', '.join(known)} (or give a path to a .yaml file).")
    return candidate


def list_presets(kind: str) -> list[str]:
    """Names of the packaged presets of a kind ('recipes' or 'data')."""
    root = Path(str(resources.files("tailtune") / "config" / "presets" / kind))
    return sorted(p.stem for p in root.glob("*.yaml"))


def preset_comment(kind: str, name: str) -> str:
    """The first comment line of a preset file (its one-line description)."""
    for line in _preset_path(kind, name).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def load_config(
    recipe: str | None = None,
    data: str | None = None,
    files: list[str] | tuple[str, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
    run_layer: tuple[str, Any] | None = None,
    check_options: bool = True,
) -> Config:
    """Compose and validate a config.

    Args:
        recipe: packaged recipe name (``tailtune list recipes``) or a YAML path; the recipes it
            builds on (``base:``) come first, each as its own layer.
        data: packaged data preset name (e.g. ``cifar100_ir100``) or a YAML path.
        files: further YAML files, merged in order.
        overrides: ``key=value`` strings (OmegaConf dotlist syntax), e.g. ``train.epochs=5``.
        run_layer: ``(where, sections)`` merged after the recipe and data preset, before the files
            and overrides: a finished run's own sections (``train.from_run``: runs/decoupled.py).
        check_options: refuse options the files or overrides set for an entry that is not chosen
            (``peft.adaptformer.scale`` with ``peft.method=lora``: config/options.py); False only to
            find which overrides apply (a sweep passes each point only the ones that do: runs/sweep.py).
    """
    layers: list[tuple[str, Any]] = []
    if recipe:
        chain = read_recipe(recipe)
        for source in chain:
            where = f"recipe {source.name}" + (f" (base of {recipe})" if source is not chain[-1] else "")
            layers.append((where, source.layer))
    if data:
        # The preset names another dataset: the recipe's description of its own dataset (name,
        # root, imbalance, groups, ...) must not leak into it; its protocol keys stay.
        layers = [(where, _without_dataset(layer)) for where, layer in layers]
        layers.append((f"data preset {data}", {"data": _load_yaml(_preset_path("data", data))}))
    if run_layer is not None:
        layers.append(run_layer)
    user_from = len(layers)  # the user's own layers from here: files and overrides
    for f in files:
        path = Path(f)
        if not path.exists():
            raise ConfigError(f"config file {f} does not exist.")
        layer = _load_yaml(path)
        own = [k for k in (RECIPE_BASE, RECIPE_META) if isinstance(layer, DictConfig) and k in layer]
        if own:
            raise ConfigError(f"config file {f} has '{own[0]}:', which only a recipe has; pass the file as the "
                              f"recipe (-r {f}), or drop '{own[0]}:'.")
        layers.append((f"config file {f}", layer))
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. train.epochs=5).")
    if overrides:
        layers.append(("command-line overrides", _dotlist(list(overrides))))
    return merge_layers(layers, user_from=user_from if check_options else None)


def unchosen_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The ``key=value`` overrides among ``overrides`` that set an option of an entry ``cfg`` does
    not choose, away from its default (each would be refused: config/options.py), with the reason."""
    out = {}
    for o in overrides:
        found = unchosen_options(cfg, [("command-line overrides", _dotlist([o]))]) if "=" in o else []
        if found:
            out[o] = found[0][1]
    return out


# Data keys of the run's protocol rather than of the dataset: a data preset keeps a recipe's.
DATA_PROTOCOL_KEYS = ("interpolation", "num_workers", "verify_images", "skip_corrupt")


def _without_dataset(layer: Any) -> Any:
    """A recipe layer without its data keys that describe the dataset (DATA_PROTOCOL_KEYS stay)."""
    if not isinstance(layer, DictConfig) or not isinstance(layer.get("data"), DictConfig):
        return layer
    layer = copy.deepcopy(layer)
    for key in [k for k in layer.data if k not in DATA_PROTOCOL_KEYS]:
        del layer.data[key]
    return layer


# A recipe file holds config keys plus two of its own, removed before the schema sees it:
RECIPE_BASE = "base"  # the recipe it builds on: a packaged name, or a .yaml path (relative to the file)


RECIPE_META = "recipe"  # what the recipe is (RECIPE_FIELDS); describes, never configures; not inherited


RECIPE_FIELDS = {
    "description": "one line shown by `tailtune list recipes` and the README table",
    "benchmark": "the data set it is set up for (e.g. ImageNet-LT), or null",
    "published": "the paper's overall top-1 accuracy (%) on the benchmark, or null",
    "command": "how to run it (default: tailtune train -r NAME)",
    "sweep": "the axes `tailtune sweep NAME` runs: a list of key=v1,v2,... as on the command line",
}


@dataclass(frozen=True)
class RecipeSource:
    """One recipe file as read: its config keys (``layer``) apart from its base and metadata."""

    name: str  # the packaged name, or the path as given
    path: Path
    base: Optional[str]
    layer: Any  # DictConfig of the config keys it sets
    meta: dict  # its checked ``recipe:`` section (RECIPE_FIELDS present in the file)


def read_recipe(name: str) -> list[RecipeSource]:
    """A recipe and the recipes it builds on, the farthest base first (so it merges last).

    Raises ConfigError for an unknown base (with close matches), a base that names itself
    through a chain, or a bad ``recipe:`` section.
    """
    chain = [_read_recipe_file(name, _preset_path("recipes", name))]
    while chain[-1].base is not None:
        child = chain[-1]
        source = _read_recipe_file(*_base_of(child))
        if source.path.resolve() in [s.path.resolve() for s in chain]:
            names = " -> ".join([s.name for s in chain] + [source.name])
            raise ConfigError(f"recipe {name}: its bases form a cycle ({names}); remove one of these 'base:' keys.")
        chain.append(source)
    return chain[::-1]


def _base_of(child: RecipeSource) -> tuple[str, Path]:
    """(name, path) of the recipe ``child`` builds on."""
    base = child.base
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"recipe {child.name}: 'base: {base}' must name a recipe (`tailtune list recipes`) "
                          "or a .yaml file.")
    if Path(base).suffix in (".yaml", ".yml"):
        path = Path(base).expanduser()
        path = path if path.is_absolute() else child.path.parent / path
        if not path.is_file():
            raise ConfigError(f"recipe {child.name}: its base file {path} does not exist (a relative base path "
                              "counts from the folder of the file naming it).")
        return base, path
    known = list_presets("recipes")
    if base not in known:
        close = difflib.get_close_matches(base, known, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"recipe {child.name}: unknown base {base!r}.{hint} Known: {', '.join(known)} "
                          "(or a path to a .yaml file).")
    return base, _preset_path("recipes", base)


def _read_recipe_file(name: str, path: Path) -> RecipeSource:
    layer = _load_yaml(path)
    layer = OmegaConf.create() if layer == {} else layer  # an empty file sets nothing
    if not isinstance(layer, DictConfig):
        raise ConfigError(f"recipe {name} ({path}) is not a mapping of config keys.")
    base = layer.pop(RECIPE_BASE, None)
    meta = layer.pop(RECIPE_META, None)
    if meta is not None and not isinstance(meta, DictConfig):
        raise ConfigError(f"recipe {name}: 'recipe:' must be a mapping of {', '.join(RECIPE_FIELDS)}.")
    meta = _check_recipe_meta(name, OmegaConf.to_container(meta) if meta is not None else {})
    return RecipeSource(name, path, base, layer, meta)


def _check_recipe_meta(name: str, meta: dict) -> dict:
    """The ``recipe:`` section of recipe ``name``, with every field checked."""
    where = f"recipe {name}: recipe."
    unknown = [k for k in meta if k not in RECIPE_FIELDS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(RECIPE_FIELDS), n=1, cutoff=0.5)
        hint = f" Did you mean recipe.{close[0]}?" if close else ""
        raise ConfigError(f"{where}{unknown[0]} is not a recipe field.{hint} Fields: "
                          + "; ".join(f"{k} ({v})" for k, v in RECIPE_FIELDS.items()) + ".")
    for key in ("description", "benchmark", "command"):
        if meta.get(key) is not None and not (isinstance(meta[key], str) and meta[key].strip()):
            raise ConfigError(f"{where}{key} must be a non-empty text ({RECIPE_FIELDS[key]}); got {meta[key]!r}.")
    published = meta.get("published")
    if published is not None:
        if isinstance(published, bool) or not isinstance(published, (int, float)) or not 0 < published <= 100:
            raise ConfigError(f"{where}published must be a number of percent in (0, 100], e.g. 78.3, or null; "
                              f"got {published!r}.")
        if not meta.get("benchmark"):
            raise ConfigError(f"{where}published ({published}) needs recipe.benchmark: the data set it is on.")
    sweep = meta.get("sweep")
    if sweep is not None:
        if not isinstance(sweep, list) or not all(isinstance(a, str) for a in sweep):
            raise ConfigError(f"{where}sweep must be a list of key=v1,v2,... texts, e.g. [\"peft.r=4,8,16\"]; "
                              f"got {sweep!r}.")
        for arg in sweep:
            key, sep, values = arg.partition("=")
            if not (key.strip() and sep and "," in values):
                raise ConfigError(f"{where}sweep entry {arg!r} is not an axis key=v1,v2,... (two values or more); "
                                  "a single value belongs in the recipe's config keys.")
    return meta


# Short forms on the command line, in `train` as in `sweep`: `loss=ce` is `loss.name=ce`.
SHORTHANDS = {"loss": "loss.name", "peft": "peft.method"}


def expand_shorthand(override: str) -> str:
    """``loss=ce`` as ``loss.name=ce`` (SHORTHANDS); any other override as it is."""
    key, sep, value = override.partition("=")
    return f"{SHORTHANDS[key.strip()]}={value}" if sep and key.strip() in SHORTHANDS else override


def _check_override_keys(overrides: list[str]) -> None:
    """Refuse what OmegaConf's dotlist would turn silently into something else: a section given
    a value (``train=5``), and a key set both whole and inside (``peft.vpt=1 peft.vpt.length=5``:
    the later one replaces the earlier without a word)."""
    keys = [o.partition("=")[0].strip() for o in overrides]
    sections = [f.name for f in fields(schema()) if is_dataclass(f.default_factory)]
    for o, key in zip(overrides, keys):
        if key in sections:
            example = {"data": "-d NAME (a data preset) or data.root=DIR"}.get(key, f"{key}.{_section_fields(key)[0]}=...")
            raise ConfigError(f"override {o!r}: {key!r} is a section of the config, not a value; set one of its "
                              f"keys (e.g. {example}; docs/CONFIG.md or `tailtune config-reference` lists them).")
        inner = next((other for other, k in zip(overrides, keys) if k.startswith(key + ".")), None)
        if inner is not None:
            raise ConfigError(f"overrides {o!r} and {inner!r}: the first sets {key} as a whole, the second a key "
                              f"inside it, and one would silently replace the other; give only the inner keys.")


def _dotlist(overrides: list[str]) -> Any:
    overrides = [expand_shorthand(o) for o in overrides]
    _check_override_keys(overrides)
    try:
        return OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {overrides}: {e}") from None


def _load_yaml(path: Path) -> Any:
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and OSError carry the position of the problem
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    return loaded if loaded is not None else {}


def merge_layers(layers: list[tuple[str, Any]], user_from: int | None = None) -> Config:
    """Merge config layers onto the schema, naming the layer at fault on error.

    ``user_from``: the index of the first of the user's own layers (files, overrides; the layers
    before it are recipes, a data preset, a run's sections). Those may not set an option of an
    entry that is not chosen (config/options.py). None (a saved config, read as one layer): no
    such check, so the config of an older run reads back as it was written.
    """
    cfg = OmegaConf.structured(schema())
    for where, layer in layers:
        refuse_moved_keys(layer, where)
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as e:
            raise ConfigError(_explain(e, where)) from None
    try:
        out = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_explain(e, "config")) from None
    if user_from is not None:
        refuse_unchosen_options(out, layers[user_from:])
    return out


def _explain(e: OmegaConfBaseException, where: str) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0]
    if "not in struct" in msg or "Key '" in msg and "not in" in msg:
        section, _, leaf = key.rpartition(".")
        node = _section_fields(section)
        close = difflib.get_close_matches(leaf, node, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join((section + '.' if section else '') + c for c in close)}?" if close else ""
        return f"unknown config key {key!r} in {where}.{hint} Valid keys{' of ' + section if section else ''}: {', '.join(node)}."
    return f"bad value for {key or 'config'} in {where}: {msg}"


def _section_fields(section: str) -> list[str]:
    cls: Any = schema()
    for part in [p for p in section.split(".") if p]:
        match = [f for f in fields(cls) if f.name == part]
        if not match:
            return []
        cls = match[0].default_factory  # type: ignore[assignment]
    return [f.name for f in fields(cls)]


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (saved in every run folder)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def from_yaml_text(text: str, where: str = "saved config") -> Config:
    """Rebuild a config from YAML text written by :func:`to_yaml`."""
    try:
        layer = OmegaConf.create(text)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse {where}: {e}") from None
    if isinstance(layer, DictConfig):  # written before options moved to their methods: read the old keys
        layer = OmegaConf.create(migrate_saved(OmegaConf.to_container(layer)))
    return merge_layers([(where, layer)])
