"""diffusers schedulers with Diffusion Policy's settings.

DDPM for training and 100-step sampling; DDIM (same betas) for few-step sampling. Both use
``squaredcos_cap_v2`` betas over 100 train steps, ``clip_sample=True`` and epsilon prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import DDIMScheduler, DDPMScheduler


@dataclass(frozen=True)
class NoiseScheduleConfig:
    """The training noise schedule (shared by the DDPM and DDIM schedulers built from it)."""

    num_train_timesteps: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "squaredcos_cap_v2"
    clip_sample: bool = True
    prediction_type: str = "epsilon"


def make_ddpm(cfg: NoiseScheduleConfig = NoiseScheduleConfig()) -> DDPMScheduler:
    """DDPM with ``variance_type='fixed_small'`` (Diffusion Policy's training scheduler)."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        variance_type="fixed_small",
        clip_sample=cfg.clip_sample,
        prediction_type=cfg.prediction_type,
    )


def make_ddim(cfg: NoiseScheduleConfig = NoiseScheduleConfig()) -> DDIMScheduler:
    """DDIM with ``set_alpha_to_one=True, steps_offset=0`` (Diffusion Policy's DDIM configs)."""
    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        clip_sample=cfg.clip_sample,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=cfg.prediction_type,
    )
