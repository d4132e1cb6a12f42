"""Noise schedules, the common denoiser view (contract) and deterministic samplers."""

from robopolicy.diffusion.samplers import (
    InferenceDefaults,
    SamplerMethod,
    karras_sigmas,
    randn_rows,
    sample,
    sample_chunk,
)
from robopolicy.diffusion.schedulers import NoiseScheduleConfig, PredictionType, make_ddim, make_ddpm
from robopolicy.diffusion.view import DenoiserView, EDMDenoiserView, VPDenoiserView, repeat_cond

__all__ = [
    "DenoiserView",
    "EDMDenoiserView",
    "InferenceDefaults",
    "NoiseScheduleConfig",
    "PredictionType",
    "SamplerMethod",
    "VPDenoiserView",
    "karras_sigmas",
    "randn_rows",
    "make_ddim",
    "make_ddpm",
    "repeat_cond",
    "sample",
    "sample_chunk",
]
