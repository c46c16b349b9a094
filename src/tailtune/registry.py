"""Name -> object registries (datasets, backbones, PEFT methods, losses, heads, ...).

Every pluggable part of tailtune registers under a lowercase name, so it is reachable
from a config file, listed by ``tailtune list`` and parametrised over in the tests.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tailtune.errors import ConfigError

T = TypeVar("T")


# config section -> the registries whose entries' options are sub-sections of it (config/options.py
# gathers them into the schema; registering here needs no import of the config layer).
_SECTIONS: dict[str, weakref.WeakSet] = {}


def option_registries(section: str) -> list[Registry]:
    """The registries whose entries' options live under config section ``section``, by kind."""
    return sorted(_SECTIONS.get(section, ()), key=lambda r: r.kind)


# config key -> the registry whose names are its allowed values (config/schema.py checks the key
# against it when a section is made, config/reference.py lists them; no copy of the names is kept).
_FILLS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def filling(key: str) -> Registry:
    """The registry whose names are the allowed values of config key ``key`` (e.g. ``eval.tte``)."""
    try:
        return _FILLS[key]
    except KeyError:
        raise LookupError(f"no registry fills config key {key!r}: the module that declares it is not imported "
                          "(`import tailtune` imports them all)") from None


@dataclass(frozen=True)
class Choice:
    """How a config section chooses entries of a registry with options: config key ``key`` names
    them (``peft.method``); ``names(section)`` gives the names the section chooses (default: the
    key's value, one name). config/options.py refuses a user's value for the options of an entry
    no choice names (see :func:`tailtune.config.options.unchosen_options`)."""

    key: str
    names: Callable[[Any], Any] | None = None
    hint: Callable[[str], str] | None = None  # name -> more on how to choose it (" (its data preset: -d csv)")

    def chosen(self, section: Any) -> set[str]:
        if self.names is not None:
            return set(self.names(section))
        return {str(getattr(section, self.key.rpartition(".")[2]))}


# chosen_by of a registry whose entries' options apply whatever the section holds (train.mixup.*:
# on or off by its own values): no entry of it is ever "not chosen".
EVERY = "every"


class Registry(Generic[T]):
    """A validated mapping of lowercase names to objects, with helpful lookup errors.

    With ``section`` (a config section such as ``peft``), an entry may register a small
    dataclass of its own options (``register(name, options=Options)``): the config schema
    gathers them as ``<section>.<key>.*`` (key: the options class's ``KEY``, else the entry's
    name), so an entry's options live in the entry's own module.

    With ``fills`` (a config key such as ``eval.tte``), the registry's names are that key's
    allowed values: the schema checks the key against the names registered at that time, and
    the configuration reference lists them, so a new entry is one registration.

    ``chosen_by`` (with ``section``): what picks the entries whose options apply, a config key
    (``"loss.name"``), a :class:`Choice`, or :data:`EVERY` (their options always apply); more
    choices may add names later (:meth:`add_choice`: the text side's methods read the image
    side's options). A user's value for the options of an entry no choice picks is refused
    when the config is composed (config/options.py), so no option is set in vain.
    """

    def __init__(self, kind: str, section: str | None = None, fills: str | None = None,
                 chosen_by: str | Choice | None = None):
        self.kind = kind
        self.section = section
        self.fills = fills
        if chosen_by is not None and section is None:
            raise ValueError(f"{kind}: chosen_by needs a section (the entries' options are under it)")
        self.every = chosen_by == EVERY
        self.choices: list[Choice] = ([] if chosen_by is None or self.every else
                                      [chosen_by if isinstance(chosen_by, Choice) else Choice(chosen_by)])
        self._items: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._options: dict[str, Any] = {}
        if section is not None:
            _SECTIONS.setdefault(section, weakref.WeakSet()).add(self)
        if fills is not None:
            if _FILLS.get(fills) is not None:
                raise ValueError(f"config key {fills!r} is already filled by the {_FILLS[fills].kind} registry")
            _FILLS[fills] = self

    def register(self, name: str, help: str | None = None, options: Any = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; a duplicate name is rejected.

        ``options``: the entry's options dataclass (registries with a ``section`` only).
        """
        if name != name.lower() or not name:
            raise ValueError(f"{self.kind} names must be lowercase and non-empty, got {name!r}")
        if options is not None and self.section is None:
            raise ValueError(f"{self.kind} entries have no options section; {name!r} cannot register options")

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            if options is not None:
                self._options[name] = options
            doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return deco

    def add_choice(self, choice: Choice) -> None:
        """One more config key that picks entries of this registry (their options then apply)."""
        if self.every or not self.choices:
            raise ValueError(f"{self.kind}: add_choice needs a first choice (chosen_by=KEY)")
        self.choices.append(choice)

    def chosen(self, section: Any) -> set[str] | None:
        """The names ``section`` (this registry's config section) chooses; None when every entry's
        options apply (chosen_by=EVERY) or nothing is declared (then nothing is refused)."""
        if self.every or not self.choices:
            return None
        return set().union(*(c.chosen(section) for c in self.choices))

    def options_key(self, name: str) -> str | None:
        """The sub-section key of entry ``name``'s options (its class's ``KEY``, else the name), or None."""
        cls = self._options.get(name)
        return None if cls is None else getattr(cls, "KEY", name)

    def unregister(self, name: str) -> None:
        """Remove entry ``name`` (a plug-in's or a test's); an unknown name is a ConfigError."""
        self.get(name)
        for table in (self._items, self._help, self._options):
            table.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), list(self._items), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Valid: {', '.join(sorted(self._items))}."

    def options(self, name: str) -> Any:
        """The options dataclass of entry ``name``, or None if it has none."""
        return self._options.get(name)

    def option_types(self) -> dict[str, Any]:
        """Options key -> options dataclass, over the entries that have options (shared once)."""
        out: dict[str, Any] = {}
        for name in self.names():
            cls = self._options.get(name)
            if cls is not None:
                out.setdefault(getattr(cls, "KEY", name), cls)
        return out

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def names(self) -> list[str]:
        return sorted(self._items)

    def in_order(self) -> list[str]:
        """The names in the order they were registered (the order error texts and docs list choices in)."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
