"""Samplers that run on a :class:`DenoiserView` alone, and :func:`sample_chunk`, the one
entry point every denoising policy (and RTI, GPC, the controller) samples through.

All work in the view's variance-exploding coordinate ``x = x0 + sigma * eps`` on x of any
rank (B, ...) and take a descending schedule ``sigmas`` (n + 1,) (usually ``view.sigmas(n)``,
ending in 0; a partial schedule ending above 0 is fine)::

    x_init (B, ...) at sigmas[0]  ->  x (B, ...) at sigmas[-1]   (= x0 when it ends in 0)

DDIM (= first-order DPM-Solver, BESO's "ddim"), Euler, Heun and DPM-Solver++(2M) are
deterministic; Euler ancestral draws fresh noise each step. DDPM is ancestral: each step draws
the posterior ``q(x_prev | x, x0_hat)`` of the VE chain, which is exactly DDPM's posterior
(``fixed_small`` variance) mapped to this coordinate, so on a VP view it equals diffusers'
``DDPMScheduler`` for the same per-step noise.

``x0_clip`` clamps each x0_hat to [-c, c] (Diffusion Policy's ``clip_sample``). DDIM keeps
the unclipped noise direction, exactly as diffusers' ``DDIMScheduler`` (eta = 0) does, so
DDIM on a VP view equals diffusers' DDIM; Euler / Heun / DPM-Solver++ use the clipped x0.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import torch

from robopolicy.diffusion.view import DenoiserView

# one torch.Generator, a list with one per batch row (diffusers' convention), or None
Generators = torch.Generator | list[torch.Generator] | None


def randn_rows(shape: tuple[int, ...], generator: Generators, device: Any = "cpu", dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape = (B, ...)``; with a list of generators row i comes from
    ``generator[i]`` alone (so a batch equals single calls). Drawn on the generator's device."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]).to(
            device
        )
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


class SamplerMethod(str, enum.Enum):
    """A sampler on the denoiser view."""

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
    DPM_SOLVER_1 = "dpm_solver_1"
    """First-order DPM-Solver in log-sigma, BESO's "ddim": ``x' = (s'/s) x + (1 - s'/s) D(x; s)``.
    The same update as ``ddim`` on this coordinate (tested equal); the name BESO's papers use."""
    EULER_ANCESTRAL = "euler_ancestral"
    """Euler ancestral (k-diffusion; stochastic): an Euler step to sigma_down, then fresh noise of
    std sigma_up, with sigma_down^2 + sigma_up^2 = sigma'^2. BESO's kitchen evaluation sampler."""


@dataclasses.dataclass(frozen=True)
class InferenceDefaults:
    """A denoising policy's default sampling (``inference:`` in its config); a call's inference
    options override them."""

    sampler: SamplerMethod = SamplerMethod.DDPM
    """Default sampler of ``predict``."""
    num_inference_steps: int = 100
    """Default denoising steps (100 for DDPM, e.g. 10 or 16 for DDIM)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "sampler", SamplerMethod(self.sampler))
        except ValueError:
            valid = [m.value for m in SamplerMethod]
            raise ValueError(f"sampler must be one of {valid}, got {self.sampler!r}") from None
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")


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


def sample_ddpm(
    view: DenoiserView,
    cond: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    x0_clip=None,
    generator: Generators = None,
    step_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ancestral DDPM: ``x' = x0c + r (x - x0c) + sqrt(sigma'^2 (1 - r)) z`` with ``r = sigma'^2 / sigma^2``
    and ``x0c = clip(x0_hat)``; no noise on the step to sigma' = 0. One model call per step.

    ``z`` is drawn from ``generator`` step by step, or read from ``step_noise`` (n_noisy, B, ...)
    (:func:`ddpm_step_noise` draws the same numbers ahead, for a loop captured in a CUDA graph)."""
    s = [float(v) for v in sigmas]
    k = 0
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        x0 = _clip(view.denoise(x, sigma, cond), x0_clip)
        r = (sigma_next / sigma) ** 2
        x = x0 + r * (x - x0)
        if sigma_next > 0:
            var = max(sigma_next**2 * (1 - r), 1e-20 * (1 + sigma_next**2))  # diffusers' 1e-20 floor, VE units
            if step_noise is None:
                z = randn_rows(tuple(x.shape), generator, x.device, x.dtype)
            else:
                z = step_noise[k]
            x = x + math.sqrt(var) * z
            k += 1
    return x


def sample_euler_ancestral(
    view: DenoiserView,
    cond: Any,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    x0_clip=None,
    generator: Generators = None,
    step_noise: torch.Tensor | None = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """Euler ancestral: ``sigma_up = min(s', eta * sqrt(s'^2 (s^2 - s'^2) / s^2))``,
    ``sigma_down = sqrt(s'^2 - sigma_up^2)``; ``x' = x + (sigma_down - s) (x - x0) / s + sigma_up z``.
    No noise on the step to 0 (it returns x0). ``z`` from ``generator`` (or ``step_noise``), drawn in
    the same order as :func:`sample_ddpm` draws, so :func:`ddpm_step_noise` serves both."""
    s = [float(v) for v in sigmas]
    k = 0
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        x0 = _clip(view.denoise(x, sigma, cond), x0_clip)
        if sigma_next == 0:
            x = x0
            continue
        up = min(sigma_next, eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0)))
        down = math.sqrt(max(sigma_next**2 - up**2, 0.0))
        x = x + (down - sigma) * (x - x0) / sigma
        z = randn_rows(tuple(x.shape), generator, x.device, x.dtype) if step_noise is None else step_noise[k]
        x = x + up * z
        k += 1
    return x


