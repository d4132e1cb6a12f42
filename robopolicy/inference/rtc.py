"""RTC: real-time chunking by guided inpainting (Black, Galliker, Levine, arXiv 2506.07339),
for every denoising policy through its denoiser view (Diffusion Policy's VP / DDIM, BESO's EDM),
not only flow policies.

While a chunk is being computed the robot keeps executing the previous one: the first ``d``
actions of the new chunk (``d`` = inference delay in control ticks) are frozen before the chunk
exists. RTC samples the new chunk so that it agrees with what remains of the previous one,
strongly on the frozen prefix and less and less across the rest of the overlap (the soft mask
:func:`prefix_weights`). At every denoising step (:func:`sample_rtc`):

1. ``x0 = view.denoise(x, sigma, cond)`` (the clean chunk estimate);
2. ``e = W * (Y - x0)``: the weighted error to the prefix ``Y`` (the previous chunk, shifted to
   the new chunk's time base, in the view's normalized x0 coordinate);
3. ``g = (d x0 / d x)^T e``: one vector-Jacobian product (one backward pass through the network);
4. ``x0_g = x0 + min(beta * sigma, 1 + sigma^2) * g`` and the ordinary deterministic step with
   ``x0_g`` (DDIM / first-order DPM-Solver, or Euler).

Flow time and sigma (the derivation of step 4). The paper's flow policy interpolates
``A_tau = tau * A + (1 - tau) * eps`` (tau = 1 clean), predicts ``A1 = A_tau + (1 - tau) v`` and
guides the velocity: ``v += min(beta, k_tau) * e^T dA1/dA_tau`` with
``k_tau = (1 - tau) / (tau * r_tau^2)``, ``r_tau^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)``.
Dividing the interpolant by tau gives the view's variance-exploding coordinate::

    x = A_tau / tau = A + sigma * eps      with   sigma = (1 - tau) / tau,   tau = 1 / (1 + sigma)

(equal signal-to-noise ratio; a VP model's ``sigma = sqrt((1 - a) / a)`` is the same quantity,
so one mapping serves VP and EDM views). Then ``r_tau^2 = sigma^2 / (1 + sigma^2)`` (PiGDM's
posterior variance for unit-variance data) and ``k_tau = (1 + sigma^2) / sigma``; since
``dA1/dA_tau = (1 / tau) dx0/dx`` and a velocity change ``dv`` moves the clean estimate by
``(1 - tau) dv``, the guided clean estimate is ``x0 + ((1 - tau) / tau) min(beta, k_tau) g =
x0 + sigma * min(beta, (1 + sigma^2) / sigma) * g = x0 + min(beta * sigma, 1 + sigma^2) * g``.
Unclipped this is PiGDM's ``x0 + (1 + sigma^2) g``; ``beta`` caps it at high noise (the paper's
``tau -> 0``). An Euler step in tau with velocity ``v`` is exactly the DDIM step
``x' = x0 + (sigma' / sigma) (x - x0)`` in this coordinate, so the paper's guided Euler step is
the DDIM step with ``x0_g`` in both places.

With all-zero weights no backward pass runs and the result equals plain sampling bit for bit
(same noise, same sampler).

Trained mode (training-time action conditioning, Black, Ren, Equi, Levine, arXiv 2512.05964):
a policy trained with the executed prefix given clean (Diffusion Policy's ``train_max_delay``;
its view takes per-position sigmas, ``view.token_sigma``) is not guided. :func:`sample_prefix`
writes the frozen prefix into the chunk at every step, at the view's ``sigma_min`` (timestep 0,
as in training), and denoises the rest: one forward pass per step, no backward pass, and only
the frozen positions matter (the soft mask's decaying tail has no counterpart).
``RTCConfig.mode``: ``auto`` (default) picks ``trained`` for such a policy and ``guided`` otherwise.

Zero delay. A row with ``d = 0`` (nothing executes while inference runs) is sampled plainly
by the policy in both modes: the paper's soft mask would still pull the overlap toward the
previous chunk at ``d = 0``; here zero delay means exactly the policy's own chunk. Guidance needs the network's gradient: :class:`RTC` switches a
policy whose inference engine cannot differentiate (ONNX, compiled, ``auto`` on a CPU) to the
eager engine; :func:`sample_rtc` refuses a view whose ``denoise`` has no autograd history.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from robopolicy.diffusion.samplers import Generators, SamplerMethod, randn_rows
from robopolicy.diffusion.view import DenoiserView
from robopolicy.inference.engine import Backend, cpu_threads
from robopolicy.inference.memory import EnvMemory
from robopolicy.inference.output import PolicyOutput


class PrefixSchedule(str, enum.Enum):
    """How the prefix weights decay across the overlap (the paper's "prefix attention schedule")."""

    EXP = "exp"
    """``c * (e^c - 1) / (e - 1)`` with ``c`` the linear ramp (the paper's default)."""
    LINEAR = "linear"
    """The linear ramp ``c``."""
    ONES = "ones"
    """1 on the whole overlap ``[0, H - s)``."""
    ZEROS = "zeros"
    """1 on the frozen prefix only ("hard masking", the paper's ablation)."""


class RTCMode(str, enum.Enum):
    """How the frozen prefix shapes the new chunk."""

    AUTO = "auto"
    """``trained`` for a policy trained with the prefix given (its view takes per-position sigmas), else ``guided``."""
    GUIDED = "guided"
    """Inference-time inpainting: the soft-masked guidance of the paper (one backward pass per step)."""
    TRAINED = "trained"
    """Training-time action conditioning: the frozen prefix is given clean at every step."""


GUIDED_METHODS = (SamplerMethod.DDIM, SamplerMethod.DPM_SOLVER_1, SamplerMethod.EULER)
"""The deterministic first-order samplers :func:`sample_rtc` takes its steps with."""


def prefix_weights(
    horizon: int, delay: int, execute_horizon: int, schedule: PrefixSchedule | str = PrefixSchedule.EXP
) -> torch.Tensor:
    """The soft mask W (H,) float32 of RTC (the paper's eq. for W, ``H = horizon``,
    ``d = delay``, ``s = execute_horizon``)::

        W_i = 1                              i < d          (frozen: executes while inference runs)
        W_i = c_i (e^c_i - 1) / (e - 1)      d <= i < H - s (c_i = (H - s - i) / (H - s - d + 1))
        W_i = 0                              i >= H - s     (the previous chunk never planned these)

    ``linear`` uses ``c_i`` itself, ``ones`` 1 on ``[0, H - s)``, ``zeros`` 1 on ``[0, d)`` only.
    Index 0 is the first action that executes from the new chunk's time base; ``s`` is the number
    of actions executed between the two chunks' observations, so the previous chunk shifted by
    ``s`` covers ``[0, H - s)``. Example (linear, H 10, d 2, s 4): ``1 1 .8 .6 .4 .2 0 0 0 0``.
    Note that ``d = 0`` still weights the overlap (``W_0 < 1`` but > 0) unless ``schedule`` is
    ``zeros`` or ``s = H``. The paper runs with ``d <= s <= H - d``; required here is only what
    the mask needs, ``0 <= s <= H`` and ``0 <= d <= H - s`` (the frozen prefix inside the overlap).
    """
    h, d, s = int(horizon), int(delay), int(execute_horizon)
    try:
        schedule = PrefixSchedule(schedule)
    except ValueError:
        raise ValueError(
            f"unknown prefix schedule {schedule!r}; choose from {[m.value for m in PrefixSchedule]}"
        ) from None
    if h < 1:
        raise ValueError(f"horizon must be >= 1, got {h}")
    if not 0 <= s <= h:
        raise ValueError(f"execute_horizon s must be in [0, H={h}], got {s}")
    end = h - s
    if not 0 <= d <= end:
        raise ValueError(f"delay d must be in [0, H - s = {end}] (the frozen prefix lies in the overlap), got {d}")
    i = torch.arange(h, dtype=torch.float64)
    if schedule is PrefixSchedule.ZEROS:
        w = (i < d).double()
    elif schedule is PrefixSchedule.ONES:
        w = (i < end).double()
    else:
        c = ((end - i) / (end - d + 1)).clamp(0.0, 1.0)  # 1 on [0, d), ramp to 1/(end-d+1), 0 from end
        w = c if schedule is PrefixSchedule.LINEAR else c * torch.expm1(c) / math.expm1(1.0)
    return w.float()


def guidance_scale(sigma: float, max_guidance: float) -> float:
    """The factor of the vector-Jacobian product in the guided clean estimate at ``sigma``:
    ``sigma * min(beta, (1 + sigma^2) / sigma) = min(beta * sigma, 1 + sigma^2)`` (module docstring)."""
    return min(max_guidance * sigma, 1.0 + sigma * sigma)


def sample_rtc(
    view: DenoiserView,
    cond: Any,
    prefix: torch.Tensor,
    weights: torch.Tensor,
    *,
    steps: int = 10,
    method: SamplerMethod | str = SamplerMethod.DDIM,
    max_guidance: float = 5.0,
    noise: torch.Tensor | None = None,
    generator: Generators = None,
    sigmas: torch.Tensor | None = None,
    x0_clip: float | None = None,
) -> torch.Tensor:
    """A chunk (B, *view.action_shape) in the view's normalized coordinate, inpainted toward ``prefix``.

    ``prefix`` (B, H, ...) is the target in the x0 coordinate (``view.from_action`` of env-unit
    actions); ``weights`` (H,) or (B, H) the soft mask (:func:`prefix_weights`) over the chunk's
    first axis; ``max_guidance`` is beta. ``noise`` (B, H, ...) standard normal, or drawn from
    ``generator`` (one, or one per row) for ``prefix``'s batch. The schedule is ``sigmas`` or
    ``view.sigmas(steps)``; ``method`` one of ``ddim`` / ``dpm_solver_1`` (the same step) or
    ``euler``, with ``x0_clip`` as :mod:`robopolicy.diffusion.samplers` applies it.

    The guidance's backward pass runs with autograd on even when the caller is in ``no_grad``
    or ``inference_mode``; the result carries no autograd history. All-zero weights run no
    backward pass and give plain sampling exactly.
    """
    if not max_guidance >= 0:
        raise ValueError(f"max_guidance (beta) must be >= 0, got {max_guidance}")
    method, s, prefix, noise = _checked_inputs(view, prefix, method, steps, sigmas, noise, generator, "RTC")
    w = _row_weights(weights, prefix.shape[0], tuple(view.action_shape), noise)
    guided = bool((w != 0).any()) and max_guidance > 0
    x = view.noise_to_x(noise, s[0])
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        if guided:
            x0, g = _denoise_vjp(view, x, sigma, cond, prefix, w)
            x0_g = x0 + guidance_scale(sigma, max_guidance) * g
        else:
            x0_g = view.denoise(x, sigma, cond)
        x = _step(method, x, x0_g, sigma, sigma_next, x0_clip)
    return x


def _checked_inputs(
    view: DenoiserView,
    prefix: torch.Tensor,
    method: SamplerMethod | str,
    steps: int,
    sigmas: torch.Tensor | None,
    noise: torch.Tensor | None,
    generator: Generators,
    who: str,
) -> tuple[SamplerMethod, list[float], torch.Tensor, torch.Tensor]:
    """What :func:`sample_rtc` and :func:`sample_prefix` share: the step method, the schedule as
    floats, the prefix on the noise's device and dtype, and the (given or drawn) noise."""
    try:
        method = SamplerMethod(method)
    except ValueError:
        method = None  # type: ignore[assignment]
    if method not in GUIDED_METHODS:
        raise ValueError(f"{who} steps with one of {[m.value for m in GUIDED_METHODS]}, got {method!r}")
    sig = view.sigmas(steps) if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)
    if sig.ndim != 1 or len(sig) < 2 or bool((sig[1:] > sig[:-1]).any()) or float(sig[-2]) <= 0:
        raise ValueError("sigmas must be a descending 1-D schedule with only the last entry allowed to be 0")
    shape = tuple(view.action_shape)
    if prefix.ndim != 1 + len(shape) or tuple(prefix.shape[1:]) != shape:
        raise ValueError(f"prefix must have shape (B, {', '.join(map(str, shape))}), got {tuple(prefix.shape)}")
    b = prefix.shape[0]
    if noise is None:
        noise = randn_rows((b, *shape), generator, prefix.device)
    elif tuple(noise.shape) != (b, *shape):
        raise ValueError(f"noise must have shape {(b, *shape)}, got {tuple(noise.shape)}")
    return method, [float(v) for v in sig], prefix.to(device=noise.device, dtype=noise.dtype), noise


