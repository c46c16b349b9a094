"""The PEFT registry and what every method shares: block selection, start-up checks, the bottleneck rule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from tailtune.config import PeftConfig, parse_blocks
from tailtune.errors import ConfigError
from tailtune.models.casts import cast_frozen_once
from tailtune.registry import Choice, Registry

PEFT_METHODS: Registry = Registry("PEFT method", section="peft",  # options: peft.<key>.*
                                   chosen_by=Choice("peft.method", lambda peft: method_names(peft)))
# (models/text.py adds peft.text.method: the text side's methods read the image side's options)


# What a backbone kind is, for the message that refuses a method on it.
KIND_WORDS = {"vit": "a transformer: blocks of attention and MLP",
              "cnn": "a convolutional network: no transformer blocks to attach to"}


class PeftMethod:
    """One way of making a frozen backbone trainable.

    ``apply`` injects modules and/or sets ``requires_grad`` on existing parameters; it
    never unfreezes anything else. ``kinds`` declares which backbones (``Backbone.kind``) it
    applies to; :meth:`check` refuses the others, naming the methods that do apply
    (:func:`methods_for`), so no caller lists methods per backbone.
    Checkpoints hold the trainable parameters; an injected module that is also defined by
    buffers (masked tuning's chosen entries) names them in a ``saved_buffers`` tuple.
    Every module a method injects derives from :class:`PeftModule`, so that :func:`peft_off`
    can compute the frozen backbone's own features (the head's initialisation needs them).

    Composed methods (``peft.method=a+b``) are applied in ``stage`` order, so the result
    does not depend on the order they are written in: methods that pick existing
    parameters (0) see only the backbone's own tensors; methods that edit weights (1)
    act on the bare linear layers; output wrappers (2: LoRA, 3: SSF) stack on those;
    sub-layers around the MLP (4) and prompt tokens (5) restructure blocks; modules on the
    backbone's output features (6: CLIP-Adapter, :func:`add_feature_module`) come last, so they
    see the features' final width (after proj_tuning's projection).
    """

    kinds: tuple[str, ...] = ("vit", "cnn")
    identity_at_init = True  # a fresh model gives the classifier-only model's logits
    trains_bn_stats = False  # under peft.bn_mode=auto, BatchNorm statistics update only if True
    stage = 0
    name = ""  # set by get_method
    family: str | None = None  # methods of one family (e.g. the two VPTs) exclude each other
    # merge(model) -> int: fold this method's modules into the backbone's weights and remove
    # them (how many layers it merged); export does, and drops the method from its config.
    merge: Callable[[nn.Module], int] | None = None

    def check(self, backbone, name: str, cfg: PeftConfig) -> None:
        """Start-up check (before any data is loaded): raise ConfigError if ``name`` cannot apply."""
        if backbone.kind not in self.kinds:
            raise ConfigError(f"peft.method={name!r} applies to {' / '.join(self.kinds)} backbones, but "
                              f"{backbone.info['provider']} model {backbone.info['name']!r} is a {backbone.kind} "
                              f"({KIND_WORDS.get(backbone.kind, backbone.kind)}). Methods that apply to a "
                              f"{backbone.kind}: {', '.join(methods_for(backbone.kind))}.")

    def apply(self, backbone, cfg: PeftConfig, num_classes: int) -> None:
        raise NotImplementedError


class PeftModule(nn.Module):
    """Base of the modules PEFT methods inject into a backbone.

    While ``active`` is False (inside :func:`peft_off`) a module computes exactly what the
    backbone computed before it was injected: a wrapper calls only the layer it wraps, a
    prompt inserts no tokens.
    """

    active = True


@contextmanager
def peft_off(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, ``model`` computes without its injected PEFT modules.

    The features are those of the frozen backbone alone, whatever the modules' values; the
    head's class-mean and linear-probe initialisations use them, as the reference does
    (reference: trainer.py:init_head_class_mean, ``self.model(image, use_tuner=False)``).
    Methods that train the backbone's own tensors (full, bitfit, ln_tuning, bn_tuning) have
    nothing to switch off: before training those tensors are the frozen ones.
    """
    modules = [m for m in model.modules() if isinstance(m, PeftModule)]
    before = [m.active for m in modules]
    for m in modules:
        m.active = False
    try:
        yield model
    finally:
        for m, active in zip(modules, before):
            m.active = active


