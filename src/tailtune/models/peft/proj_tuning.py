"""Projection tuning: CLIP's image projection trains (LIFT+ ``proj_tuning``).

tailtune's classifier reads an open_clip model's features *before* the image projection (LIFT's
protocol: the text initialisation maps the class text embeddings through the projection's
transpose; models/backbones/open_clip.py), so the projection is not in the image path at all.
This method puts it back there as a trainable copy (``OpenClipBackbone.tune_image_projection``):
the features become CLIP's joint-space image embeddings ``pooled @ proj`` (width 512 on
ViT-B/16 in place of 768), the classifier is built for that width, and the text initialisation
takes the class text embeddings as they are (zero-shot CLIP's classifier). The projection lives
in the encoder (``clip.visual.proj``), so it is saved, reloaded and exported with it, and the
feature cache can still cut in front of it (after the last block).

LIFT+ (LIFT-plus utils/config.py ``proj_tuning``, trainer.py and models/models.py
``unfreeze_image_proj`` / ``unfreeze_text_proj``) trains the image and the text projection,
and reads both only where the text encoder is the classifier; with a learned classifier its
projections are never used. The text projection (``clip.text_projection``, 512 x 512 on
ViT-B/16) matters only for a classifier made of the text encoder, which this method does not
build; here it stays frozen, so the count is the image projection's alone (393,216 on ViT-B/16,
LIFT+'s 655,360 with the text projection).
"""

from __future__ import annotations

from tailtune.errors import ConfigError
from tailtune.models.peft.base import PEFT_METHODS, PeftMethod


@PEFT_METHODS.register("proj_tuning")
class ProjTuning(PeftMethod):
    """CLIP's image projection trains; features become the joint-space embeddings (open_clip ViTs)."""

    kinds = ("vit",)
    identity_at_init = False  # the classifier reads the projected features, of another width
    stage = 0  # picks an existing tensor; sets the feature width before clip_adapter (stage 6) reads it

    def check(self, backbone, name, cfg):
        super().check(backbone, name, cfg)
        if not callable(getattr(backbone, "tune_image_projection", None)):
            raise ConfigError(f"peft.method={name!r} trains CLIP's image projection, which "
                              f"{backbone.info['provider']} model {backbone.info['name']!r} does not have: "
                              "its features go to the classifier as they are. Use an open_clip ViT "
                              "(model.provider=open_clip) or drop proj_tuning from peft.method.")

    def apply(self, backbone, cfg, num_classes):
        backbone.tune_image_projection()
