"""The denoiser view (contract): one coordinate in which every denoising policy is sampled.

Samplers, RTI, GPC, DSRL and chunk inpainting use only this view, never the model inside.

Coordinate (variance exploding, k-diffusion / EDM style), on the *normalized* action chunk::

    x = x0 + sigma * eps              x: (B, H, Da), sigma >= 0, eps ~ N(0, I)

A variance-preserving (DDPM) model with ``x_vp = sqrt(a) x0 + sqrt(1-a) eps`` maps to it by
``x = x_vp / sqrt(a)`` and ``sigma = sqrt((1 - a) / a)`` (``a`` = alpha_bar). A view provides:

* ``encode(obs) -> cond``: obs in env units ``{key: (B, To, ...)}``, normalized inside; once per
  control step, reused across denoising steps and samples (``repeat_cond`` for N samples).
* ``denoise(x, sigma, cond) -> x0_hat`` (B, H, Da); ``sigma`` a float or a (B,) tensor.
* ``sigmas(n) -> (n + 1,)`` descending float64, last entry 0: the model's own n-step schedule.
* ``noise_to_x(noise, sigma)``: standard normal noise -> a starting point at ``sigma``.
* ``to_action(x0) -> env units``; ``sigma_max`` / ``sigma_min``; ``action_shape = (H, Da)``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from einops import repeat

from robopolicy.diffusion.schedulers import NoiseScheduleConfig, make_ddim


@runtime_checkable
class DenoiserView(Protocol):
    """What every diffusion-family policy exposes through ``policy.denoiser_view()``."""

    action_shape: tuple[int, int]
    sigma_max: float
    sigma_min: float

    def encode(self, obs: Mapping[str, Any]) -> Any: ...

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: Any) -> torch.Tensor: ...

    def sigmas(self, n: int) -> torch.Tensor: ...

    def noise_to_x(self, noise: torch.Tensor, sigma: float) -> torch.Tensor: ...

    def to_action(self, x0: torch.Tensor) -> torch.Tensor: ...


class PredictionType(str, enum.Enum):
    """What a variance-preserving network predicts."""

    EPSILON = "epsilon"
    SAMPLE = "sample"
    V_PREDICTION = "v_prediction"


# model_fn(x_vp (B, H, Da), t (B,) float, cond) -> network output (B, H, Da)
ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class VPDenoiserView:
    """View over a discrete-time variance-preserving model (DDPM epsilon / sample / v).

    A sigma between two training steps maps to a fractional timestep, interpolated in
    log-sigma (the networks embed t sinusoidally, so fractional t is well defined); a sigma
    on a training step gives that exact integer step. ``sigmas(n)`` uses diffusers' DDIM
    spacing for the same schedule, so DDIM on this view reproduces ``DDIMScheduler``.
    """

    def __init__(
        self,
        model_fn: ModelFn,
        encode_fn: Callable[[Mapping[str, Any]], Any],
        to_action_fn: Callable[[torch.Tensor], torch.Tensor],
        action_shape: tuple[int, int],
        schedule: NoiseScheduleConfig = NoiseScheduleConfig(),
    ) -> None:
        self.model_fn, self.encode_fn, self.to_action_fn = model_fn, encode_fn, to_action_fn
        self.action_shape = tuple(action_shape)
        self.schedule = schedule
        self.prediction_type = PredictionType(schedule.prediction_type)
        self._ddim = make_ddim(schedule)
        ac = self._ddim.alphas_cumprod.double()
        self.train_sigmas = ((1 - ac) / ac).sqrt()  # (T,), ascending in t
        self._log_sigmas = self.train_sigmas.log()
        self.sigma_max = float(self.train_sigmas[-1])
        self.sigma_min = float(self.train_sigmas[0])

    # ------------------------------------------------------------------ contract
    def encode(self, obs: Mapping[str, Any]) -> Any:
        return self.encode_fn(obs)

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: Any) -> torch.Tensor:
        """x: (B, H, Da) at noise level sigma (float or (B,)) -> x0_hat (B, H, Da)."""
        sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
        if sig.numel() == 1:
            sig = sig.expand(x.shape[0])
        t = self.sigma_to_t(sig).to(x.dtype)
        c_in = (1 + sig**2).rsqrt().to(x.dtype)[:, None, None]  # = sqrt(alpha_bar)
        x_vp = x * c_in
        out = self.model_fn(x_vp, t, cond)
        s = sig.to(x.dtype)[:, None, None]
        if self.prediction_type is PredictionType.EPSILON:
            return x - s * out
        if self.prediction_type is PredictionType.SAMPLE:
            return out
        return x_vp * c_in - (s * c_in) * out  # v: x0 = sqrt(a) x_vp - sqrt(1-a) v

    def sigmas(self, n: int) -> torch.Tensor:
        """(n + 1,) float64: sigma at diffusers' DDIM timesteps for n steps, then 0."""
        if not 1 <= n <= self.schedule.num_train_timesteps:
            raise ValueError(f"number of steps must be in [1, {self.schedule.num_train_timesteps}], got {n}")
        self._ddim.set_timesteps(n)
        steps = self._ddim.timesteps.long()
        return torch.cat([self.train_sigmas[steps], torch.zeros(1, dtype=torch.float64)])

    def noise_to_x(self, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """DDPM's prior x_vp ~ N(0, I) at ``sigma``: x = noise * sqrt(1 + sigma^2)."""
        return noise * (1.0 + float(sigma) ** 2) ** 0.5

    def to_action(self, x0: torch.Tensor) -> torch.Tensor:
        return self.to_action_fn(x0)

    # ------------------------------------------------------------------ helpers
    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) sigmas -> (B,) float timesteps; clamped to the training range."""
        ls_table = self._log_sigmas.to(sigma.device)
        ls = sigma.double().clamp_min(1e-12).log().clamp(float(ls_table[0]), float(ls_table[-1]))
        hi = torch.searchsorted(ls_table, ls).clamp(1, len(ls_table) - 1)
        lo = hi - 1
        w = (ls - ls_table[lo]) / (ls_table[hi] - ls_table[lo])
        t = lo.double() + w
        snapped = t.round()
        return torch.where((t - snapped).abs() < 1e-4, snapped, t)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Integer timesteps -> sigma (float64)."""
        return self.train_sigmas.to(t.device)[t.long()]


def repeat_cond(cond: Any, n: int) -> Any:
    """Repeat a cond for ``n`` samples per batch element: rows (b0 x n, b1 x n, ...).

    Tensors (B, ...) -> (B * n, ...); mappings / tuples are handled recursively.
    """
    if n == 1:
        return cond
    if isinstance(cond, torch.Tensor):
        return repeat(cond, "b ... -> (b n) ...", n=n)
    if isinstance(cond, Mapping):
        return {k: repeat_cond(v, n) for k, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(repeat_cond(v, n) for v in cond)
    raise TypeError(f"cannot repeat a cond of type {type(cond).__name__}")
