"""Diffusion Policy (CNN U-Net and transformer backbones). Importing registers ``"diffusion"``."""

from robopolicy.policies.diffusion.config import Backbone, DiffusionConfig, Sampler
from robopolicy.policies.diffusion.model import BACKBONES, DiffusionPolicy, register_backbone

__all__ = ["BACKBONES", "Backbone", "DiffusionConfig", "DiffusionPolicy", "Sampler", "register_backbone"]
