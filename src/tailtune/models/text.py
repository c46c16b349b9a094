"""The text side of a CLIP backbone: the text encoder as the classifier, PEFT on its blocks, CoOp.

The text classifier (``head.type=text``) is LIFT+'s ``classifier: None`` (LIFT-plus
models/models.py ``PEFT_Model.forward``): the image features (read before the image
projection, as every tailtune head reads them) go through the image projection into CLIP's
joint space, the class prompts through the text encoder and its projection, and

    logits = scale * cos(image feature @ image_proj, text feature of the class's prompts)

with ``scale`` CLIP's own ``exp(logit_scale)`` (LIFT+'s) unless ``head.text.scale`` sets one.
LIFT+ prompts with "a photo of a {}." (LIFT-plus trainer.py ``build_tuner``), tailtune's
``head.prompt`` default; a class with several prompts (``head.prompt_mode=ensemble``) gets the
normalised mean of its prompts' normalised features, as the text initialisation does.

When nothing on the text side trains, the class features are computed once and kept until a
text-side tensor changes (each tensor's version counter and storage are the cache's key, so an
optimizer step, a loaded checkpoint or a move to another device recompute them); when the text
side trains, every training forward runs the text encoder over all class prompts with gradients.

Text-side PEFT (``peft.text.method``, LIFT+'s ``l.*`` options mirroring ``v.*``) applies the
image side's methods, unchanged, to the text transformer's blocks through :class:`TextSide`,
a view of the text tower shaped like a backbone. Prompt tuning on text inserts its tokens right
after the start-of-text token (LIFT-plus models/models.py ``PEFT_Block.forward``: prefix = the
first token) and takes them out after the last block, so the end-of-text pooling reads the
positions it was built for; a hook gives every block the causal mask of its longer sequence.
CoOp (``coop``) replaces the embeddings of placeholder tokens around the class name by learned
context vectors shared by all classes (LIFT-plus models/models.py ``PEFT_Text.add_learnable_context``
and trainer.py ``build_tuner`` for the templates and positions).

An export never holds the text tower: for a fixed class list the class text features can always
be computed once, so export writes them as the fixed weights of a ``text_features`` head
(:func:`fixed_text_head`) together with the image projection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from tailtune.config import (
    DEFAULT_PROMPT,
    HeadConfig,
    PeftConfig,
    _check_choice,
    _check_positive,
    options_of,
    parse_blocks,
    setting,
)
from tailtune.errors import ConfigError
from tailtune.models.heads import HEADS
from tailtune.models.peft.base import PEFT_METHODS, PeftMethod, PeftModule, check_names, get_method
from tailtune.models.peft.vpt import VptOptions
from tailtune.models.prompts import ENCODE_CHUNK, class_prompts, clean_classname
from tailtune.registry import Choice, Registry

# options: peft.text.* (every text-side method's; APPLIES says which of them reads which field)
TEXT_METHODS: Registry = Registry("text-side method", section="peft",
                                  chosen_by=Choice("peft.text.method",
                                                   lambda peft: text_method_names(text_options(peft)) or ["none"]))
# Image-side methods that apply to the text transformer's blocks as they are (LIFT+ l.*: fft,
# bitfit, pt, lora, adapter, adaptformer, ssf, aft; aft is not in tailtune's main yet).
SHARED_METHODS = ("full", "bitfit", "ln_tuning", "lora", "lora_mlp", "adapter", "adaptformer", "ssf",
                  "vpt_shallow", "vpt_deep", "masked", "aft")
OWN_METHODS = ("coop", "proj_tuning")  # the text side's own (not the image side's methods on its blocks)
CONTEXT_INITS = ("random", "photo")
CLASS_POSITIONS = ("end", "middle", "front")
PHOTO_TEMPLATE = "a photo of a {}."
PHOTO_CONTEXT = (0, 1, 2, 3, -1)  # "a photo of a" and the final ".", as LIFT-plus trainer.py build_tuner
TEXT_HEADS = ("text",)


@dataclass
class TextPeftOptions:
    """The text side: PEFT on CLIP's text encoder and CoOp's learned context (needs head.type=text)."""

    KEY: ClassVar[str] = "text"

    # Fields only some text-side methods read (the others read every method's; peft.text.method picks).
    APPLIES: ClassVar[dict[str, tuple[str, ...]]] = {
        "blocks": SHARED_METHODS, "r": ("lora", "lora_mlp", "adapter", "adaptformer"),
        "prompt_length": ("vpt_shallow", "vpt_deep"),
        "context_length": ("coop",), "context_init": ("coop",), "class_position": ("coop",)}

    method: str = setting("none", "text-side methods, '+' composes (`tailtune list text`): none | coop | proj_tuning "
                                  "(the text projection) | the image side's bitfit, full, ln_tuning, lora, lora_mlp, "
                                  "adapter, adaptformer, ssf, vpt_shallow, vpt_deep, masked, aft on the text blocks "
                                  "(needs head.type=text)")
    blocks: Any = setting("all", "text transformer blocks the methods apply to: all | first N | last N | S:E or [S, E]")
    r: Optional[int] = setting(4,  # noqa: UP045  (OmegaConf reads the annotation)
                                "bottleneck / rank of text-side lora, adapter, adaptformer (LIFT+ l.*_dim: 4)")
    prompt_length: int = setting(2, "vpt_shallow / vpt_deep on text: prompt tokens after the start token "
                                    "(LIFT+ l.pt_len: 2)")
    context_length: int = setting(4, "coop: learned context tokens (LIFT+ coop_ctx_len: 4)")
    context_init: str = setting("random", "coop: random (normal, std 0.02) | photo (the embeddings of 'a photo of a' "
                                          "and '.', 5 tokens, class name before the '.'; context_length and "
                                          "class_position then stay at their defaults)", choices=CONTEXT_INITS)
    class_position: str = setting("end", "coop, random init: the class name after the context (end: 'X X X X {}.'), "
                                         "in its middle or before it (front: '{} X X X X.')", choices=CLASS_POSITIONS)

    def __post_init__(self) -> None:
        parse_blocks(self.blocks)
        _check_positive("peft.text", "r", self.r)
        _check_positive("peft.text", "prompt_length", self.prompt_length)
        _check_positive("peft.text", "context_length", self.context_length)
        _check_choice("peft.text", "context_init", self.context_init, CONTEXT_INITS)
        _check_choice("peft.text", "class_position", self.class_position, CLASS_POSITIONS)
        if self.context_init == "photo" and (self.context_length != 4 or self.class_position != "end"):
            raise ConfigError("peft.text.context_init=photo learns the 5 tokens of 'a photo of a {}.' (class name "
                              "before the '.'); drop peft.text.context_length / class_position, or use "
                              "context_init=random.")

    def check_section(self, section) -> None:
        names = text_method_names(self)
        check_names(names, TEXT_METHODS, "peft.text.method", self.method)
        if "vpt_shallow" in names and "vpt_deep" in names:
            raise ConfigError(f"peft.text.method={self.method!r} combines vpt_shallow and vpt_deep, which both set "
                              "the prompt tokens; choose one.")


def text_method_names(opts: TextPeftOptions) -> list[str]:
    return [m.strip() for m in opts.method.split("+") if m.strip() and m.strip() != "none"]


def text_options(peft: PeftConfig) -> TextPeftOptions:
    return options_of(peft, "text", TextPeftOptions)


# The image side's methods on the text blocks read their peft.<method>.* options (text_peft_config),
# but the VPTs: their prompt tokens are peft.text.prompt_length.
PEFT_METHODS.add_choice(Choice("peft.text.method", lambda peft: [
    n for n in text_method_names(text_options(peft)) if n in SHARED_METHODS and PEFT_METHODS.options(n) is not VptOptions]))
TEXT_METHODS.register("none", help="nothing on the text side trains", options=TextPeftOptions)("none")
for _name in SHARED_METHODS:
    _help = PEFT_METHODS.help(_name).replace("peft.vpt.length", "peft.text.prompt_length")  # the text side's key
    TEXT_METHODS.register(_name, help=f"the image side's {_name} on the text transformer's blocks ({_help})",
                          options=TextPeftOptions)(_name)
TEXT_METHODS.register("coop", help="CoOp: learned context tokens around the class name, shared by all classes "
                                   "(peft.text.context_*)", options=TextPeftOptions)("coop")
TEXT_METHODS.register("proj_tuning", help="CLIP's text projection trains (the text half of LIFT+'s proj_tuning: "
                                          "peft.method=proj_tuning with it trains both projections, as LIFT+)",
                      options=TextPeftOptions)("proj_tuning")


# ---------------------------------------------------------------- the text tower


def has_text_tower(backbone) -> bool:
    return bool(getattr(backbone, "has_text", False)) and hasattr(backbone, "clip")


def text_named_parameters(backbone) -> list[tuple[str, nn.Parameter]]:
    """The text side's parameters as the backbone names them (``clip.transformer...``): CLIP minus its
    image encoder and its logit scale / bias (which the text classifier reads but never trains)."""
    if not has_text_tower(backbone):
        return []
    return [(f"clip.{n}", p) for n, p in backbone.clip.named_parameters()
            if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias")]


def is_text_parameter(backbone, name: str) -> bool:
    """Whether backbone parameter ``name`` is on the text side."""
    return has_text_tower(backbone) and name.startswith("clip.") and not name.startswith("clip.visual.") \
        and name not in ("clip.logit_scale", "clip.logit_bias")


def text_trains(backbone) -> bool:
    return any(p.requires_grad for _, p in text_named_parameters(backbone))


class _TextEncoder(nn.Module):
    """The text transformer as an 'encoder' for the PEFT methods (never part of the model's tree)."""

    num_prefix_tokens = 1  # the start-of-text token: prompt tokens go right after it

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer = clip.transformer


class TextSide:
    """The text tower seen as a backbone, so the image side's PEFT methods apply to its blocks."""

    kind = "vit"

    def __init__(self, backbone):
        self.encoder = _TextEncoder(backbone.clip)
        self.info = {**backbone.info, "name": f"{backbone.info['name']} text encoder"}

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [(f"transformer.resblocks.{i}", b) for i, b in enumerate(self.encoder.transformer.resblocks)]


def _causal(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n, n), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)


