"""Frozen backbones by provider (open_clip, timm, packaged), registered in :data:`PROVIDERS`."""
