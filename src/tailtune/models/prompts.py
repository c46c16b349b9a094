"""Prompt modes: class names -> prompts per class -> one text feature per class.

A prompt mode maps the class names (and the head config) to a list of prompts for each
class. A class's text feature is the mean of its prompts' L2-normalised embeddings,
normalised again (for a single prompt: just its normalised embedding).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from tailtune.config import DEFAULT_PROMPT, HeadConfig
from tailtune.errors import ConfigError
from tailtune.registry import Registry

DEFAULT_TEMPLATE = DEFAULT_PROMPT
PROMPT_MODES: Registry = Registry("prompt mode")
ENCODE_CHUNK = 256  # prompts per text-encoder call: bounds memory for 80 templates x 1000 classes


def clean_classname(name: str) -> str:
    """Underscores become spaces ('sea_lion' -> 'sea lion')."""
    return name.replace("_", " ").strip()


def make_prompts(classnames: list[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per class from a '{}' template."""
    return [template.format(clean_classname(c)) for c in classnames]


@PROMPT_MODES.register("default", help="head.prompt with the class name (default 'a photo of a {}.')")
def default_prompts(classnames: list[str], cfg: HeadConfig) -> list[list[str]]:
    return [[p] for p in make_prompts(classnames, cfg.prompt)]


@PROMPT_MODES.register("classname", help="the bare class name ('{}')")
def classname_prompts(classnames: list[str], cfg: HeadConfig) -> list[list[str]]:
    return [[p] for p in make_prompts(classnames, "{}")]


def imagenet_templates() -> list[Callable[[str], str]]:
    """The 80 CLIP ImageNet templates as shipped by open_clip (callables or '{}' strings)."""
    from open_clip.zero_shot_metadata import (
        OPENAI_IMAGENET_TEMPLATES,  # here: open_clip is slow to import
    )

    return [t if callable(t) else t.format for t in OPENAI_IMAGENET_TEMPLATES]


@PROMPT_MODES.register("ensemble", help="the 80 CLIP ImageNet templates, features averaged")
def ensemble_prompts(classnames: list[str], cfg: HeadConfig) -> list[list[str]]:
    templates = imagenet_templates()
    return [[t(clean_classname(c)) for t in templates] for c in classnames]


def load_descriptors(path: str | Path) -> dict[str, list[str]]:
    """A descriptors file: JSON object {class name: [description, ...]}, every list non-empty."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"head.descriptors={str(path)!r} does not exist; give a JSON file "
                          '{"class name": ["description", ...], ...}.')
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"head.descriptors file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"head.descriptors file {path} must hold a JSON object of class name -> list of "
                          f"descriptions, not a {type(data).__name__}.")
    for name, descs in data.items():
        if not isinstance(descs, list) or not descs or not all(isinstance(d, str) and d.strip() for d in descs):
            raise ConfigError(f"head.descriptors file {path}: class {name!r} must map to a non-empty list of "
                              "non-empty strings.")
    return data


def descriptor_prompt(classname: str, description: str) -> str:
    """'{}' in a description takes the class name; otherwise 'class, description'.

    The class name stays in every prompt: descriptions alone ('small eyes') are shared by
    many classes and would pull their features together.
    """
    name = clean_classname(classname)
    return description.format(name) if "{}" in description else f"{name}, {description}"


@PROMPT_MODES.register("descriptors", help="descriptions per class from head.descriptors (JSON), averaged")
def descriptor_prompts(classnames: list[str], cfg: HeadConfig) -> list[list[str]]:
    if cfg.descriptors is None:
        raise ConfigError("head.prompt_mode=descriptors needs head.descriptors=FILE.json.")
    data = load_descriptors(cfg.descriptors)
    out, missing = [], []
    for c in classnames:
        descs = data.get(c, data.get(clean_classname(c)))
        if descs is None:
            missing.append(c)
            continue
        out.append([descriptor_prompt(c, d) for d in descs])
    if missing:
        shown = ", ".join(map(repr, missing[:5])) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"head.descriptors file {cfg.descriptors} has no descriptions for {shown}; "
                          "add them (keys are the dataset's class names).")
    return out


def class_prompts(classnames: list[str], cfg: HeadConfig) -> list[list[str]]:
    """Prompts of each class under ``cfg.prompt_mode``."""
    return PROMPT_MODES.get(cfg.prompt_mode)(classnames, cfg)


def describe(cfg: HeadConfig) -> str:
    """A short label of the prompts in use (for logs and metrics)."""
    if cfg.prompt_mode == "default":
        return cfg.prompt
    if cfg.prompt_mode == "descriptors":
        return f"descriptors from {cfg.descriptors}"
    return cfg.prompt_mode


@torch.no_grad()
def class_text_features(encode: Callable[[list[str]], torch.Tensor], prompts: list[list[str]],
                        chunk: int = ENCODE_CHUNK) -> torch.Tensor:
    """(C, D): per class, the normalised mean of its prompts' normalised embeddings.

    ``encode`` maps a list of prompts to their embeddings (any scale); it is called on at
    most ``chunk`` prompts at a time.
    """
    if any(not p for p in prompts):
        raise ConfigError("every class needs at least one prompt.")
    flat = [p for ps in prompts for p in ps]
    feats = torch.cat([F.normalize(encode(flat[i:i + chunk]).float(), dim=-1) for i in range(0, len(flat), chunk)])
    owner = torch.repeat_interleave(torch.arange(len(prompts)), torch.tensor([len(p) for p in prompts]))
    sums = torch.zeros(len(prompts), feats.shape[1], device=feats.device).index_add_(0, owner.to(feats.device), feats)
    return F.normalize(sums, dim=-1)
