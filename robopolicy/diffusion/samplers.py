"""Deterministic samplers that run on a :class:`DenoiserView` alone.

All work in the view's variance-exploding coordinate ``x = x0 + sigma * eps`` and take a
descending schedule ``sigmas`` (n + 1,) (usually ``view.sigmas(n)``, ending in 0; a partial
schedule ending above 0 is fine, e.g. for RTI warm starts)::

    x_init (B, H, Da) at sigmas[0]  ->  x (B, H, Da) at sigmas[-1]   (= x0 when it ends in 0)

``x0_clip`` clamps each x0_hat to [-c, c] (Diffusion Policy's ``clip_sample``). DDIM keeps
the unclipped noise direction, exactly as diffusers' ``DDIMScheduler`` (eta = 0) does, so
DDIM on a VP view equals diffusers' DDIM; Euler / Heun / DPM-Solver++ use the clipped x0.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import torch

from robopolicy.diffusion.view import DenoiserView


class SamplerMethod(str, enum.Enum):
    DDIM = "ddim"
    EULER = "euler"
    HEUN = "heun"
    DPMPP_2M = "dpmpp_2m"


def _clip(x0: torch.Tensor, c: float | None) -> torch.Tensor:
    return x0 if c is None else x0.clamp(-c, c)


def sample_ddim(view: DenoiserView, cond: Any, x: torch.Tensor, sigmas: torch.Tensor, x0_clip=None) -> torch.Tensor:
    """DDIM (eta = 0): ``x' = clip(x0) + sigma' * (x - x0) / sigma``; one model call per step."""
    s = [float(v) for v in sigmas]
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        x0 = view.denoise(x, sigma, cond)
        x = _clip(x0, x0_clip) + (sigma_next / sigma) * (x - x0)
    return x


def sample_euler(view: DenoiserView, cond: Any, x: torch.Tensor, sigmas: torch.Tensor, x0_clip=None) -> torch.Tensor:
    """Euler on the probability-flow ODE ``dx/dsigma = (x - x0_hat) / sigma``."""
    s = [float(v) for v in sigmas]
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        d = (x - _clip(view.denoise(x, sigma, cond), x0_clip)) / sigma
        x = x + (sigma_next - sigma) * d
    return x


def sample_heun(view: DenoiserView, cond: Any, x: torch.Tensor, sigmas: torch.Tensor, x0_clip=None) -> torch.Tensor:
    """Heun (2nd order, EDM Alg. 1 without churn); the last step to sigma = 0 is Euler."""
    s = [float(v) for v in sigmas]
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        d = (x - _clip(view.denoise(x, sigma, cond), x0_clip)) / sigma
        x_euler = x + (sigma_next - sigma) * d
        if sigma_next == 0:
            x = x_euler
            continue
        d_next = (x_euler - _clip(view.denoise(x_euler, sigma_next, cond), x0_clip)) / sigma_next
        x = x + (sigma_next - sigma) * 0.5 * (d + d_next)
    return x


def sample_dpmpp_2m(view: DenoiserView, cond: Any, x: torch.Tensor, sigmas: torch.Tensor, x0_clip=None) -> torch.Tensor:
    """DPM-Solver++(2M): multistep 2nd order in lambda = -log(sigma), one model call per step."""
    s = [float(v) for v in sigmas]
    prev_x0, prev_h = None, None
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        x0 = _clip(view.denoise(x, sigma, cond), x0_clip)
        if sigma_next == 0:
            x = x0
            break
        h = math.log(sigma) - math.log(sigma_next)
        x0_used = x0
        if prev_x0 is not None:
            r = prev_h / h
            x0_used = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        x = (sigma_next / sigma) * x - math.expm1(-h) * x0_used
        prev_x0, prev_h = x0, h
    return x


_METHODS = {
    SamplerMethod.DDIM: sample_ddim,
    SamplerMethod.EULER: sample_euler,
    SamplerMethod.HEUN: sample_heun,
    SamplerMethod.DPMPP_2M: sample_dpmpp_2m,
}


def sample(
    view: DenoiserView,
    cond: Any,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    method: SamplerMethod | str = SamplerMethod.DDIM,
    x0_clip: float | None = None,
) -> torch.Tensor:
    """Run ``method`` from ``x_init`` (B, H, Da) at ``sigmas[0]`` down to ``sigmas[-1]``.

    Returns the chunk in the view's normalized coordinate; ``view.to_action`` gives env units.
    """
    try:
        method = SamplerMethod(method)
    except ValueError:
        raise ValueError(f"unknown sampler {method!r}; choose from {[m.value for m in SamplerMethod]}") from None
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule with >= 2 entries, got shape {tuple(sigmas.shape)}")
    if bool((sigmas[1:] > sigmas[:-1]).any()) or float(sigmas[-2]) <= 0:
        raise ValueError("sigmas must be descending with only the last entry allowed to be 0")
    return _METHODS[method](view, cond, x_init, sigmas, x0_clip)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's schedule: (n + 1,) float64, ``sigma_max`` ... ``sigma_min`` then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return torch.cat([inv**rho, torch.zeros(1, dtype=torch.float64)])