class _ApplyFeatureModule:
    """Forward hook of a backbone: its output passes through ``encoder.<name>``."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, backbone: nn.Module, args, features):
        return getattr(backbone.encoder, self.name)(features)


def add_feature_module(backbone, name: str, module: PeftModule) -> None:
    """Apply ``module`` to the features ``backbone`` returns (those the classifier reads).

    The module is stored in the image encoder as ``encoder.<name>``, so it saves, reloads and
    exports with the encoder's tensors; a forward hook on the backbone applies it to the
    backbone's output, whatever the provider's forward is (as VPT's hooks do on blocks).
    The feature cache cuts the encoder itself, so it does not cut in front of such a module:
    a method that trains one runs uncached (training/feature_cache.py says why).
    """
    if hasattr(backbone.encoder, name):
        raise ConfigError(f"the image encoder already has a {name!r}; a feature module is added once.")
    backbone.encoder.add_module(name, module)
    backbone.register_forward_hook(_ApplyFeatureModule(name))


def get_method(name: str) -> PeftMethod:
    method = PEFT_METHODS.get(name)()
    method.name = name  # for messages that name the method as the user wrote it
    return method


def mergeable(name: str) -> bool:
    """Whether PEFT method ``name`` folds into the backbone's weights (has a ``merge``)."""
    return PEFT_METHODS.get(name).merge is not None


def methods_for(kind: str) -> list[str]:
    return [n for n in PEFT_METHODS.names() if kind in PEFT_METHODS.get(n).kinds]


def method_names(cfg: PeftConfig) -> list[str]:
    """The methods of ``peft.method``; several compose with '+', e.g. 'adaptformer+ssf'."""
    return [m.strip() for m in cfg.method.split("+") if m.strip()] or ["none"]


def check_names(names: list[str], registry, key: str, value: str) -> None:
    """Every name of a '+' list is registered (the registry's error names the choices) and none repeats."""
    for name in names:
        registry.get(name)
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{key}={value!r} names {', '.join(repeated)} more than once; name each method once.")


def check_peft(backbone, cfg: PeftConfig) -> None:
    """Start-up check: every named method exists, fits the backbone and its companions."""
    names = method_names(cfg)
    check_names(names, PEFT_METHODS, "peft.method", cfg.method)
    families: dict[str, str] = {}
    for name in names:
        family = PEFT_METHODS.get(name).family
        if family and family in families:
            raise ConfigError(f"peft.method={cfg.method!r} combines {families[family]} and {name}, which both "
                              f"set the {family}; choose one.")
        if family:
            families[family] = name
    if backbone.kind != "vit" and parse_blocks(cfg.blocks)[0] != slice(None):
        raise ConfigError(f"peft.blocks={cfg.blocks!r} selects transformer blocks, but {backbone.info['name']!r} "
                          "is a CNN; use peft.blocks=all.")
    if backbone.kind == "vit":
        select_blocks(backbone, cfg)  # the range must fit the depth
    for name in names:
        get_method(name).check(backbone, name, cfg)


def apply_peft(backbone, cfg: PeftConfig, num_classes: int) -> None:
    """Make the backbone trainable as ``cfg`` says (everything else stays frozen)."""
    check_peft(backbone, cfg)
    methods = sorted((get_method(n) for n in method_names(cfg)), key=lambda m: m.stage)
    for method in methods:
        method.apply(backbone, cfg, num_classes)
    cast_frozen_once(backbone)  # the layers methods added too: cast once wherever no gradient reaches them


def trains_bn_stats(cfg: PeftConfig) -> bool:
    if cfg.bn_mode != "auto":
        return cfg.bn_mode == "train"
    return any(PEFT_METHODS.get(n).trains_bn_stats for n in method_names(cfg))


def bottleneck(num_classes: int, num_blocks: int) -> int:
    """r = 2^max(0, floor(log2(C / 2L))): 4 for CIFAR-100 on ViT-B/16, 32 for ImageNet-LT."""
    return 2 ** max(0, math.floor(math.log2(num_classes / (2 * num_blocks))))


def resolve_r(backbone, cfg: PeftConfig, num_classes: int) -> int:
    # L is the backbone's depth, not the number of selected blocks: restricting a method to
    # fewer blocks should not widen each of its modules. Only the ViT methods (bottlenecks,
    # LoRA) read r; a CNN has no transformer blocks, so L is not defined there and the rule
    # is refused rather than divided by zero (the methods that apply to CNNs have no r).
    if cfg.r:
        return cfg.r
    depth = len(backbone.blocks())
    if not depth:
        raise ConfigError(f"peft.r: the bottleneck rule r = 2^floor(log2(C / 2L)) needs L transformer blocks, "
                          f"but {backbone.info['name']!r} has none; set peft.r or use a method for a "
                          f"{backbone.kind}: {', '.join(methods_for(backbone.kind))}.")
    return bottleneck(num_classes, depth)


def tuned_scope(backbone, cfg: PeftConfig) -> list[nn.Module]:
    """What a method that picks existing parameters tunes: the selected transformer blocks of a
    ViT, the whole encoder of a CNN (full, bitfit, ln_tuning)."""
    blocks = [b for _, b in select_blocks(backbone, cfg)] if backbone.kind == "vit" and backbone.blocks() else []
    return blocks or [backbone.encoder]


def select_blocks(backbone, cfg: PeftConfig) -> list[tuple[str, nn.Module]]:
    """The transformer blocks ``peft.blocks`` selects, in depth order."""
    blocks = backbone.blocks()
    part, needed = parse_blocks(cfg.blocks)
    if needed > len(blocks):
        raise ConfigError(f"peft.blocks={cfg.blocks!r} needs {needed} blocks, but {backbone.info['name']!r} "
                          f"has {len(blocks)}.")
    return blocks[part]


NORM_NAMES = ("ln_2", "norm2")  # open_clip, timm: the LayerNorm before the MLP


def mlp_parts(block: nn.Module) -> tuple[str, nn.Module, nn.Module]:
    """(norm attribute name, norm, mlp) of a pre-norm transformer block."""
    for norm_name in NORM_NAMES:
        if hasattr(block, norm_name) and hasattr(block, "mlp"):
            return norm_name, getattr(block, norm_name), block.mlp
    raise ConfigError(f"block {type(block).__name__} has no ({'|'.join(NORM_NAMES)}, mlp) pair; "
                      "this PEFT method supports open_clip and timm pre-norm ViT blocks.")


def feature_width(block: nn.Module) -> int:
    """Width of the residual stream: the size of the block's first LayerNorm.

    Searched rather than read from a named norm, so it still works when another method
    has wrapped or moved that norm.
    """
    for m in block.modules():
        if isinstance(m, nn.LayerNorm):
            return m.normalized_shape[-1]
    raise ConfigError(f"block {type(block).__name__} has no LayerNorm; PEFT methods here need pre-norm ViT blocks.")


def device_of(module: nn.Module):
    """Where a block's tensors live, so injected modules are created next to them."""
    return next(module.parameters()).device


def unfreeze(params) -> None:
    for p in params:
        p.requires_grad_(True)