def _step(
    method: SamplerMethod, x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float, clip: float | None
) -> torch.Tensor:
    """One deterministic step from ``sigma`` to ``sigma_next`` with the clean estimate ``x0``."""
    if method is SamplerMethod.EULER:
        return x + (sigma_next - sigma) * ((x - _clip(x0, clip)) / sigma)
    return _clip(x0, clip) + (sigma_next / sigma) * (x - x0)  # DDIM: clipped estimate, unclipped direction


def sample_prefix(
    view: DenoiserView,
    cond: Any,
    prefix: torch.Tensor,
    frozen: torch.Tensor,
    *,
    steps: int = 10,
    method: SamplerMethod | str = SamplerMethod.DDIM,
    noise: torch.Tensor | None = None,
    generator: Generators = None,
    sigmas: torch.Tensor | None = None,
    x0_clip: float | None = None,
) -> torch.Tensor:
    """A chunk (B, *view.action_shape) in the view's normalized coordinate whose ``frozen``
    positions (B, H) bool are ``prefix`` (B, H, ...), the rest denoised given them.

    Training-time action conditioning's sampler: at every step the frozen positions hold the
    prefix at noise level ``view.sigma_min`` (the clean level the model was trained with) and
    the rest ``sigma``; the view gets the (B, H) sigmas (``view.token_sigma`` must be True). The
    steps are :func:`sample_rtc`'s (DDIM / first-order DPM-Solver or Euler), without guidance.
    """
    if not getattr(view, "token_sigma", False):
        raise ValueError(
            "prefix sampling (RTC mode 'trained') needs a model trained with the prefix given "
            "(Diffusion Policy: train_max_delay > 0); use RTC mode 'guided' for this policy"
        )
    h = view.action_shape[0]
    if tuple(frozen.shape) != (prefix.shape[0], h) or frozen.dtype != torch.bool:
        raise ValueError(f"frozen must be a bool tensor of shape {(prefix.shape[0], h)}, got {tuple(frozen.shape)}")
    method, s, prefix, noise = _checked_inputs(view, prefix, method, steps, sigmas, noise, generator, "prefix sampling")
    frozen = frozen.to(noise.device)
    m = frozen.reshape(*frozen.shape, *([1] * (prefix.ndim - 2)))
    x = torch.where(m, prefix, view.noise_to_x(noise, s[0]))
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        tok = torch.where(frozen, view.sigma_min, sigma).to(torch.float64)
        x0 = torch.where(m, prefix, view.denoise(x, tok, cond))
        x = torch.where(m, prefix, _step(method, x, x0, sigma, sigma_next, x0_clip))
    return x