@dataclass
class CausalMaskFit:
    """Forward pre-hook on a text block: the causal mask sized to the block's input (prompt tokens
    make it longer than open_clip's ``attn_mask``); keyword or positional (grad checkpointing)."""

    def __call__(self, block: nn.Module, args: tuple, kwargs: dict):
        x = args[0]
        n = x.shape[1] if getattr(block, "_tt_batch_first", True) else x.shape[0]
        if kwargs.get("attn_mask") is not None and kwargs["attn_mask"].shape[-1] != n:
            kwargs = {**kwargs, "attn_mask": _causal(n, kwargs["attn_mask"])}
            return args, kwargs
        if len(args) > 3 and args[3] is not None and args[3].shape[-1] != n:
            return (*args[:3], _causal(n, args[3]), *args[4:]), kwargs
        return None


def text_peft_config(peft: PeftConfig) -> PeftConfig:
    """The image side's ``peft`` section with the text side's method, blocks, rank and prompt tokens
    (the other method options, e.g. peft.ssf.parts or peft.masked.ratio, are shared)."""
    opts = text_options(peft)
    shared = [n for n in text_method_names(opts) if n not in OWN_METHODS]
    values = {"method": "+".join(shared) or "none", "r": opts.r, "blocks": opts.blocks}
    if hasattr(peft, "vpt"):
        values["vpt"] = VptOptions(length=opts.prompt_length, position="after_cls")
    return replace(peft, **values)


