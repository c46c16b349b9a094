"""open_clip's CLIP models as backbones (provider ``open_clip``), with the text tower for
text initialisation and zero-shot; QuickGELU is decided from the pretrained tag or file."""

from __future__ import annotations

import contextlib
import difflib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tailtune.config import ModelConfig
from tailtune.data.transforms import Preprocess
from tailtune.errors import CheckpointError, ConfigError
from tailtune.models.backbones.base import (
    PROVIDERS,
    Backbone,
    check_local,
    download_failed,
    is_local_file,
)
from tailtune.models.backbones.clip_files import (
    OPENAI_META,
    activation_of_file,
    openai_meta_free,
    read_state_dict,
)

_OPEN_CLIP_CONFIGS = Path(__file__).parents[1] / "open_clip_configs"
# open_clip is imported where it is used: it takes seconds to import, and a run needs only its own provider.


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
    (rules in clip_files.py: a TorchScript archive's module classes, OpenAI's metadata
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


def _quick_gelu_hint(cfg: ModelConfig) -> str:
    """What a failed download of OpenAI's weights should add: where tailtune sees their QuickGELU."""
    return (" OpenAI's weights were trained with QuickGELU: tailtune sees it in OpenAI's own .pt "
            "files and in the Hugging Face cache; for a file re-saved elsewhere add "
            "model.quick_gelu=true." if _openai_tag(cfg) else "")


def _openai_tag(cfg: ModelConfig) -> bool:
    """Whether ``cfg`` asks (quick_gelu=auto) for a pretrained tag trained with QuickGELU."""
    if cfg.provider != "open_clip" or cfg.quick_gelu != "auto":
        return False
    import open_clip

    return bool((open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained) or {}).get("quick_gelu", False))


class OpenClipBackbone(Backbone):
    """A CLIP model from open_clip; a ViT's features are read before the image projection
    (after it once :meth:`tune_image_projection` put the projection back into the image path).

    A CLIP ResNet (RN50, RN101, ...: open_clip's ``ModifiedResNet``) has no separate image
    projection: its attention pooling (``attnpool``, whose ``c_proj`` maps into the joint
    space) ends the image tower, and the features are that pooling's output, as in the
    reference (LIFT models/peft_rn.py:Peft_RN, LIFT-plus models/models.py:PEFT_RN). Such a
    backbone is a ``cnn`` (``image_proj`` is None), and text embeddings are its features as
    they are (LIFT trainer.py:init_head_text_feat maps through the projection for ViTs only).
    """

    kind = "vit"
    has_text = True
    projected = False  # True: the features are CLIP's joint-space image embeddings

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
            check_local(pretrained)
            if not is_local_file(pretrained):
                tags = open_clip.list_pretrained_tags_by_model(cfg.name)
                if tags and pretrained not in tags:
                    raise ConfigError(f"open_clip model {cfg.name!r} has no pretrained tag {pretrained!r}; "
                                      f"known tags: {', '.join(tags)} (or a local checkpoint path, or 'none').")
        kwargs = {"force_image_size": cfg.resolution} if cfg.resolution else {}
        local = bool(pretrained) and is_local_file(pretrained)
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
        if not pretrained and torch.empty(0).device.type == "meta":
            kwargs["device"] = "meta"  # built under torch.device("meta"), for its shapes alone (parameter counts)
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
                raise download_failed(cfg, e, _quick_gelu_hint(cfg)) from None
            if isinstance(e, OSError):
                raise
            detail = " ".join(str(e).split())
            raise CheckpointError(f"checkpoint {pretrained} does not fit open_clip model {cfg.name!r} "
                                  f"({detail[:400]}{'...' if len(detail) > 400 else ''}); "
                                  "check model.name against the checkpoint.") from None
        visual = model.visual
        if hasattr(visual, "attnpool"):  # a CLIP ResNet: the attention pooling projects into the joint space
            self.kind, self.pool_path = "cnn", "attnpool"
            self.image_proj = None
            self.feature_dim = visual.output_dim
        else:
            self.image_proj = nn.Parameter(visual.proj.detach().clone(), requires_grad=False)
            visual.proj = None  # features before the projection, as the method reads them
            self.feature_dim = self.image_proj.shape[0]
        self.clip = model
        pp = visual.preprocess_cfg
        size = pp["size"][0] if isinstance(pp["size"], (tuple, list)) else pp["size"]
        self.preprocess = Preprocess(int(size), tuple(pp["mean"]), tuple(pp["std"]), pp.get("interpolation", "bicubic"))
        self.tokenizer = open_clip.get_tokenizer(cfg.name)
        self.info = {"provider": "open_clip", "name": cfg.name, "pretrained": cfg.pretrained or "none"}

    @property
    def encoder(self) -> nn.Module:
        return self.clip.visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.visual(images)

    def tune_image_projection(self) -> nn.Parameter:
        """Put the image projection back into the image path as a trainable copy (proj_tuning).

        From then on the features are ``pooled @ proj`` (CLIP's joint space, width
        ``embed_dim``): the projection lives in the encoder (``visual.proj``), so it saves and
        exports with it; ``image_proj`` keeps the frozen original.
        """
        if self.image_proj is None:
            raise ConfigError(f"peft.method=proj_tuning: {self.info['name']} is a CLIP ResNet, whose attention pooling "
                              "maps into the joint space itself (no separate image projection to tune); use "
                              "ssf_pool or bitfit on it.")
        proj = nn.Parameter(self.image_proj.detach().clone())
        self.clip.visual.proj = proj
        self.projected = True
        self.feature_dim = proj.shape[1]
        return proj

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """Normalised text embeddings in CLIP's joint space (256 prompts at a time)."""
        device = self.clip.logit_scale.device
        out = []
        for i in range(0, len(prompts), 256):
            tokens = self.tokenizer(prompts[i:i + 256]).to(device)
            out.append(F.normalize(self.clip.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def text_to_features(self, text: torch.Tensor) -> torch.Tensor:
        """Through the transpose of the image projection, then normalised (the method's mapping);
        features in the joint space already (a CLIP ResNet's; a ViT's under proj_tuning) take the
        text as it is."""
        if self.projected or self.image_proj is None:
            return F.normalize(text.float(), dim=-1)
        return F.normalize(text.float() @ self.image_proj.float().t(), dim=-1)

    def zeroshot_logits(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        img = self(images).float()
        return self.clip.logit_scale.exp().float() * F.normalize(self.to_joint(img), dim=-1) @ text.t()

    def joint_projection(self) -> torch.Tensor:
        """The (D, E) map from the features to CLIP's joint space: the frozen image projection, or
        the identity where the features are joint-space embeddings already (a CLIP ResNet's
        attention pooling; a ViT under proj_tuning)."""
        if self.projected or self.image_proj is None:
            return torch.eye(self.feature_dim, device=self.clip.logit_scale.device)
        return self.image_proj

    def to_joint(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (features) in CLIP's joint space (see :meth:`joint_projection`)."""
        if self.projected or self.image_proj is None:
            return x
        return x @ self.image_proj.to(x.dtype)


@PROVIDERS.register("open_clip", help="open_clip CLIP models (ViTs and ResNets): model.name=ViT-B-16|RN50|RN101 "
                                           "model.pretrained=openai|none|FILE")
def _open_clip(cfg: ModelConfig) -> Backbone:
    return OpenClipBackbone(cfg)
