"""Typed config of Diffusion Policy (Chi et al., 2023), both backbones.

Presets live in ``configs/policies/diffusion_*.yaml`` and hold only the fields below that are
specific to this policy (plus ``horizon`` / ``n_obs_steps`` / ``n_action_steps``); the
observation and action specs come from the dataset at training time.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robopolicy.config import apply_overrides, from_dict, load_yaml
from robopolicy.diffusion.schedulers import NoiseScheduleConfig
from robopolicy.diffusion.view import PredictionType
from robopolicy.policy import PolicyConfig
from robopolicy.types import ActionSpec, ObservationSpec


class Backbone(str, enum.Enum):
    """Noise-prediction network."""

    UNET = "unet"
    """ConditionalUnet1D: FiLM-conditioned temporal CNN (DP-C)."""
    TRANSFORMER = "transformer"
    """TransformerForDiffusion: cross-attention to time + obs tokens (DP-T)."""


class Sampler(str, enum.Enum):
    """Inference-time sampler (all run on the denoiser view)."""

    DDPM = "ddpm"
    """Ancestral DDPM (stochastic; equals diffusers' DDPMScheduler), usually 100 steps."""
    DDIM = "ddim"
    """DDIM, eta 0 (deterministic; equals diffusers' DDIMScheduler), e.g. 10 or 16 steps."""
    EULER = "euler"
    """Euler on the denoiser view (deterministic)."""
    HEUN = "heun"
    """Heun (2nd order) on the denoiser view (deterministic, 2 model calls per step)."""
    DPMPP_2M = "dpmpp_2m"
    """DPM-Solver++(2M) on the denoiser view (deterministic)."""


@dataclasses.dataclass(frozen=True)
class DiffusionInferenceOptions:
    """Inference options of Diffusion Policy (``robopolicy eval --sampler ddpm --num-inference-steps 100``).
    ``None`` means the config's value."""

    sampler: Sampler | None = None
    num_inference_steps: int | None = None
    noise: Any = None
    """Initial standard normal noise (B, N, H, Da) or (B, H, Da) instead of drawing it (tests, GPC)."""

    def __post_init__(self) -> None:
        if self.sampler is not None:
            try:
                object.__setattr__(self, "sampler", Sampler(self.sampler))
            except ValueError:
                raise ValueError(
                    f"unknown sampler {self.sampler!r}; choose from {[m.value for m in Sampler]}"
                ) from None
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(PolicyConfig):
    """Diffusion Policy. Defaults are the paper's low-dim U-Net settings (H 16, To 2, Ta 8)."""

    backbone: Backbone = Backbone.UNET
    """Which noise-prediction network: ``unet`` or ``transformer``."""

    # ---- U-Net backbone
    down_dims: tuple[int, ...] = (256, 512, 1024)
    """Channels per U-Net level; the horizon must be a multiple of 2**(len(down_dims)-1)."""
    kernel_size: int = 5
    """Temporal conv kernel size (odd)."""
    n_groups: int = 8
    """GroupNorm groups in the U-Net conv blocks (must divide every down_dim)."""
    diffusion_step_embed_dim: int = 256
    """Sinusoidal diffusion-step embedding size of the U-Net."""

    # ---- transformer backbone
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

    # ---- image encoder (used only when the obs spec has image fields)
    image_width: int = 64
    """ResNet-18 base width (64 = ResNet-18, 32 = the half-width CPU encoder)."""
    image_feature_dim: int = 64
    """Feature size per camera after the spatial-softmax head."""
    num_kp: int = 32
    """Spatial-softmax keypoints per camera."""
    crop_shape: tuple[int, int] | None = None
    """(h, w) random crop in training / center crop in eval; None: no crop."""

    # ---- noise schedule (training)
    num_train_timesteps: int = 100
    """Diffusion steps in training."""
    beta_start: float = 1e-4
    """First beta (ignored by squaredcos_cap_v2)."""
    beta_end: float = 0.02
    """Last beta (ignored by squaredcos_cap_v2)."""
    beta_schedule: str = "squaredcos_cap_v2"
    """diffusers beta schedule name."""
    clip_sample: bool = True
    """Clip the predicted clean chunk to [-1, 1] while sampling."""
    prediction_type: PredictionType = PredictionType.EPSILON
    """What the network predicts: epsilon (DP default), sample or v_prediction."""

    # ---- inference
    sampler: Sampler = Sampler.DDPM
    """Default sampler of ``predict_action_chunk``."""
    num_inference_steps: int = 100
    """Default denoising steps (100 for DDPM, e.g. 10 or 16 for DDIM)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("backbone", "sampler", "prediction_type"):
            enum_type = type(getattr(DiffusionConfig, name))
            try:
                object.__setattr__(self, name, enum_type(getattr(self, name)))
            except ValueError:
                valid = [m.value for m in enum_type]
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}") from None
        object.__setattr__(self, "down_dims", tuple(int(d) for d in self.down_dims))
        if self.crop_shape is not None:
            object.__setattr__(self, "crop_shape", tuple(int(c) for c in self.crop_shape))
        self._validate_backbone()
        self._validate_images()
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps must be in [1, num_train_timesteps={self.num_train_timesteps}], "
                f"got {self.num_inference_steps}"
            )
        for name in ("p_drop_emb", "p_drop_attn"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def _validate_backbone(self) -> None:
        if self.backbone is Backbone.UNET:
            if not self.down_dims:
                raise ValueError("down_dims must have at least one level")
            multiple = 2 ** (len(self.down_dims) - 1)
            if self.horizon % multiple:
                raise ValueError(
                    f"horizon must be a multiple of {multiple} for a U-Net with {len(self.down_dims)} levels "
                    f"(down_dims={list(self.down_dims)}), got {self.horizon}"
                )
            bad = [d for d in self.down_dims if d % self.n_groups]
            if bad:
                raise ValueError(f"down_dims {bad} are not multiples of n_groups={self.n_groups}")
            if self.kernel_size % 2 == 0:
                raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
            if self.diffusion_step_embed_dim < 4 or self.diffusion_step_embed_dim % 2:
                raise ValueError(f"diffusion_step_embed_dim must be even and >= 4, got {self.diffusion_step_embed_dim}")
        elif self.n_emb % self.n_head:
            raise ValueError(f"n_emb must be a multiple of n_head={self.n_head}, got {self.n_emb}")

    def _validate_images(self) -> None:
        if self.crop_shape is None:
            return
        if len(self.crop_shape) != 2:
            raise ValueError(f"crop_shape must be (h, w), got {self.crop_shape}")
        for f in self.obs_spec.images:
            h, w = f.shape[:2]
            if self.crop_shape[0] > h or self.crop_shape[1] > w:
                raise ValueError(f"crop_shape {self.crop_shape} is larger than image {f.key!r} ({h}, {w})")

    @property
    def noise_schedule(self) -> NoiseScheduleConfig:
        return NoiseScheduleConfig(
            self.num_train_timesteps,
            self.beta_start,
            self.beta_end,
            self.beta_schedule,
            self.clip_sample,
            self.prediction_type.value,
        )

    @classmethod
    def from_preset(
        cls,
        path: str | Path,
        obs_spec: ObservationSpec,
        action_spec: ActionSpec,
        overrides: Sequence[str] = (),
    ) -> DiffusionConfig:
        """Build from a ``configs/policies/diffusion_*.yaml`` preset plus dotted overrides.

        The preset's optional ``policy: diffusion`` entry names the policy and is dropped here.
        """
        data = load_yaml(path)
        name = data.pop("policy", "diffusion")
        if name != "diffusion":
            raise ValueError(f"{path} is a preset for policy {name!r}, not 'diffusion'")
        data = apply_overrides(data, list(overrides))
        data.update(obs_spec=obs_spec, action_spec=action_spec)
        return from_dict(cls, data)
