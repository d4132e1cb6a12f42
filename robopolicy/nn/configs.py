"""Configs of the reusable network blocks, for any policy to hold as parts of its own config.

* ``backbone:`` a :class:`BackboneConfig` chosen by its ``kind`` (registered types):
  ``{kind: unet, down_dims: [256, 512, 1024], ...}`` (:class:`UnetConfig`) or
  ``{kind: transformer, n_layer: 8, ...}`` (:class:`TransformerConfig`). A field of another kind
  is refused by name.
* ``obs_encoder:`` an :class:`ObsEncoderConfig` (ResNet-18 GroupNorm + spatial softmax per camera).

No policy is imported here; the builders live with each policy (a policy decides how its
backbone is conditioned).
"""

from __future__ import annotations

import dataclasses

from robopolicy.config import TaggedConfig
from robopolicy.types import ObservationSpec


@dataclasses.dataclass(frozen=True)
class BackboneConfig(TaggedConfig):
    """A noise-prediction (denoising) network over action chunks; members register a kind."""

    family = "backbone"

    def check_horizon(self, horizon: int) -> None:
        """Raise ValueError if this backbone cannot take chunks of ``horizon`` steps."""


@BackboneConfig.register("unet")
@dataclasses.dataclass(frozen=True)
class UnetConfig(BackboneConfig):
    """ConditionalUnet1D: FiLM-conditioned temporal CNN (Diffusion Policy's DP-C)."""

    down_dims: tuple[int, ...] = (256, 512, 1024)
    """Channels per level; the horizon must be a multiple of 2**(len(down_dims)-1)."""
    kernel_size: int = 5
    """Temporal conv kernel size (odd)."""
    n_groups: int = 8
    """GroupNorm groups in the conv blocks (must divide every down_dim)."""
    diffusion_step_embed_dim: int = 256
    """Sinusoidal diffusion-step embedding size."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "down_dims", tuple(int(d) for d in self.down_dims))
        if not self.down_dims:
            raise ValueError("down_dims must have at least one level")
        bad = [d for d in self.down_dims if d % self.n_groups]
        if bad:
            raise ValueError(f"down_dims {bad} are not multiples of n_groups={self.n_groups}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        if self.diffusion_step_embed_dim < 4 or self.diffusion_step_embed_dim % 2:
            raise ValueError(f"diffusion_step_embed_dim must be even and >= 4, got {self.diffusion_step_embed_dim}")

    def check_horizon(self, horizon: int) -> None:
        multiple = 2 ** (len(self.down_dims) - 1)
        if horizon % multiple:
            raise ValueError(
                f"horizon must be a multiple of {multiple} for a U-Net with {len(self.down_dims)} levels "
                f"(down_dims={list(self.down_dims)}), got {horizon}"
            )


@BackboneConfig.register("transformer")
@dataclasses.dataclass(frozen=True)
class TransformerConfig(BackboneConfig):
    """TransformerForDiffusion: cross-attention to time + obs tokens (Diffusion Policy's DP-T)."""

    n_layer: int = 8
    """Transformer decoder layers."""
    n_head: int = 4
    """Attention heads (must divide n_emb)."""
    n_emb: int = 256
    """Token width."""
    p_drop_emb: float = 0.0
    """Dropout on token embeddings."""
    p_drop_attn: float = 0.3
    """Dropout inside the decoder layers."""
    causal_attn: bool = True
    """Action token t attends to actions <= t and to obs tokens j <= t (DP's masks)."""
    token_time: bool = False
    """Each action token also embeds its own noise level, so the network takes per-token
    timesteps (B, H): what training-time action conditioning needs (``train_max_delay``)."""

    def __post_init__(self) -> None:
        if self.n_layer < 1:
            raise ValueError(f"n_layer must be >= 1, got {self.n_layer}")
        if self.n_head < 1 or self.n_emb % self.n_head:
            raise ValueError(f"n_emb must be a multiple of n_head={self.n_head}, got {self.n_emb}")
        for name in ("p_drop_emb", "p_drop_attn"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ObsEncoderConfig:
    """Per-step observation features: low-dim fields concatenated as they are, and per camera
    (optional crop) -> ResNet-18 (GroupNorm) -> spatial softmax -> Linear. The image fields are
    used only when the obs spec has images."""

    image_width: int = 64
    """ResNet-18 base width (64 = ResNet-18, 32 = the half-width CPU encoder)."""
    image_feature_dim: int = 64
    """Feature size per camera after the spatial-softmax head."""
    num_kp: int = 32
    """Spatial-softmax keypoints per camera."""
    crop_shape: tuple[int, int] | None = None
    """(h, w) random crop in training / center crop in eval; None: no crop."""
    output_activation: str = "none"
    """After each camera's Linear: ``none`` (Diffusion Policy) or ``relu`` (lerobot's DiffusionRgbEncoder)."""

    def __post_init__(self) -> None:
        if self.crop_shape is not None:
            object.__setattr__(self, "crop_shape", tuple(int(c) for c in self.crop_shape))
            if len(self.crop_shape) != 2 or min(self.crop_shape) < 1:
                raise ValueError(f"crop_shape must be (h, w) with h, w >= 1, got {self.crop_shape}")
        if self.output_activation not in ("none", "relu"):
            raise ValueError(f"output_activation must be 'none' or 'relu', got {self.output_activation!r}")
        for name in ("image_width", "image_feature_dim", "num_kp"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def tiny(cls, obs_spec: ObservationSpec) -> ObsEncoderConfig:
        """A very small encoder for contract tests: width 8, 16 features, 8 keypoints, a crop
        of 7/8 of the smallest camera (none without cameras)."""
        crop = None
        if obs_spec.images:
            h = min(f.shape[0] for f in obs_spec.images)
            w = min(f.shape[1] for f in obs_spec.images)
            crop = (max(1, h - h // 8), max(1, w - w // 8))
        return cls(image_width=8, image_feature_dim=16, num_kp=8, crop_shape=crop)

    def check_images(self, obs_spec: ObservationSpec) -> None:
        """Raise ValueError if the crop does not fit every camera of ``obs_spec``."""
        if self.crop_shape is None:
            return
        for f in obs_spec.images:
            h, w = f.shape[:2]
            if self.crop_shape[0] > h or self.crop_shape[1] > w:
                raise ValueError(f"crop_shape {self.crop_shape} is larger than image {f.key!r} ({h}, {w})")
