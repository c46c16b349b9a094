"""The configuration reference (docs/CONFIG.md), generated from the config schema.

Every key, its type and default come from the dataclasses in ``config/schema.py``; its text from
the comment on the field's line (or the comment lines just above it); allowed values from
the ``_check_choice`` calls in the section's ``__post_init__``. A test compares the
committed file with this output, so the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import re
import textwrap
import tokenize
from typing import Any

from tailtune import config as C

HEADER = """# Configuration reference

<!-- Generated from src/tailtune/config/schema.py by `tailtune config-reference --out docs/CONFIG.md`.
     Do not edit by hand: tests/test_reference.py checks that this file matches the schema. -->

"""


def _class_source(cls) -> tuple[str, ast.ClassDef]:
    src = textwrap.dedent(inspect.getsource(cls))
    return src, ast.parse(src).body[0]  # type: ignore[return-value]


def _comments(src: str) -> dict[int, str]:
    """Line number -> comment text (without '#'), found by the tokenizer (not fooled by strings)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def field_docs(cls) -> dict[str, str]:
    """Field name -> its comment: on the field's own line, else the comment lines just above."""
    src, node = _class_source(cls)
    comments = _comments(src)
    lines = src.splitlines()
    docs = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        own = [comments[n] for n in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1) if n in comments]
        if not own:
            n = stmt.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                own.insert(0, comments.get(n, ""))
                n -= 1
        docs[stmt.target.id] = " ".join(own)
    return docs


def field_choices(cls) -> dict[str, tuple]:
    """Field name -> allowed values, from ``_check_choice(section, key, value, CHOICES)`` calls."""
    _, node = _class_source(cls)
    out = {}
    for call in ast.walk(node):
        name = getattr(getattr(call, "func", None), "id", None) or getattr(getattr(call, "func", None), "attr", None)
        if not (isinstance(call, ast.Call) and name == "_check_choice"
                and len(call.args) == 4 and isinstance(call.args[1], ast.Constant)):
            continue
        arg = call.args[3]
        if isinstance(arg, ast.Name) and isinstance(getattr(C, arg.id, None), tuple):
            out[call.args[1].value] = getattr(C, arg.id)
        elif isinstance(arg, ast.Tuple):
            out[call.args[1].value] = ast.literal_eval(arg)
    return out


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
        if dataclasses.is_dataclass(f.default_factory) if f.default_factory is not dataclasses.MISSING else False:
            continue  # a section: documented under its own heading
        text = docs.get(f.name, "")
        listed = set(re.findall(r"[\w.-]+", text))
        if f.name in choices and not {str(c) for c in choices[f.name]} <= listed:
            text += ("; " if text else "") + "allowed: " + ", ".join(f"`{c}`" for c in choices[f.name])
        rows.append(f"| `{prefix}{f.name}` | {_cell(_type(f.type))} | {_cell(_default(f))} | {_cell(text)} |")
    return rows


def config_reference() -> str:
    """The Markdown reference of every config key."""
    intro = (C.__doc__ or "").strip().split("\n\n")
    out = [HEADER.rstrip("\n"), "", *[" ".join(p.split()).replace("<-", "←") + "\n" for p in intro]]
    out += ["Set a key in a YAML file (`-c file.yaml`) or on the command line as `section.key=value`, e.g. "
            "`tailtune train -r lift train.epochs=5 peft.method=lora`.\n",
            "## Top-level keys\n", *_section_table(C.Config, ""), ""]
    for f in dataclasses.fields(C.Config):
        factory = f.default_factory
        if factory is dataclasses.MISSING or not dataclasses.is_dataclass(factory):  # type: ignore[arg-type]
            continue
        doc = " ".join((inspect.getdoc(factory) or "").split())
        out += [f"## `{f.name}`: {doc}\n", *_section_table(factory, f"{f.name}."), ""]
    return "\n".join(out).rstrip("\n") + "\n"
