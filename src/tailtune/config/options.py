"""The options of registered entries (a PEFT method, a loss, a head initialisation), gathered
into the schema as sub-sections: ``peft.vpt.length``, ``loss.focal.gamma``, ``head.k_shot.shots``.

An entry declares a small options dataclass in its own module and registers it with itself
(``@PEFT_METHODS.register("vpt_deep", options=VptOptions)``); the registry (a layer below this
one) records it under its config section. The config layer never imports the entries' modules:
:func:`schema` builds, when first asked after they registered (``import tailtune`` registers
them all), a subclass of each section with one field per options dataclass, and a subclass of
:class:`Config` holding those sections. OmegaConf merges onto it, so an unknown key of an options
section fails like any other ("unknown config key 'peft.vpt.lenght' ... Did you mean ...").

An options dataclass may declare

- ``KEY``: its sub-section's name when entries share one (both VPTs: ``vpt``; default: the entry's name);
- ``MOVED``: ``{old flat key of the section: its key here}``, the keys it took over (``vpt_length``
  -> ``length``): a user's file or override naming an old key is refused with the new name, and a
  run folder's saved config.yaml written with the old keys is read under the new ones. An old key
  may have the options section's own name (the csv source's file ``data.csv`` -> ``data.csv.file``):
  there a value that is not a mapping is the old key, a mapping the section;
- ``APPLIES``: ``{field: (entry, ...)}`` for an options class several entries share whose field
  only some of them read (``peft.text.context_length``: coop only);
- ``check_section(self, section)``: checks that need the section's other values.

Options of an entry not chosen (``peft.adaptformer.scale=0.5`` with ``peft.method=lora``) would do
nothing: a user's file or override that sets one away from its default is refused when the config
is composed (:func:`unchosen_options`; the registry's ``chosen_by`` says what picks its entries).
A recipe's, data preset's or earlier run's value passes: it is that layer's protocol for when the
entry is chosen. A saved config (eval, --resume) is read without layers, so never refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tailtune.config.schema import Config
from tailtune.errors import ConfigError
from tailtune.registry import Registry, option_registries

_BUILT: dict[tuple, type] = {}  # registered options -> the Config subclass gathering them
_BY_NAME: dict[str, type] = {}  # class name -> class of the latest schema (pickle finds them here)


def sections() -> dict[str, type]:
    """Section name -> its (core) dataclass, as :class:`Config` declares them."""
    return {f.name: f.default_factory for f in dataclasses.fields(Config)
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory)}


def option_types(section: str) -> dict[str, type]:
    """Options key -> options dataclass of every registered entry of config section ``section``."""
    out: dict[str, type] = {}
    core = {f.name for f in dataclasses.fields(sections()[section])}
    for registry in option_registries(section):
        for key, cls in registry.option_types().items():
            if key in core or (key in out and out[key] is not cls):
                raise ValueError(f"{registry.kind} options {cls.__name__} take the key {section}.{key}, "
                                 "which another key or entry of that section already has; set a distinct KEY.")
            out[key] = cls
    return out


def moved_keys(section: str) -> dict[str, list[str]]:
    """Old flat key of ``section`` -> the keys (``key.option``) that took it over."""
    out: dict[str, list[str]] = {}
    for key, cls in option_types(section).items():
        for old, new in getattr(cls, "MOVED", {}).items():
            out.setdefault(old, []).append(f"{key}.{new}")
    return out


def schema() -> type[Config]:
    """:class:`Config` with every registered entry's options as sub-sections of its section."""
    gathered = {name: option_types(name) for name in sections()}
    signature = tuple((s, k, c) for s, opts in gathered.items() for k, c in opts.items())
    if signature not in _BUILT:
        parts = [(name, cls := _section_class(base, gathered[name]), dataclasses.field(default_factory=cls))
                 for name, base in sections().items() if gathered[name]]
        _BUILT[signature] = _subclass(Config, parts) if parts else Config
    built = _BUILT[signature]
    _BY_NAME.update({f.type.__qualname__: f.type for f in dataclasses.fields(built)
                     if isinstance(f.type, type) and f.type.__module__ == __name__})
    _BY_NAME[built.__qualname__] = built
    return built


def section(name: str, /, **values: Any) -> Any:
    """A section of the gathered schema built from ``values``, its options included, e.g.
    ``section("peft", method="masked", masked=MaskedOptions(ratio=0.5))``."""
    cls = next(f.default_factory for f in dataclasses.fields(schema()) if f.name == name)
    return cls(**values)  # type: ignore[operator]


def _section_class(base: type, options: dict[str, type]) -> type:
    fields = [(key, cls, dataclasses.field(default_factory=cls, metadata={"help": _summary(cls)}))
              for key, cls in options.items()]

    def __post_init__(self) -> None:
        if hasattr(base, "__post_init__"):
            base.__post_init__(self)
        for key in options:
            check = getattr(getattr(self, key), "check_section", None)
            if check is not None:
                check(self)

    return _subclass(base, fields, __post_init__=__post_init__)


