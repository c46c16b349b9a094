"""The configuration reference (docs/CONFIG.md), generated from the config schema.

Every key, its type and default come from the dataclasses in ``config/schema.py``; its text and
allowed values from the field's metadata (``help``, ``choices``: ``config.schema.setting``), or, for a key
whose values are a registry's names (metadata ``registry``), from that registry as it is filled when the
reference is made (each name with its help). A test compares the committed file with this output, so the
reference cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from typing import Any

from tailtune import config as C
from tailtune.registry import filling

HEADER = """# Configuration reference

<!-- Generated from src/tailtune/config/schema.py by `tailtune config-reference --out docs/CONFIG.md`.
     Do not edit by hand: tests/config/test_reference.py checks that this file matches the schema. -->

"""


def field_docs(cls) -> dict[str, str]:
    """Field name -> its help text (the ``help`` of its metadata, see ``config.schema.setting``)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def field_choices(cls) -> dict[str, tuple]:
    """Field name -> its allowed values (the ``choices`` of its metadata, or the names of the registry
    its ``registry`` key names, in their registration order), for fields that have them."""
    out = {}
    for f in dataclasses.fields(cls):
        if "choices" in f.metadata:
            out[f.name] = tuple(f.metadata["choices"])
        elif "registry" in f.metadata:
            out[f.name] = tuple(C.registered_choices(f.metadata["registry"]))
    return out


def _registry_choices(key: str) -> str:
    """The names of the registry that fills config key ``key``, each with its help: "`name` — help | ..."."""
    reg = filling(key)
    return " | ".join(f"`{n}` — {reg.help(n)}" if reg.help(n) else f"`{n}`" for n in reg.in_order())


def _type(annotation: Any) -> str:
    t = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    m = re.fullmatch(r"Optional\[(.+)\]", t)
    if m:
        return f"{_type(m.group(1))} or null"
    m = re.fullmatch(r"Union\[(.+)\]", t)
    if m:
        return " or ".join(part.strip() for part in m.group(1).split(","))
    return {"Any": "any"}.get(t, t)


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple, dict)):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    """Table-cell text: pipes escaped, angle brackets as entities (Markdown would read tags)."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _section_table(cls, prefix: str) -> list[str]:
    docs, choices = field_docs(cls), field_choices(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if _is_section(f):
            continue  # a section: documented under its own heading
        text = docs.get(f.name, "")
        listed = set(re.findall(r"[\w.-]+", text))
        if "registry" in f.metadata:
            text += (": " if text else "") + _registry_choices(f.metadata["registry"])
        elif f.name in choices and not {str(c) for c in choices[f.name]} <= listed:
            text += ("; " if text else "") + "allowed: " + ", ".join(f"`{c}`" for c in choices[f.name])
        rows.append(f"| `{prefix}{f.name}` | {_cell(_type(f.type))} | {_cell(_default(f))} | {_cell(text)} |")
    return rows


def _is_section(f: dataclasses.Field) -> bool:
    factory = f.default_factory
    return factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory)  # type: ignore[arg-type]


def config_reference() -> str:
    """The Markdown reference of every config key, the registered methods' options included."""
    schema = C.schema()
    intro = (C.__doc__ or "").strip().split("\n\n")
    out = [HEADER.rstrip("\n"), "", *[" ".join(p.split()).replace("<-", "←") + "\n" for p in intro]]
    out += ["Set a key in a YAML file (`-c file.yaml`) or on the command line as `section.key=value`, e.g. "
            "`tailtune train -r lift train.epochs=5 peft.method=lora`. A method's own options are the "
            "sub-section of its name, e.g. `peft.vpt.length=5`; a user's file or override that sets the options of "
            "a method (loss, head, ...) that is not the one chosen, away from their defaults, is refused (the run "
            "would ignore them; a recipe's or data preset's pass, saved run configs are read as written).\n",
            "## Top-level keys\n", *_section_table(schema, ""), ""]
    for f in filter(_is_section, dataclasses.fields(schema)):
        factory = f.default_factory
        doc = " ".join((inspect.getdoc(factory) or "").split())
        out += [f"## `{f.name}`: {doc}\n", *_section_table(factory, f"{f.name}."), ""]
        for sub in filter(_is_section, dataclasses.fields(factory)):
            doc = " ".join((inspect.getdoc(sub.default_factory) or "").split())
            out += [f"### `{f.name}.{sub.name}`: {doc}\n",
                    *_section_table(sub.default_factory, f"{f.name}.{sub.name}."), ""]
    return "\n".join(out).rstrip("\n") + "\n"
