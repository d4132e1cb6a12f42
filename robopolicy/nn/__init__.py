"""Reusable network blocks: 1-D U-Net, diffusion transformer, observation encoders (their
configs, for policies to hold as parts: :mod:`robopolicy.nn.configs`)."""

from robopolicy.nn.embeddings import SinusoidalPosEmb
from robopolicy.nn.obs_encoders import CropTransform, ImageEncoder, MultiModalObsEncoder, ResNet18Trunk, SpatialSoftmax
from robopolicy.nn.transformer import TransformerForDiffusion
from robopolicy.nn.unet1d import ConditionalUnet1D

__all__ = [
    "ConditionalUnet1D",
    "CropTransform",
    "ImageEncoder",
    "MultiModalObsEncoder",
    "ResNet18Trunk",
    "SinusoidalPosEmb",
    "SpatialSoftmax",
    "TransformerForDiffusion",
]
