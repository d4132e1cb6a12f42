"""The denoiser view (contract): one coordinate in which every denoising policy is sampled.

Samplers, RTI, GPC, DSRL and chunk inpainting use only this view, never the model inside.

Coordinate (variance exploding, k-diffusion / EDM style), on the *normalized* action chunk::

    x = x0 + sigma * eps              x: (B, ...) any rank, sigma >= 0, eps ~ N(0, I)

A variance-preserving (DDPM) model with ``x_vp = sqrt(a) x0 + sqrt(1-a) eps`` maps to it by
``x = x_vp / sqrt(a)`` and ``sigma = sqrt((1 - a) / a)`` (``a`` = alpha_bar). A view provides:

* ``encode(obs, env_ids=None) -> cond``: obs in env units ``{key: (B, To, ...)}``, normalized
  inside; once per control step, reused across denoising steps and samples (``repeat_cond`` for
  N samples). ``env_ids`` (one per row) name the environments: a *stateful* view (a policy with
  per-environment state, e.g. SeedPolicy's recurrent SEGA state) reads and advances the state of
  those environments, once per call; without them every row starts fresh and nothing is kept.
  Stateless views ignore them. Callers that know the environments (``predict``, RTI, RTC) pass them.
* ``denoise(x, sigma, cond) -> x0_hat`` of x's shape; ``sigma`` a float or a (B,) tensor. A sigma
  outside ``[sigma_min, sigma_max]`` is refused (``ValueError``) unless the view was built with
  ``out_of_range="clamp"``, which clamps it explicitly. A view with ``token_sigma`` True (a model
  trained with per-token noise levels: training-time action conditioning) also takes a (B, H)
  sigma, one per position of the chunk's first axis; the others refuse it.
* ``sigmas(n, sigma_start=None) -> (n + 1,)`` descending float64, last entry 0: the model's own
  n-step schedule, or n steps from ``sigma_start`` down (warm starts).
* ``noise_to_x(noise, sigma)``: standard normal noise -> the model's prior at ``sigma``.
* ``from_action(a)`` / ``to_action(x0, snap=False)``: env units to and from the coordinate,
  affine (so the views of policies with different normalizers can be mixed); ``snap=True``
  then snaps discrete dims (grippers) to their limits.
* ``sigma_max`` / ``sigma_min``; ``action_shape`` (e.g. ``(H, Da)``).

A view holds no mutable state but a cache of per-sigma scalars (filled idempotently): its
schedule tables are computed once at construction, so one view may serve several threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from einops import repeat

from robopolicy.diffusion.schedulers import NoiseScheduleConfig, PredictionType, make_ddim


@runtime_checkable
class DenoiserView(Protocol):
    """What every diffusion-family policy exposes through ``policy.denoiser_view()``."""

    action_shape: tuple[int, ...]
    sigma_max: float
    sigma_min: float

    def encode(self, obs: Mapping[str, Any], env_ids: Sequence[int] | None = None) -> Any: ...

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: Any) -> torch.Tensor: ...

    def sigmas(self, n: int, sigma_start: float | None = None) -> torch.Tensor: ...

    def noise_to_x(self, noise: torch.Tensor, sigma: float) -> torch.Tensor: ...

    def from_action(self, action: torch.Tensor) -> torch.Tensor: ...

    def to_action(self, x0: torch.Tensor, snap: bool = False) -> torch.Tensor: ...


def batch_sigma(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) float64 sigmas for a batch ``x`` (B, ...) from a float, a 0-d or a (B,) tensor."""
    sig = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1)
    if sig.numel() == 1:
        return sig.expand(x.shape[0])
    if sig.shape[0] != x.shape[0]:
        raise ValueError(f"got {sig.shape[0]} sigmas for a batch of {x.shape[0]}")
    return sig


