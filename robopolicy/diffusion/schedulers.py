"""diffusers schedulers with Diffusion Policy's settings.

DDPM for training and 100-step sampling; DDIM (same betas) for few-step sampling. Both use
``squaredcos_cap_v2`` betas over 100 train steps, ``clip_sample=True`` and epsilon prediction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from diffusers import DDIMScheduler, DDPMScheduler

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class PredictionType(str, enum.Enum):
    """What a variance-preserving network predicts."""

    EPSILON = "epsilon"
    SAMPLE = "sample"
    V_PREDICTION = "v_prediction"


@dataclass(frozen=True)
class NoiseScheduleConfig:
    """The training noise schedule of a VP (DDPM-trained) policy, shared by the DDPM and DDIM
    schedulers and the denoiser view built from it. A policy config holds it as ``noise:``."""

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

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "prediction_type", PredictionType(self.prediction_type))
        except ValueError:
            valid = [m.value for m in PredictionType]
            raise ValueError(f"prediction_type must be one of {valid}, got {self.prediction_type!r}") from None
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {list(BETA_SCHEDULES)}, got {self.beta_schedule!r}")


def make_ddpm(cfg: NoiseScheduleConfig = NoiseScheduleConfig()) -> DDPMScheduler:
    """DDPM with ``variance_type='fixed_small'`` (Diffusion Policy's training scheduler)."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        variance_type="fixed_small",
        clip_sample=cfg.clip_sample,
        prediction_type=cfg.prediction_type.value,
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
        prediction_type=cfg.prediction_type.value,
    )
