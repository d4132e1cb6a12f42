"""Typed config of Diffusion Policy (Chi et al., 2023), both backbones, made of parts.

Presets live in ``configs/policies/diffusion_*.yaml`` and hold only the fields below (plus
``horizon`` / ``n_obs_steps`` / ``n_action_steps`` and the normalization fields of
:class:`~robopolicy.policy.PolicyConfig`); the observation and action specs come from the
dataset at training time::

    backbone: {kind: unet, down_dims: [256, 512, 1024], kernel_size: 5, n_groups: 8, diffusion_step_embed_dim: 256}
    obs_encoder: {image_width: 64, image_feature_dim: 64, num_kp: 32, crop_shape: [76, 76]}
    noise: {num_train_timesteps: 100, beta_schedule: squaredcos_cap_v2, clip_sample: true, prediction_type: epsilon}
    inference: {sampler: ddpm, num_inference_steps: 100}

The parts are shared with later policies: :mod:`robopolicy.nn.configs` (backbones, obs encoder),
:class:`~robopolicy.diffusion.schedulers.NoiseScheduleConfig`,
:class:`~robopolicy.diffusion.samplers.InferenceDefaults`. Checkpoints written before the parts
(a flat config) load through :func:`migrate_flat_config`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from robopolicy.data.normalizer import ACTION_KEY, NormMode
from robopolicy.diffusion.samplers import InferenceDefaults
from robopolicy.diffusion.samplers import SamplerMethod as Sampler
from robopolicy.diffusion.schedulers import NoiseScheduleConfig
from robopolicy.nn.configs import BackboneConfig, ObsEncoderConfig, UnetConfig
from robopolicy.policy import PolicyConfig, config_part


@dataclasses.dataclass(frozen=True)
class DiffusionInferenceOptions:
    """Inference options of Diffusion Policy (``robopolicy eval --sampler ddpm --num-inference-steps 100``).
    ``None`` means the config's value (``inference:``)."""

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

    preset_name: ClassVar[str] = "diffusion"
    parts: ClassVar[dict[str, type]] = {
        "backbone": BackboneConfig,
        "obs_encoder": ObsEncoderConfig,
        "noise": NoiseScheduleConfig,
        "inference": InferenceDefaults,
    }

    backbone: BackboneConfig = dataclasses.field(default_factory=UnetConfig)
    """Noise-prediction network, by kind: ``{kind: unet, ...}`` or ``{kind: transformer, ...}``."""
    obs_encoder: ObsEncoderConfig = dataclasses.field(default_factory=ObsEncoderConfig)
    """Per-step observation features (the image fields are used only when there are images)."""
    noise: NoiseScheduleConfig = dataclasses.field(default_factory=NoiseScheduleConfig)
    """Training noise schedule (DDPM betas, ``clip_sample``, ``prediction_type``)."""
    inference: InferenceDefaults = dataclasses.field(default_factory=InferenceDefaults)
    """Default sampler and steps of ``predict`` (a call's options override them)."""
    train_max_delay: int = 0
    """Training-time action conditioning (Black et al., arXiv 2512.05964): each training row
    draws an inference delay d uniformly from ``0 .. train_max_delay`` control ticks; the d chunk
    positions from the newest observation on (indices ``To-1 .. To-2+d``, the actions that would
    execute while inference runs) get the clean ground truth at timestep 0 and are left out of the
    loss. At inference the RTC actor's ``trained`` mode gives the executed prefix the same way (no
    guidance, no backward pass). Needs ``backbone: {kind: transformer, token_time: true}``; 0: off."""

    def __post_init__(self) -> None:
        super().__post_init__()
        with config_part("backbone"):
            self.backbone.check_horizon(self.horizon)
        if self.train_max_delay < 0:
            raise ValueError(f"train_max_delay must be >= 0, got {self.train_max_delay}")
        if self.train_max_delay > 0:
            if not getattr(self.backbone, "token_time", False):
                raise ValueError(
                    "train_max_delay > 0 (training-time action conditioning) needs per-token noise levels: "
                    f"backbone kind transformer with token_time: true (got kind {self.backbone.kind!r}"
                    f"{'' if self.backbone.kind != 'transformer' else ', token_time false'}); the U-Net takes "
                    "one timestep per chunk"
                )
            if self.train_max_delay > self.horizon - self.n_obs_steps:
                raise ValueError(
                    f"train_max_delay must leave a noisy action after the prefix: at most horizon - n_obs_steps "
                    f"= {self.horizon - self.n_obs_steps}, got {self.train_max_delay}"
                )
        steps, train_steps = self.inference.num_inference_steps, self.noise.num_train_timesteps
        if steps > train_steps:
            raise ValueError(
                f"inference.num_inference_steps must be in [1, noise.num_train_timesteps={train_steps}], got {steps}"
            )
        if self.normalization.get(ACTION_KEY) is NormMode.GAUSSIAN and self.noise.clip_sample:
            raise ValueError(
                "normalization.action: 'gaussian' puts many actions outside [-1, 1], where noise.clip_sample "
                "clips them while sampling; set noise.clip_sample: false (or normalize actions by limits)"
            )

    @classmethod
    def migrate_dict(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Called by :func:`robopolicy.config.from_dict`: a flat (format 1) dict becomes parts."""
        return migrate_flat_config(data)


# ---------------------------------------------------------------------- format 1 (flat) configs
_FLAT_BACKBONE = {
    "unet": ("down_dims", "kernel_size", "n_groups", "diffusion_step_embed_dim"),
    "transformer": ("n_layer", "n_head", "n_emb", "p_drop_emb", "p_drop_attn", "causal_attn"),
}
_FLAT_PARTS = {
    "obs_encoder": ("image_width", "image_feature_dim", "num_kp", "crop_shape", "output_activation"),
    "noise": ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample", "prediction_type"),
    "inference": ("sampler", "num_inference_steps"),
}


def migrate_flat_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A flat (format 1) Diffusion Policy config dict -> the parts layout; other dicts unchanged.

    Format 1 held every field at top level, ``backbone`` a kind name, and always wrote both
    backbones' fields: those of the backbone not chosen had no effect and are dropped. A dict
    that mixes flat keys with parts is refused, naming the flat key's new place."""
    data = dict(data)
    flat_backbone = {key: kind for kind, keys in _FLAT_BACKBONE.items() for key in keys}
    flat_parts = {key: part for part, keys in _FLAT_PARTS.items() for key in keys}
    flat = [k for k in data if k in flat_backbone or k in flat_parts]
    if not flat and not isinstance(data.get("backbone"), str):
        return data
    parts = [p for p in ("backbone", *_FLAT_PARTS) if p in data and not isinstance(data[p], str)]
    if flat and parts:
        key = flat[0]
        new_place = f"{flat_parts.get(key, 'backbone')}.{key}"
        raise ValueError(f"{key} is a flat (old) key beside the {parts[0]} part: write it as {new_place}")
    kind = data.pop("backbone", "unet")
    backbone = {"kind": kind}
    for key, owner in flat_backbone.items():
        if key in data:
            value = data.pop(key)
            if owner == kind:
                backbone[key] = value
    data["backbone"] = backbone
    for part, keys in _FLAT_PARTS.items():
        moved = {k: data.pop(k) for k in keys if k in data}
        if moved:
            data[part] = moved
    return data