def per_row(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against ``x`` (B, ...), in x's dtype."""
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


# model_fn(x_vp (B, H, Da), t (B,) float, cond) -> network output (B, H, Da)
ModelFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class _ViewBase:
    """What every view shares: the callables it wraps, the action maps, the sigma range check
    and the per-sigma scalar cache."""

    sigma_min: float
    sigma_max: float

    def __init__(
        self,
        model_fn: ModelFn,
        encode_fn: Callable[[Mapping[str, Any]], Any],
        to_action_fn: Callable[[torch.Tensor], torch.Tensor],
        action_shape: tuple[int, ...],
        from_action_fn: Callable[[torch.Tensor], torch.Tensor] | None,
        snap_fn: Callable[[torch.Tensor], torch.Tensor] | None,
        out_of_range: str,
        stateful: bool = False,
    ) -> None:
        if out_of_range not in ("error", "clamp"):
            raise ValueError(f"out_of_range must be 'error' or 'clamp', got {out_of_range!r}")
        self.model_fn, self.encode_fn = model_fn, encode_fn
        self.to_action_fn, self.from_action_fn, self.snap_fn = to_action_fn, from_action_fn, snap_fn
        self.action_shape = tuple(action_shape)
        self.out_of_range = out_of_range
        self.token_sigma = False
        self.stateful = stateful
        self._scalar_cache: dict[float, tuple[float, ...]] = {}  # sigma -> float32 scalars

    def encode(self, obs: Mapping[str, Any], env_ids: Sequence[int] | None = None) -> Any:
        if self.stateful:
            return self.encode_fn(obs, env_ids=None if env_ids is None else list(env_ids))
        return self.encode_fn(obs)

    def from_action(self, action: torch.Tensor) -> torch.Tensor:
        if self.from_action_fn is None:
            raise NotImplementedError("this view was built without from_action_fn")
        return self.from_action_fn(action)

    def to_action(self, x0: torch.Tensor, snap: bool = False) -> torch.Tensor:
        a = self.to_action_fn(x0)
        return self.snap_fn(a) if snap and self.snap_fn is not None else a

    def check_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """Refuse (or, with ``out_of_range="clamp"``, clamp) sigmas outside the trained range."""
        lo, hi = self.sigma_min * (1 - 1e-6), self.sigma_max * (1 + 1e-6)
        bad = (sigma < lo) | (sigma > hi) | ~torch.isfinite(sigma)
        if bool(bad.any()):
            if self.out_of_range == "clamp":
                return sigma.clamp(self.sigma_min, self.sigma_max)
            raise ValueError(
                f"sigma {sigma[bad][0].item():.6g} is outside the trained range [{self.sigma_min:.6g}, "
                f"{self.sigma_max:.6g}] (build the view with out_of_range='clamp' to clamp it explicitly)"
            )
        return sigma

    def _cached_terms(self, sigma: float, compute: Callable[[torch.Tensor], tuple[float, ...]]) -> tuple[float, ...]:
        """``compute(checked (1,) float64 sigma)`` for one float sigma, computed once and cached."""
        terms = self._scalar_cache.get(sigma)
        if terms is None:
            terms = compute(self.check_sigma(torch.tensor([sigma], dtype=torch.float64)))
            if len(self._scalar_cache) > 4096:
                self._scalar_cache.clear()
            self._scalar_cache[sigma] = terms
        return terms


class VPDenoiserView(_ViewBase):
    """View over a discrete-time variance-preserving model (DDPM epsilon / sample / v).

    A sigma between two training steps maps to a fractional timestep, interpolated in
    log-sigma (the networks embed t sinusoidally, so fractional t is well defined); a sigma
    on a training step gives that exact integer step. ``sigmas(n)`` uses diffusers' DDIM
    ("leading") spacing for the same schedule, so DDIM on this view reproduces
    ``DDIMScheduler``, and DDPM ancestral sampling on it reproduces ``DDPMScheduler``.

    ``to_action_fn`` maps the normalized chunk to env units and ``from_action_fn`` back (both
    affine); ``snap_fn`` snaps discrete dims of env-unit actions (identity if None).
    """

    def __init__(
        self,
        model_fn: ModelFn,
        encode_fn: Callable[[Mapping[str, Any]], Any],
        to_action_fn: Callable[[torch.Tensor], torch.Tensor],
        action_shape: tuple[int, ...],
        schedule: NoiseScheduleConfig = NoiseScheduleConfig(),
        *,
        from_action_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        snap_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        out_of_range: str = "error",
        token_sigma: bool = False,
        stateful: bool = False,
    ) -> None:
        super().__init__(
            model_fn, encode_fn, to_action_fn, action_shape, from_action_fn, snap_fn, out_of_range, stateful
        )
        self.token_sigma = bool(token_sigma)
        self.schedule = schedule
        self.prediction_type = PredictionType(schedule.prediction_type)
        ac = make_ddim(schedule).alphas_cumprod.double()  # the training schedule, read once
        self.num_train_timesteps = len(ac)
        self.train_sigmas = ((1 - ac) / ac).sqrt()  # (T,), ascending in t
        self._log_sigmas = self.train_sigmas.log()
        self.sigma_max = float(self.train_sigmas[-1])
        self.sigma_min = float(self.train_sigmas[0])

    # ------------------------------------------------------------------ contract
    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: Any) -> torch.Tensor:
        """x: (B, ...) at noise level sigma (float or (B,)) -> x0_hat (B, ...).

        A Python float sigma (what the samplers pass) takes the scalar path: its timestep and
        scalings are computed once per distinct sigma and cached, no tensor is made for them
        (nothing per step but the network and three elementwise ops; safe to capture in a CUDA
        graph), and the network gets the timestep as a float. The numbers equal the tensor path's.
        """
        if isinstance(sigma, float | int):
            t, c_in, s, s_c_in = self._scalar_terms(float(sigma))
            x_vp = x * c_in
            out = self.model_fn(x_vp, t, cond)
            if self.prediction_type is PredictionType.EPSILON:
                return x - s * out
            if self.prediction_type is PredictionType.SAMPLE:
                return out
            return x_vp * c_in - s_c_in * out
        if torch.is_tensor(sigma) and sigma.ndim == 2:  # one per chunk position (token_sigma views)
            sig = self._token_sigma(x, sigma)
        else:
            sig = self.check_sigma(batch_sigma(sigma, x))
        t = self.sigma_to_t(sig.reshape(-1)).reshape(sig.shape).to(x.dtype)
        tail = (1,) * (x.ndim - sig.ndim)
        c_in = (1 + sig**2).rsqrt().to(x.dtype).reshape(*sig.shape, *tail)  # = sqrt(alpha_bar)
        x_vp = x * c_in
        out = self.model_fn(x_vp, t, cond)
        s = sig.to(x.dtype).reshape(*sig.shape, *tail)
        if self.prediction_type is PredictionType.EPSILON:
            return x - s * out
        if self.prediction_type is PredictionType.SAMPLE:
            return out
        return x_vp * c_in - (s * c_in) * out  # v: x0 = sqrt(a) x_vp - sqrt(1-a) v

    def _token_sigma(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """A checked (B, H) float64 sigma, one per chunk position: the network then gets (B, H) timesteps."""
        if not self.token_sigma:
            raise ValueError(
                "per-position sigmas (B, H) need a model trained with per-token noise levels "
                "(Diffusion Policy: train_max_delay > 0 with backbone.token_time)"
            )
        if tuple(sigma.shape) != tuple(x.shape[:2]):
            raise ValueError(f"per-position sigmas must have shape {tuple(x.shape[:2])}, got {tuple(sigma.shape)}")
        return self.check_sigma(sigma.to(device=x.device, dtype=torch.float64))

    def sigmas(self, n: int, sigma_start: float | None = None) -> torch.Tensor:
        """(n + 1,) float64 descending, last entry 0.

        Without ``sigma_start``: sigma at diffusers' DDIM timesteps for n steps (leading
        spacing: ``k * (T // n)`` for k = n-1 ... 0). With it: n timesteps evenly spaced from
        ``sigma_start``'s (possibly fractional) timestep down to 0; a start on the top of the
        n-step DDIM schedule gives exactly ``sigmas(n)``.
        """
        T = self.num_train_timesteps
        if not 1 <= n <= T:
            raise ValueError(f"number of steps must be in [1, {T}], got {n}")
        if sigma_start is None:
            t = torch.arange(n - 1, -1, -1, dtype=torch.float64) * (T // n)
        else:
            t_start = float(self.sigma_to_t(self.check_sigma(torch.tensor([float(sigma_start)]))))
            t = torch.linspace(t_start, 0.0, n, dtype=torch.float64) if n > 1 else torch.tensor([t_start])
            t = torch.where((t - t.round()).abs() < 1e-6, t.round(), t)
        return torch.cat([self.t_to_sigma(t), torch.zeros(1, dtype=torch.float64)])

    def noise_to_x(self, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """DDPM's prior x_vp ~ N(0, I) at ``sigma``: x = noise * sqrt(1 + sigma^2)."""
        return noise * (1.0 + float(sigma) ** 2) ** 0.5

    # ------------------------------------------------------------------ helpers
    def _scalar_terms(self, sigma: float) -> tuple[float, ...]:
        """(t, c_in, sigma, sigma * c_in) for one float sigma, in float32 as the tensor path has them."""

        def compute(sig: torch.Tensor) -> tuple[float, ...]:
            c_in, s = (1 + sig**2).rsqrt().float(), sig.float()
            return float(self.sigma_to_t(sig).float()), float(c_in), float(s), float(s * c_in)

        return self._cached_terms(sigma, compute)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """(B,) sigmas in the trained range -> (B,) float timesteps (exact integers on the grid)."""
        ls_table = self._log_sigmas.to(sigma.device)
        ls = sigma.double().clamp_min(1e-300).log().clamp(float(ls_table[0]), float(ls_table[-1]))
        hi = torch.searchsorted(ls_table, ls).clamp(1, len(ls_table) - 1)
        lo = hi - 1
        w = (ls - ls_table[lo]) / (ls_table[hi] - ls_table[lo])
        t = lo.double() + w
        snapped = t.round()
        return torch.where((t - snapped).abs() < 1e-4, snapped, t)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps (integer or fractional, log-sigma interpolation) -> sigma (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        table = self._log_sigmas.to(t.device)
        lo = t.floor().long().clamp(0, len(table) - 1)
        hi = (lo + 1).clamp(max=len(table) - 1)
        w = t - lo.double()
        exact = self.train_sigmas.to(t.device)[lo]  # on the grid: the table's own value, bit for bit
        return torch.where(w == 0, exact, (table[lo] + w * (table[hi] - table[lo])).exp())


class EDMDenoiserView(_ViewBase):
    """Native EDM / Karras view (BESO): the network is preconditioned in this very coordinate::

        D(x; sigma) = c_skip x + c_out F(c_in x, c_noise, cond)
        c_skip = sd^2 / (sigma^2 + sd^2)    c_out = sigma sd / sqrt(sigma^2 + sd^2)
        c_in = 1 / sqrt(sigma^2 + sd^2)     c_noise = ln(sigma) / 4          (sd = sigma_data)

    ``model_fn(x_in (B, ...), c_noise (float or (B,)), cond) -> F`` of x's shape. ``sigmas(n)``
    is the model's n-step schedule from ``sigma_max`` to ``sigma_min`` (``exponential``: even in
    log-sigma, BESO's default; ``karras`` with ``rho``; ``linear``), then 0; ``sigmas(n,
    sigma_start)`` the same kind of schedule from ``sigma_start``. The prior at sigma is
    ``sigma * noise`` (variance exploding). Trained on ``[sigma_min, sigma_max]``: a sigma outside
    is refused unless ``out_of_range="clamp"``. No timestep grid: ``t_to_sigma`` does not exist,
    warm starts name a sigma.
    """

    SCHEDULES = ("exponential", "karras", "linear")

    def __init__(
        self,
        model_fn: ModelFn,
        encode_fn: Callable[[Mapping[str, Any]], Any],
        to_action_fn: Callable[[torch.Tensor], torch.Tensor],
        action_shape: tuple[int, ...],
        *,
        sigma_data: float = 0.5,
        sigma_min: float = 0.005,
        sigma_max: float = 1.0,
        schedule: str = "exponential",
        rho: float = 7.0,
        from_action_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        snap_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        out_of_range: str = "error",
        stateful: bool = False,
    ) -> None:
        super().__init__(
            model_fn, encode_fn, to_action_fn, action_shape, from_action_fn, snap_fn, out_of_range, stateful
        )
        if schedule not in self.SCHEDULES:
            raise ValueError(f"schedule must be one of {self.SCHEDULES}, got {schedule!r}")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.sigma_data, self.sigma_min, self.sigma_max = float(sigma_data), float(sigma_min), float(sigma_max)
        self.schedule, self.rho = schedule, float(rho)

    # ------------------------------------------------------------------ contract

    def precondition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(c_skip, c_out, c_in, c_noise) of (B,) float64 sigmas."""
        sd2 = self.sigma_data**2
        s2 = sigma**2
        return sd2 / (s2 + sd2), sigma * self.sigma_data / (s2 + sd2).sqrt(), (s2 + sd2).rsqrt(), sigma.log() / 4

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor, cond: Any) -> torch.Tensor:
        """x (B, ...) at sigma (float or (B,)) -> D(x; sigma) (B, ...). A float sigma takes a cached
        scalar path (no tensors made for the coefficients), equal to the tensor path."""
        if isinstance(sigma, float | int):
            c_skip, c_out, c_in, c_noise = self._scalar_terms(float(sigma))
            return c_skip * x + c_out * self.model_fn(x * c_in, c_noise, cond)
        sig = self.check_sigma(batch_sigma(sigma, x))
        c_skip, c_out, c_in, c_noise = self.precondition(sig)
        out = self.model_fn(x * per_row(c_in, x), c_noise.to(x.dtype), cond)
        return per_row(c_skip, x) * x + per_row(c_out, x) * out

    def sigmas(self, n: int, sigma_start: float | None = None) -> torch.Tensor:
        """(n + 1,) float64 descending, last entry 0: n levels from ``sigma_start`` (default
        ``sigma_max``) down to ``sigma_min`` by the view's schedule kind."""
        if n < 1:
            raise ValueError(f"number of steps must be >= 1, got {n}")
        top = (
            self.sigma_max
            if sigma_start is None
            else float(self.check_sigma(torch.tensor([float(sigma_start)], dtype=torch.float64))[0])
        )
        lo = min(self.sigma_min, top)
        if n == 1:
            levels = torch.tensor([top], dtype=torch.float64)
        elif self.schedule == "exponential":
            levels = torch.linspace(math.log(top), math.log(lo), n, dtype=torch.float64).exp()
        elif self.schedule == "linear":
            levels = torch.linspace(top, lo, n, dtype=torch.float64)
        else:
            ramp = torch.linspace(0, 1, n, dtype=torch.float64)
            levels = (top ** (1 / self.rho) + ramp * (lo ** (1 / self.rho) - top ** (1 / self.rho))) ** self.rho
        levels[0] = top  # exactly, so a warm start from sigma_max equals the cold schedule
        return torch.cat([levels, torch.zeros(1, dtype=torch.float64)])

    def noise_to_x(self, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        """The variance-exploding prior at ``sigma``: x = sigma * noise."""
        return noise * float(sigma)

    def _scalar_terms(self, sigma: float) -> tuple[float, ...]:
        return self._cached_terms(sigma, lambda sig: tuple(float(v.float()) for v in self.precondition(sig)))


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