def ddpm_step_noise(sigmas: torch.Tensor, shape: tuple[int, ...], generator: Generators, device: Any) -> torch.Tensor:
    """The noise :func:`sample_ddpm` would draw from ``generator`` on ``sigmas``, drawn ahead in
    the same order: (n_noisy, *shape), n_noisy = the steps that end above sigma 0."""
    n = int((torch.as_tensor(sigmas)[1:] > 0).sum())
    if n == 0:
        return torch.zeros((0, *shape), device=device)
    return torch.stack([randn_rows(shape, generator, device) for _ in range(n)])


_METHODS = {
    SamplerMethod.DDIM: sample_ddim,
    SamplerMethod.EULER: sample_euler,
    SamplerMethod.HEUN: sample_heun,
    SamplerMethod.DPMPP_2M: sample_dpmpp_2m,
    SamplerMethod.DPM_SOLVER_1: sample_ddim,
}
STOCHASTIC = (SamplerMethod.DDPM, SamplerMethod.EULER_ANCESTRAL)
"""Samplers that draw noise at each step (from the generators, or ``step_noise`` drawn ahead)."""


def _check_schedule(sigmas: torch.Tensor) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas)
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule with >= 2 entries, got shape {tuple(sigmas.shape)}")
    if bool((sigmas[1:] > sigmas[:-1]).any()) or float(sigmas[-2]) <= 0:
        raise ValueError("sigmas must be descending with only the last entry allowed to be 0")
    return sigmas


def _method(method: SamplerMethod | str) -> SamplerMethod:
    try:
        return SamplerMethod(method)
    except ValueError:
        raise ValueError(f"unknown sampler {method!r}; choose from {[m.value for m in SamplerMethod]}") from None


def sample(
    view: DenoiserView,
    cond: Any,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    method: SamplerMethod | str = SamplerMethod.DDIM,
    x0_clip: float | None = None,
    generator: Generators = None,
    step_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``method`` from ``x_init`` (B, ...) at ``sigmas[0]`` down to ``sigmas[-1]``.

    Returns the chunk in the view's normalized coordinate; ``view.to_action`` gives env units.
    ``generator`` (or ``step_noise`` drawn ahead) feeds the ancestral (DDPM) steps only.
    """
    method, sigmas = _method(method), _check_schedule(sigmas)
    if method is SamplerMethod.DDPM:
        return sample_ddpm(view, cond, x_init, sigmas, x0_clip, generator, step_noise)
    if method is SamplerMethod.EULER_ANCESTRAL:
        return sample_euler_ancestral(view, cond, x_init, sigmas, x0_clip, generator, step_noise)
    return _METHODS[method](view, cond, x_init, sigmas, x0_clip)


def sample_chunk(
    view: DenoiserView,
    cond: Any,
    *,
    batch: int | None = None,
    x_init: torch.Tensor | None = None,
    sigma_start: float | None = None,
    method: SamplerMethod | str = SamplerMethod.DDIM,
    steps: int = 10,
    noise: torch.Tensor | None = None,
    generator: Generators = None,
    x0_clip: float | None = None,
    device: Any = "cpu",
    step_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One normalized chunk (B, *view.action_shape) by ``method`` in ``steps`` model calls.

    * Cold start (``x_init`` None): from standard normal ``noise`` (drawn from ``generator`` for
      ``batch`` rows if not given) mapped to the prior at the top of ``view.sigmas(steps)``.
    * Warm start: ``x_init`` (B, ...) is the iterate at ``sigma_start`` (RTI passes its shifted
      previous chunk) and ``steps`` steps of ``view.sigmas(steps, sigma_start)`` run down to 0.
      ``sigma_start`` None means the top of the cold schedule.

    With a list of generators, row b's noise (initial and ancestral) comes from ``generator[b]``
    alone. Env units: ``view.to_action(result, snap=True)``.
    """
    if x_init is None:
        sigmas = view.sigmas(steps) if sigma_start is None else view.sigmas(steps, sigma_start)
        if noise is None:
            if batch is None:
                raise ValueError("sample_chunk needs batch, noise or x_init")
            noise = randn_rows((batch, *view.action_shape), generator, device)
        x = view.noise_to_x(noise, float(sigmas[0]))
    else:
        if noise is not None:
            raise ValueError("pass either x_init (a warm start) or noise (a cold start), not both")
        sigmas = view.sigmas(steps, sigma_start if sigma_start is not None else float(view.sigmas(steps)[0]))
        x = x_init
    return sample(view, cond, x, sigmas, method, x0_clip, generator, step_noise)


def chunk_sigmas(view: DenoiserView, steps: int, sigma_start: float | None = None, warm: bool = False) -> torch.Tensor:
    """The schedule :func:`sample_chunk` runs (cold, or ``warm`` from ``x_init`` at ``sigma_start``)."""
    if not warm:
        return view.sigmas(steps) if sigma_start is None else view.sigmas(steps, sigma_start)
    return view.sigmas(steps, sigma_start if sigma_start is not None else float(view.sigmas(steps)[0]))


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's schedule: (n + 1,) float64, ``sigma_max`` ... ``sigma_min`` then 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return torch.cat([inv**rho, torch.zeros(1, dtype=torch.float64)])
