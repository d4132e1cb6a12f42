"""Diffusion Policy (CNN U-Net and transformer backbones). Importing registers ``"diffusion"``."""

from robopolicy.policies.diffusion.config import (
    DiffusionConfig,
    DiffusionInferenceOptions,
    Sampler,
    migrate_flat_config,
)
from robopolicy.policies.diffusion.model import BACKBONES, DiffusionPolicy, register_backbone

__all__ = [
    "BACKBONES",
    "DiffusionConfig",
    "DiffusionInferenceOptions",
    "DiffusionPolicy",
    "Sampler",
    "migrate_flat_config",
    "register_backbone",
]
