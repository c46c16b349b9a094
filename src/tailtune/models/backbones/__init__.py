"""Frozen backbones by provider (open_clip, timm, packaged), registered in :data:`PROVIDERS`.

Importing the package imports every provider module, which registers it.
"""

from tailtune.models.backbones import open_clip, packaged, timm  # noqa: F401  (registers the providers)