def check_text(cfg_peft: PeftConfig, head: HeadConfig, backbone) -> None:
    """Start-up check of the text head and the text-side methods against the backbone."""
    opts = text_options(cfg_peft)
    names = text_method_names(opts)
    if head.type in TEXT_HEADS or head.type == "text_features":
        if not has_text_tower(backbone):
            raise ConfigError(f"head.type={head.type} classifies with CLIP's text encoder; {backbone.info['name']!r} "
                              "has none. Use an open_clip CLIP model or another head (head.type=cosine).")
        if head.init not in ("auto", "text"):
            raise ConfigError(f"head.type={head.type} computes its class vectors from the class prompts; "
                              f"head.init={head.init} does not apply: drop it (or head.init=auto).")
    if names and head.type not in TEXT_HEADS:
        raise ConfigError(f"peft.text.method={opts.method!r} tunes CLIP's text encoder, which only the text "
                          f"classifier reads (head.type={head.type} never runs it); set head.type=text, or "
                          "drop peft.text.method.")
    if "coop" in names and (head.prompt_mode != "default" or head.prompt != DEFAULT_PROMPT):
        raise ConfigError("peft.text.method=coop writes its own prompts (learned context around the class name); "
                          "drop head.prompt / head.prompt_mode.")
    shared = [n for n in names if n not in OWN_METHODS]
    if shared:
        side, tcfg = TextSide(backbone), text_peft_config(cfg_peft)
        part, needed = parse_blocks(opts.blocks)
        if needed > len(side.blocks()):
            raise ConfigError(f"peft.text.blocks={opts.blocks!r} needs {needed} blocks, but the text encoder of "
                              f"{backbone.info['name']!r} has {len(side.blocks())}.")
        for name in shared:
            method: PeftMethod = get_method(name)
            try:
                method.check(side, name, tcfg)
            except ConfigError as e:
                raise ConfigError(f"peft.text.method: {e}") from None