def _subclass(base: type, fields: list, **namespace: Any) -> type:
    cls = dataclasses.make_dataclass(base.__name__, fields, bases=(base,),
                                     namespace={"__doc__": base.__doc__, **namespace})
    cls.__module__ = __name__
    cls.__qualname__ = "Gathered" + base.__name__  # where pickle finds it (module __getattr__ below)
    return cls


def _summary(cls: type) -> str:
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def options_of(section: Any, key: str, cls: type) -> Any:
    """The ``key`` options of a section object, or ``cls``'s defaults when the section has none
    (a section built directly, e.g. ``PeftConfig(method="vpt_deep")``, holds only the core keys)."""
    value = getattr(section, key, None)
    return value if value is not None else cls()


def _old_keys(section: str, node: Any) -> list[str]:
    """The old flat keys of ``section`` that ``node`` (its mapping in a layer) sets. An old key named
    like an options section (``data.csv``) counts only when its value is not a mapping."""
    options = option_types(section)
    return [old for old in moved_keys(section)
            if old in node and not (old in options and hasattr(node[old], "keys"))]


def refuse_moved_keys(layer: Any, where: str) -> None:
    """ConfigError if a layer (a mapping) sets a flat key that moved into an options section."""
    if not hasattr(layer, "get"):
        return
    for section in sections():
        node = layer.get(section)
        if not hasattr(node, "keys"):
            continue
        for old, new in moved_keys(section).items():
            if old in _old_keys(section, node):
                names = " or ".join(f"{section}.{n}" for n in new)
                raise ConfigError(f"config key '{section}.{old}' in {where} is now {names} (a registered entry's "
                                  f"options live under its own key); rename it, e.g. {section}.{new[0]}=...")


def migrate_saved(data: dict) -> dict:
    """A saved config (a plain dict) with the flat keys of older versions moved to their options
    sections, so run folders written before the move still load (eval, --resume, predict)."""
    for section in sections():
        node = data.get(section)
        if not isinstance(node, dict):
            continue
        moved = moved_keys(section)
        values = {old: node.pop(old) for old in _old_keys(section, node)}  # all first: data.csv frees its name
        for old, value in values.items():
            for path in moved[old]:
                key, leaf = path.split(".")
                node.setdefault(key, {}).setdefault(leaf, value)
    return data


def unchosen_options(cfg: Any, layers: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """``(key, message)`` for each option the ``layers`` (a user's: files, overrides) set that the
    composed config ``cfg`` does not use: an option of an entry no choice picks (or a field of a
    shared options class that none of the chosen entries reads, ``APPLIES``), whose value in
    ``cfg`` is not its default. Setting an option to its default is allowed (it changes nothing),
    as data.* keys of a source that does not read them (data/sources/base.py)."""
    out: dict[str, str] = {}
    for where, layer in reversed(layers):  # the last layer setting a key gave its value: name that one
        if not hasattr(layer, "get"):
            continue
        for section in sections():
            node = layer.get(section)
            if not hasattr(node, "keys"):
                continue
            for registry in option_registries(section):
                for path, message in _unchosen_in(registry, section, getattr(cfg, section), node, where):
                    out.setdefault(path, message)
    return list(out.items())


def _unchosen_in(registry: Registry, section: str, values: Any, node: Any, where: str):
    chosen = registry.chosen(values)
    if chosen is None or not chosen <= set(registry.names()):
        return  # every entry's options apply, or an unknown name: its own error comes at start-up
    for key, cls in registry.option_types().items():
        sub = node.get(key) if key in node else None
        if not hasattr(sub, "keys"):
            continue
        readers = [n for n in registry.in_order() if registry.options_key(n) == key]
        used = [n for n in readers if n in chosen]
        default, options = cls(), getattr(values, key, None)
        for leaf in sub.keys():
            value = getattr(options, str(leaf), None)
            if value == getattr(default, str(leaf), None):
                continue
            applies = getattr(cls, "APPLIES", {}).get(leaf)
            if used and (applies is None or set(applies) & chosen):
                continue
            names = list(applies) if used and applies is not None else readers
            yield f"{section}.{key}.{leaf}", _message(registry, values, f"{section}.{key}.{leaf}", value, where, names)


def _message(registry: Registry, values: Any, path: str, value: Any, where: str, names: list[str]) -> str:
    first = registry.choices[0]
    now = " and ".join(f"{c.key}={_value_at(values, c.key)}" for c in registry.choices)
    hint = first.hint(names[0]) if first.hint is not None else ""
    return (f"{path}={value!r} applies to {first.key}={' or '.join(names)} only, not to {now}: the run would "
            f"ignore it ({where} set it). Drop it, or use {first.key}={names[0]}{hint}.")


def _value_at(section: Any, key: str) -> Any:
    for part in key.split(".")[1:]:
        section = getattr(section, part, None)
    return section


def refuse_unchosen_options(cfg: Any, layers: list[tuple[str, Any]]) -> None:
    """ConfigError naming the first option :func:`unchosen_options` finds in the user's ``layers``."""
    found = unchosen_options(cfg, layers)
    if found:
        raise ConfigError(found[0][1])


def __getattr__(name: str) -> type:  # the gathered classes, by name (for pickle)
    if not _BY_NAME:
        schema()
    try:
        return _BY_NAME[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
