"""Prompt templates and class names -> prompts."""

from __future__ import annotations

DEFAULT_TEMPLATE = "a photo of a {}."


def clean_classname(name: str) -> str:
    """Underscores become spaces ('sea_lion' -> 'sea lion')."""
    return name.replace("_", " ").strip()


def make_prompts(classnames: list[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    return [template.format(clean_classname(c)) for c in classnames]