def _row_weights(weights: torch.Tensor, b: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """(H,) or (B, H) weights -> (B, H, 1, ...) broadcastable against the chunk."""
    w = torch.as_tensor(weights).to(device=like.device, dtype=like.dtype)
    if w.ndim == 1:
        w = w.expand(b, -1)
    if w.ndim != 2 or tuple(w.shape) != (b, shape[0]):
        raise ValueError(f"weights must have shape ({shape[0]},) or ({b}, {shape[0]}), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    return w.reshape(b, shape[0], *([1] * (len(shape) - 1)))


def _denoise_vjp(
    view: DenoiserView, x: torch.Tensor, sigma: float, cond: Any, prefix: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, (dx0/dx)^T (w * (prefix - x0)))``, both detached; one forward and one backward
    pass, with autograd on whatever the caller's mode (inference tensors are cloned first)."""
    with torch.inference_mode(False), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        # a tensor sigma takes the view's tensor path: nothing from a cache filled in inference mode
        # (an engine's cached timestep tensor) reaches the graph, where autograd would have to save it
        sig = torch.tensor(sigma, dtype=torch.float64, device=x.device)
        x0 = view.denoise(x_in, sig, _normal_tensors(cond))
        if not x0.requires_grad:
            raise RuntimeError(
                "RTC needs the gradient of the denoiser, but view.denoise returned a tensor without autograd "
                "history (an inference engine without autograd, e.g. ONNX): run the policy's network eagerly, "
                "policy.set_engine('eager') (the RTC actor does this itself)"
            )
        err = w * (prefix - x0.detach())  # a constant of the backward pass
        (g,) = torch.autograd.grad(x0, x_in, grad_outputs=err)
    return x0.detach(), g.detach()


def _normal_tensors(cond: Any) -> Any:
    """``cond`` with inference-mode tensors cloned into normal ones (autograd may save them)."""
    if isinstance(cond, torch.Tensor):
        return cond.clone() if cond.is_inference() else cond
    if isinstance(cond, Mapping):
        return {k: _normal_tensors(v) for k, v in cond.items()}
    if isinstance(cond, (tuple, list)):
        return type(cond)(_normal_tensors(v) for v in cond)
    return cond


def _clip(x0: torch.Tensor, c: float | None) -> torch.Tensor:
    return x0 if c is None else x0.clamp(-c, c)


# ---------------------------------------------------------------------- the actor
@dataclasses.dataclass(frozen=True)
class RTCConfig:
    """RTC options (``InferenceOptions(method="rtc", rtc=RTCConfig(...))``)."""

    schedule: PrefixSchedule = PrefixSchedule.EXP
    """Prefix weight schedule (:func:`prefix_weights`)."""
    max_guidance: float = 5.0
    """beta, the cap of the guidance weight (Kinetix 5; lerobot suggests 10 for 10-step flow)."""
    steps: int | None = None
    """Denoising steps of a guided chunk (None: the policy's ``inference.num_inference_steps``)."""
    method: SamplerMethod | None = None
    """Step of a guided chunk: ``ddim``, ``dpm_solver_1`` or ``euler`` (None: the policy's default
    sampler if it is one of these, else ``ddim``)."""
    delay: int = 0
    """Inference delay d in control ticks when a call does not give one (the synchronous runner: 0)."""
    execute_horizon: int | None = None
    """Actions executed between two chunks' observations when a call does not say (default: Ta)."""
    mode: RTCMode = RTCMode.AUTO
    """``guided`` (inference-time inpainting), ``trained`` (the prefix given to a policy trained
    with it) or ``auto`` (trained when the policy was, else guided); module docstring."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", PrefixSchedule(self.schedule))
        try:
            object.__setattr__(self, "mode", RTCMode(self.mode))
        except ValueError:
            raise ValueError(f"unknown RTC mode {self.mode!r}; choose from {[m.value for m in RTCMode]}") from None
        if self.method is not None:
            m = SamplerMethod(self.method)
            if m not in GUIDED_METHODS:
                raise ValueError(f"rtc method must be one of {[g.value for g in GUIDED_METHODS]}, got {m.value!r}")
            object.__setattr__(self, "method", m)
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"rtc steps must be >= 1, got {self.steps}")
        if not self.max_guidance >= 0:
            raise ValueError(f"rtc max_guidance must be >= 0, got {self.max_guidance}")
        if self.delay < 0:
            raise ValueError(f"rtc delay must be >= 0, got {self.delay}")
        if self.execute_horizon is not None and self.execute_horizon < 0:
            raise ValueError(f"rtc execute_horizon must be >= 0, got {self.execute_horizon}")


class RTC:
    """A policy sampled with RTC inpainting: ``predict(obs, env_ids=..., delay=..., executed=...)`` / ``reset``.

    Per environment id it keeps the previous chunk (env units, as returned). A row whose
    environment has none is sampled by the policy itself (``options``); the others are guided
    toward their previous chunk. Chunk index i is aligned with tick ``obs_tick + i - (To - 1)``
    (index To-1 with the newest observation, as the chunk executor has it), so with ``executed``
    actions executed since the previous chunk's observation, the prefix is the previous chunk
    shifted by ``executed`` (end padded), and the weights are::

        index        0 .. To-2          To-1 .. To-2+d     ... overlap ...    H - executed .. H-1
        weight       0 (the past)       1 (frozen)         soft, decaying     0

    i.e. :func:`prefix_weights` over the H - To + 1 positions from the newest observation on
    (the positions before it predict ticks already past: nothing of the new chunk executes
    there). ``executed`` beyond that span leaves no overlap (plain sampling), and ``delay`` is
    clamped to the overlap; ``info`` reports what was used: ``rtc_delay``, ``rtc_executed``,
    ``guided`` (B,) and ``nfe`` (forward passes; a guided step also runs one backward pass).
    """

    def __init__(self, policy: Any, config: RTCConfig = RTCConfig()) -> None:
        if not hasattr(policy, "denoiser_view"):
            raise ValueError(f"RTC needs a policy with a denoiser view; {type(policy).__name__} has none")
        self.policy, self.config = policy, config
        view = policy.denoiser_view()
        trained = bool(getattr(view, "token_sigma", False))
        if config.mode is RTCMode.TRAINED and not trained:
            raise ValueError(
                f"RTC mode 'trained' needs a policy trained with the executed prefix given (Diffusion Policy with "
                f"train_max_delay > 0); {type(policy).__name__} was not: use mode 'guided' (or 'auto')"
            )
        self.mode = (RTCMode.TRAINED if trained else RTCMode.GUIDED) if config.mode is RTCMode.AUTO else config.mode
        # guided: the backward pass needs autograd; trained: per-position timesteps, which the exported engines lack
        self.engine_switched = _ensure_autograd_engine(policy)
        self.view = policy.denoiser_view()
        pc = policy.config
        self.past = pc.n_obs_steps - 1
        self.span = pc.horizon - self.past  # positions from the newest observation on
        inf = getattr(pc, "inference", None)
        default = getattr(inf, "sampler", None)
        default = SamplerMethod(getattr(default, "value", default)) if default is not None else None
        self.method = config.method or (default if default in GUIDED_METHODS else SamplerMethod.DDIM)
        self.steps = int(config.steps or getattr(inf, "num_inference_steps", 10))
        self.execute_horizon = pc.n_action_steps if config.execute_horizon is None else config.execute_horizon
        self.x0_clip = getattr(policy, "x0_clip", None)
        self.final_clip = bool(getattr(pc, "clip_sample", False))  # BESO clamps its result, DP each x0
        self._prev = EnvMemory()  # env id -> (H, Da) env-unit chunk

    @property
    def config_dict(self) -> dict[str, Any]:
        return {
            **{k: v.value if isinstance(v, enum.Enum) else v for k, v in dataclasses.asdict(self.config).items()},
            "method_resolved": self.method.value,
            "mode_resolved": self.mode.value,
            "steps_resolved": self.steps,
            "engine_switched_to_eager": self.engine_switched,
        }

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Forget the previous chunks of ``env_ids`` (all if None); also resets the wrapped policy."""
        self._prev.reset(self.policy, env_ids)

    @property
    def observes_every_step(self) -> bool:
        return self.policy.observes_every_step

    def observe(self, obs: Mapping[str, Any], *, env_ids: Sequence[int]) -> None:
        self.policy.observe(obs, env_ids=env_ids)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def weights(self, delay: int, executed: int) -> tuple[torch.Tensor, int, int]:
        """(W (H,), d used, executed used) for one row (see the class docstring)."""
        if delay < 0 or executed < 0:
            raise ValueError(f"delay and executed must be >= 0, got {delay}, {executed}")
        s = min(int(executed), self.span)
        d = min(int(delay), self.span - s)
        w = prefix_weights(self.span, d, s, self.config.schedule)
        return torch.cat([torch.zeros(self.past), w]), d, s

    def prefix(self, prev: torch.Tensor, executed: int) -> torch.Tensor:
        """The previous chunk (H, Da) shifted by ``executed`` actions, end padded with its last action."""
        h = prev.shape[0]
        s = min(int(executed), h - 1)
        return torch.cat([prev[s:], prev[-1:].expand(s, *prev.shape[1:])]) if s > 0 else prev.clone()

    def predict(
        self,
        obs: Mapping[str, Any],
        *,
        env_ids: Sequence[int] | None = None,
        generator: Any = None,
        num_samples: int = 1,
        options: Any = None,
        delay: int | Sequence[int] | None = None,
        executed: int | Sequence[int] | None = None,
    ) -> PolicyOutput:
        """Chunks (B, H, Da) in env units. ``delay`` (d, control ticks) and ``executed`` (actions
        executed since the observation of the environment's previous chunk): one int or one per
        row (default: ``config.delay`` and ``execute_horizon``). ``options`` are the policy's;
        its ``noise`` (if it has one) is also the guided rows' initial noise."""
        if num_samples != 1:
            raise ValueError("RTC keeps one chunk per environment: num_samples must be 1")
        b = self.policy.check_obs(obs)
        env_ids = list(range(b)) if env_ids is None else [int(e) for e in env_ids]
        if len(env_ids) != b or len(set(env_ids)) != b:
            raise ValueError(f"env_ids must name {b} distinct environments, got {env_ids}")
        delays = _per_row(self.config.delay if delay is None else delay, b, "delay")
        execs = _per_row(self.execute_horizon if executed is None else executed, b, "executed")
        gens = generator if isinstance(generator, (list, tuple)) else [generator] * b
        opts = self.policy.resolve_options(options)
        noise = getattr(opts, "noise", None)
        actions = torch.empty(b, *self.view.action_shape, device=self.policy.device)
        nfe = torch.zeros(b, dtype=torch.int64)
        used_d, used_s = torch.zeros(b, dtype=torch.int64), torch.zeros(b, dtype=torch.int64)
        row_w: dict[int, torch.Tensor] = {}
        for i, e in enumerate(env_ids):
            if e in self._prev:
                w, used_d[i], used_s[i] = self.weights(delays[i], execs[i])
                if int(used_d[i]) > 0:  # zero delay: the policy's own chunk (module docstring)
                    row_w[i] = w
        guided = sorted(row_w)
        cold = [i for i in range(b) if i not in row_w]
        if cold:
            out = self.policy.predict(
                _rows(obs, cold),
                env_ids=[env_ids[i] for i in cold],
                generator=None if generator is None else [gens[i] for i in cold],
                options=_rows_options(opts, cold),
            )
            actions[cold] = out.actions.to(actions.device)
            nfe[cold] = torch.as_tensor(out.info.get("nfe", 0), dtype=torch.int64)
        if guided:
            prefixes = [self.prefix(self._prev[env_ids[i]], int(used_s[i])) for i in guided]
            if self.mode is RTCMode.TRAINED:  # the frozen positions only: To-1 .. To-2+d
                pos = torch.arange(self.past + self.span)
                ws = [(pos >= self.past) & (pos < self.past + int(used_d[i])) for i in guided]
            else:
                ws = [row_w[i] for i in guided]
            x0 = self._sample_guided(
                _rows(obs, guided),
                [env_ids[i] for i in guided],
                torch.stack(prefixes).to(actions.device),
                torch.stack(ws),
                None if noise is None else _noise_rows(noise, guided, self.view.action_shape).to(actions.device),
                None if generator is None else [gens[i] for i in guided],
            )
            actions[guided] = self.view.to_action(x0, snap=True)
            nfe[guided] = self.steps
        self.policy.check_predicted_actions(actions, b)
        for i, e in enumerate(env_ids):
            self._prev[e] = actions[i].detach().clone()
        is_guided = torch.tensor([i in guided for i in range(b)])
        return PolicyOutput(actions, {"nfe": nfe, "guided": is_guided, "rtc_delay": used_d, "rtc_executed": used_s})

    def _sample_guided(
        self,
        obs: Mapping[str, Any],
        env_ids: list[int],
        prefix_actions: torch.Tensor,
        weights: torch.Tensor,
        noise: torch.Tensor | None,
        gens: list | None,
    ) -> torch.Tensor:
        """Normalized chunks of the guided rows (the prefix given in env units)."""
        with self.policy.inference_mode(), cpu_threads(self.policy.engine_config.threads):
            cond = self.view.encode(obs, env_ids=env_ids)
            if self.mode is RTCMode.TRAINED:
                x0 = sample_prefix(
                    self.view,
                    cond,
                    self.view.from_action(prefix_actions),
                    weights,
                    steps=self.steps,
                    method=self.method,
                    noise=noise,
                    generator=gens,
                    x0_clip=self.x0_clip,
                )
                return x0.clamp(-1.0, 1.0) if self.final_clip else x0
            x0 = sample_rtc(
                self.view,
                cond,
                self.view.from_action(prefix_actions),
                weights,
                steps=self.steps,
                method=self.method,
                max_guidance=self.config.max_guidance,
                noise=noise,
                generator=gens,
                x0_clip=self.x0_clip,
            )
        return x0.clamp(-1.0, 1.0) if self.final_clip else x0


def _ensure_autograd_engine(policy: Any) -> bool:
    """Switch the policy's network to the eager engine unless it already runs eagerly (RTC's
    backward pass needs autograd; the CPU engines are inference-only). True if switched."""
    cfg = getattr(policy, "engine_config", None)
    if cfg is None:
        return False
    eager = cfg.backend is Backend.EAGER or (cfg.backend is Backend.AUTO and policy.device.type == "cuda")
    if eager:
        return False
    policy.set_engine(dataclasses.replace(cfg, backend=Backend.EAGER))
    return True


def _per_row(v: int | Sequence[int], b: int, name: str) -> list[int]:
    vals = [int(v)] * b if np.ndim(v) == 0 else [int(x) for x in np.asarray(v).reshape(-1)]
    if len(vals) != b:
        raise ValueError(f"{name} must be one int or one per row ({b}), got {len(vals)}")
    if any(x < 0 for x in vals):
        raise ValueError(f"{name} must be >= 0, got {vals}")
    return vals


def _rows(obs: Mapping[str, Any], rows: list[int]) -> dict[str, Any]:
    return {k: v[rows] for k, v in obs.items()}


def _noise_rows(noise: Any, rows: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    n = torch.as_tensor(noise, dtype=torch.float32)
    if n.ndim == len(shape) + 2 and n.shape[1] == 1:
        n = n[:, 0]
    return n[rows]


def _rows_options(opts: Any, rows: list[int]) -> Any:
    """The policy's options for a subset of rows (its ``noise``, if any, indexed)."""
    noise = getattr(opts, "noise", None)
    if noise is None:
        return opts
    return dataclasses.replace(opts, noise=torch.as_tensor(noise)[rows])