def apply_text_peft(backbone, cfg_peft: PeftConfig, num_classes: int) -> None:
    """Inject the text-side methods into the text tower (only its injected tensors train)."""
    opts = text_options(cfg_peft)
    names = text_method_names(opts)
    shared = [n for n in names if n not in OWN_METHODS]
    if shared:
        side, tcfg = TextSide(backbone), text_peft_config(cfg_peft)
        for method in sorted((get_method(n) for n in shared), key=lambda m: m.stage):
            method.apply(side, tcfg, num_classes)
        if any(n.startswith("vpt") for n in shared):
            batch_first = getattr(backbone.clip.transformer, "batch_first", True)
            for _, block in side.blocks():
                block._tt_batch_first = batch_first
                block.register_forward_pre_hook(CausalMaskFit(), with_kwargs=True)
    if "coop" in names:
        add_context(backbone, opts)
    if "proj_tuning" in names:
        backbone.clip.text_projection.requires_grad_(True)


# ---------------------------------------------------------------- CoOp


def coop_layout(opts: TextPeftOptions) -> tuple[str, list[int]]:
    """(template, relative context positions) as LIFT-plus trainer.py build_tuner: positions count
    over the tokens between start and end of text, negative ones from the end ('.' is -1)."""
    n = opts.context_length
    if opts.context_init == "photo":
        return PHOTO_TEMPLATE, list(PHOTO_CONTEXT)
    if opts.class_position == "front":
        return "{}" + " X" * n + ".", list(range(-n - 1, -1))
    if opts.class_position == "middle":
        left, right = n // 2, (n + 1) // 2
        return "X " * left + "{}" + " X" * right + ".", list(range(left)) + list(range(-right - 1, -1))
    return "X " * n + "{}.", list(range(n))


def context_indices(tokens: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """(B, n) absolute token positions of the context: start token at 0, end token at argmax."""
    eot = tokens.argmax(dim=-1, keepdim=True)
    return loc.to(tokens.device) % (eot - 1) + 1


class LearnedContext(PeftModule):
    """CLIP's token embedding with the embeddings at the context positions replaced by ``ctx``."""

    def __init__(self, base: nn.Embedding, ctx: torch.Tensor, loc: list[int]):
        super().__init__()
        self.base = base
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("loc", torch.tensor(loc, dtype=torch.long), persistent=False)

    @property
    def weight(self):
        return self.base.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.base(tokens)
        if not self.active:
            return x
        idx = context_indices(tokens, self.loc)
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(idx)
        return x.index_put((rows, idx), self.ctx.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1))


def add_context(backbone, opts: TextPeftOptions) -> None:
    clip = backbone.clip
    template, loc = coop_layout(opts)
    emb = clip.token_embedding
    if opts.context_init == "photo":
        tokens = backbone.tokenizer([template.format("X")]).to(emb.weight.device)
        with torch.no_grad():
            ctx = emb(tokens)[0, context_indices(tokens, torch.tensor(loc))[0]].detach().clone().float()
    else:
        ctx = torch.empty(len(loc), emb.weight.shape[1], device=emb.weight.device).normal_(0, 0.02)
    clip.token_embedding = LearnedContext(emb, ctx.to(emb.weight.dtype), loc)
    backbone.coop_template = template


# ---------------------------------------------------------------- the classifiers


@dataclass
class TextHeadOptions:
    """head.type=text: the text encoder as the classifier."""

    KEY: ClassVar[str] = "text"

    scale: Optional[float] = setting(None,  # noqa: UP045  (OmegaConf reads the annotation)
                                      "head.type=text: logit scale; null = CLIP's own exp(logit_scale), as "
                                           "LIFT+'s text classifier (head.scale is the cosine head's)")

    def __post_init__(self) -> None:
        _check_positive("head.text", "scale", self.scale)


def encode_text(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` (3.x), step for step, with the cast dtype read from the token
    embedding: open_clip reads it from the first block's ``mlp.c_fc``, which adapter methods move."""
    from open_clip.transformer import text_global_pool

    cast = clip.token_embedding.weight.dtype
    x = clip.token_embedding(tokens).to(cast)
    x = x + clip.positional_embedding.to(cast)
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    if clip.text_projection is not None:
        x = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
    return x


def _tensor_key(backbone) -> tuple:
    states = [t for _, t in text_named_parameters(backbone)] + list(backbone.clip.buffers())
    return tuple((t._version, t.data_ptr(), t.dtype) for t in states)


class TextClassifier(nn.Module):
    """logits = scale * cos(features @ image_proj, class text features) (see the module docstring)."""

    self_initialised = "the text encoder (class prompts)"  # heads.initialise_head leaves it alone

    def __init__(self, dim: int, num_classes: int, scale: float = 25.0):
        super().__init__()
        self.num_classes = num_classes
        self.fixed_scale: float | None = None
        self._cache: tuple | None = None
        self.__dict__["_backbone"] = None  # a reference, not a submodule: its tensors are the backbone's

    def bind(self, backbone, prompts: list[list[str]], scale: float | None) -> TextClassifier:
        if len(prompts) != self.num_classes or any(not p for p in prompts):
            raise ConfigError(f"the text classifier needs prompts for each of its {self.num_classes} classes.")
        self.__dict__["_backbone"] = backbone
        flat = [p for ps in prompts for p in ps]
        self.register_buffer("tokens", backbone.tokenizer(flat), persistent=False)
        self.register_buffer("owner", torch.repeat_interleave(torch.arange(len(prompts)),
                                                              torch.tensor([len(p) for p in prompts])),
                             persistent=False)
        self.fixed_scale = scale
        self.to(backbone.clip.logit_scale.device)
        return self

    @property
    def backbone(self):
        if self._backbone is None:
            raise RuntimeError("TextClassifier.bind(backbone, prompts, scale) must come before its first forward.")
        return self._backbone

    @property
    def prompt_count(self) -> int:
        return int(self.tokens.shape[0])

    def _encode(self) -> torch.Tensor:
        clip = self.backbone.clip
        feats = torch.cat([F.normalize(encode_text(clip, self.tokens[i:i + ENCODE_CHUNK]).float(), dim=-1)
                           for i in range(0, self.prompt_count, ENCODE_CHUNK)])
        if self.prompt_count == self.num_classes:
            return feats
        sums = torch.zeros(self.num_classes, feats.shape[1], device=feats.device, dtype=feats.dtype)
        return F.normalize(sums.index_add(0, self.owner, feats), dim=-1)

    def class_features(self) -> torch.Tensor:
        """(C, E) normalised class text features in CLIP's joint space: with gradients while the text
        side trains, otherwise cached until a text-side tensor changes."""
        backbone = self.backbone
        if self.training and torch.is_grad_enabled() and text_trains(backbone):
            self._cache = None
            return self._encode()
        key = (_tensor_key(backbone), torch.is_autocast_enabled(), self.tokens.device)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._encode())
        return self._cache[1]

    def scale(self) -> torch.Tensor | float:
        if self.fixed_scale is not None:
            return self.fixed_scale
        return self.backbone.clip.logit_scale.detach().float().exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.backbone.to_joint(x.float()), dim=-1)
        return self.scale() * image @ self.class_features().t()


HEADS.register("text", help="CLIP's text encoder as the classifier (LIFT+ classifier None): "
                            "scale * cos(image features @ image projection, text features of the class prompts)",
               options=TextHeadOptions)(TextClassifier)


@HEADS.register("text_features", help="fixed class text features with the image projection: the export form of "
                                      "head.type=text (not for training)")
class TextFeatureClassifier(nn.Module):
    """scale * cos(x @ proj, weight): head.type=text with its class features computed once."""

    self_initialised = "the export's class text features"

    def __init__(self, dim: int, num_classes: int, scale: float = 25.0, joint_dim: int | None = None):
        super().__init__()
        joint = joint_dim or dim
        self.register_buffer("weight", torch.zeros(num_classes, joint))
        self.register_buffer("proj", torch.zeros(dim, joint))
        self.register_buffer("logit_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = F.normalize(x.float() @ self.proj.float(), dim=-1)
        return self.logit_scale * image @ F.normalize(self.weight.float(), dim=-1).t()


@torch.no_grad()
def fixed_text_head(head: TextClassifier) -> TextFeatureClassifier:
    """The export form of a text classifier: its class features, image projection and scale, fixed."""
    backbone = head.backbone
    was = head.training
    head.eval()
    feats = head.class_features().float()
    head.train(was)
    proj = backbone.joint_projection().detach().float()
    out = TextFeatureClassifier(proj.shape[0], feats.shape[0], joint_dim=proj.shape[1]).to(proj.device)
    out.weight.copy_(feats)
    out.proj.copy_(proj)
    out.logit_scale.fill_(float(head.scale()))
    return out


def build_text_head(cfg: HeadConfig, backbone, classnames: list[str], train: bool) -> nn.Module:
    """The configured text head for these classes, bound to the backbone's text tower."""
    if cfg.type == "text_features":
        if train:
            raise ConfigError("head.type=text_features is the export form of head.type=text (fixed class features); "
                              "train with head.type=text.")
        proj = backbone.joint_projection()
        return TextFeatureClassifier(proj.shape[0], len(classnames), joint_dim=proj.shape[1])
    opts = options_of(cfg, "text", TextHeadOptions)
    template = getattr(backbone, "coop_template", None)
    if template is not None:
        prompts = [[template.format(clean_classname(c))] for c in classnames]
    else:
        prompts = class_prompts(classnames, cfg)
    return TextClassifier(backbone.feature_dim, len(classnames)).bind(backbone, prompts, opts.scale)


def text_step_cost(head: nn.Module) -> dict | None:
    """What the text classifier adds to a training step: prompts x tokens through the text encoder
    (every micro-batch when the text side trains, else once while it stays unchanged)."""
    if not isinstance(head, TextClassifier):
        return None
    backbone = head.backbone
    return {"prompts": head.prompt_count, "context_length": int(head.tokens.shape[1]),
            "tokens": head.prompt_count * int(head.tokens.shape[1]),
            "text_trainable": sum(p.numel() for _, p in text_named_parameters(backbone) if p.requires_grad),
            "every_step": text_trains(backbone)}


def time_text_pass(head: TextClassifier) -> float:
    """Seconds of one forward of the text encoder over all class prompts (no gradients)."""
    import time

    with torch.no_grad():
        t0 = time.perf_counter()
        head._encode()
        if head.tokens.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def _registered() -> None:  # keep the image-side names a text method delegates to in step with PEFT_METHODS
    missing = [n for n in SHARED_METHODS if n not in PEFT_METHODS]
    if missing:
        raise RuntimeError(f"text-side methods {missing} have no image-side method of that name.")


_registered()
__all__ = ["TEXT_METHODS", "TextClassifier", "TextFeatureClassifier", "TextPeftOptions", "apply_text_peft",
           "build_text_head", "check_text", "fixed_text_head", "is_text_parameter", "text_named_parameters",
           "text_step_cost", "text_trains", "PeftModule"]
