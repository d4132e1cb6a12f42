"""RTI: Real-Time Iteration warm starts for any policy with a denoiser view (training-free).

At an environment's first control step the chunk is sampled cold (the policy's own sampler).
At every later step, through the view alone:

1. the environment's previous chunk (normalized coordinate) is shifted by the ``shift`` actions
   executed since (default ``Ta``), and its end is padded by repeating the last action;
2. discrete dims (grippers, read from the action spec) are treated as configured:
   ``reset`` sets them to ``sign(g) * gripper_value`` (RTI-DP-clip: a small signed value is easy
   for the few low-noise steps to flip), ``keep`` leaves them (RTI-DP-scale, for a policy
   trained with its gripper scaled down, see :class:`GripperMode`);
3. that guess is the iterate at noise level ``sigma_start`` and ``steps`` sampler steps run
   from it down to 0 (``sample_chunk(view, cond, x_init=guess, sigma_start, steps)``);
4. the result is stored as the environment's new previous chunk.

State is per environment id and cleared by ``reset(env_ids)`` at episode start (the
reference code never resets it). With ``sigma_start`` at the top of the cold schedule and the
cold sampler's steps, a warm step is the cold sampler started from the guess.

Notes from the reference implementation (``../shared/research/seed_rti_beso.md`` B): it adds
no noise to the shifted guess and runs DDPM ancestral steps from timestep k0 (2-40 for clip
mode); here the method is any view sampler (``ddim`` by default, ``ddpm`` for the reference's
ancestral steps). The guess is placed in the view's variance-exploding coordinate as is
(``x = guess``); the reference feeds it to the VP network unscaled, i.e. ``x = guess *
sqrt(1 + sigma^2)``, which differs by under 1 % for the start levels it uses (sigma < 0.15).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from robopolicy.diffusion.samplers import SamplerMethod, randn_rows, sample_chunk
from robopolicy.inference.memory import EnvMemory
from robopolicy.inference.output import PolicyOutput


class WarmInit(str, enum.Enum):
    """How the shifted guess becomes the iterate at ``sigma_start``."""

    GUESS = "guess"
    """As is, no noise (the reference implementation)."""
    RENOISE = "renoise"
    """The forward process at ``sigma_start``: ``guess + sigma_start * eps`` (eps from the episode's
    generator), so the first warm step sees an input of the noise level it was trained on."""


class GripperMode(str, enum.Enum):
    """What happens to the discrete dims of the stored guess before a warm start."""

    RESET = "reset"
    """RTI-DP-clip: ``sign(g) * gripper_value`` (works with any checkpoint)."""
    KEEP = "keep"
    """RTI-DP-scale: unchanged (the policy was trained with its gripper scaled to about +-0.1)."""


@dataclasses.dataclass(frozen=True)
class RTIConfig:
    """RTI options (selectable at evaluation: ``robopolicy eval --inference rti --rti-steps 3``)."""

    steps: int = 3
    """Sampler steps (network evaluations) per warm-started control step."""
    start_t: float = 10.0
    """Start level, as the model's (possibly fractional) training timestep; ignored if
    ``sigma_start`` is set. The reference uses 2-40 for DP checkpoints (100 train steps)."""
    sigma_start: float | None = None
    """Start level as a noise level of the view (overrides ``start_t``)."""
    method: SamplerMethod = SamplerMethod.DDIM
    """Sampler of the warm steps (``ddpm``: the reference's ancestral steps)."""
    gripper: GripperMode = GripperMode.RESET
    gripper_value: float | None = None
    """RESET: magnitude of the guess's discrete dims in the normalized coordinate (1/f in the
    paper: f = 1 low-dim, f = 10 image). None: 0.1 (or the policy's ``discrete_action_scale`` if
    smaller). Measured (benchmarks/results/rti.md): with 1, PickPlaceCan's gripper never closes
    (0/50); with 0.1, 36/50 (Can) and 50/50 (Lift)."""
    shift: int | None = None
    """Actions executed between two calls (default: the policy's Ta)."""
    init: WarmInit = WarmInit.GUESS

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", SamplerMethod(self.method))
        object.__setattr__(self, "init", WarmInit(self.init))
        object.__setattr__(self, "gripper", GripperMode(self.gripper))
        if self.steps < 1:
            raise ValueError(f"rti steps must be >= 1, got {self.steps}")
        if self.shift is not None and self.shift < 0:
            raise ValueError(f"rti shift must be >= 0, got {self.shift}")
        if self.sigma_start is not None and not self.sigma_start > 0:
            raise ValueError(f"rti sigma_start must be > 0, got {self.sigma_start}")
        if self.start_t < 0:
            raise ValueError(f"rti start_t must be >= 0, got {self.start_t}")


class RTI:
    """A policy with RTI warm starts: ``predict(obs, env_ids=..., generator=...)`` / ``reset``.

    ``policy`` must expose ``denoiser_view()`` and ``predict(...)`` (its cold start).
    """

    def __init__(self, policy: Any, config: RTIConfig = RTIConfig()) -> None:
        if not hasattr(policy, "denoiser_view"):
            raise ValueError(f"RTI needs a policy with a denoiser view; {type(policy).__name__} has none")
        self.policy = policy
        self.config = config
        self.view = policy.denoiser_view()
        pc = policy.config
        self.shift = pc.n_action_steps if config.shift is None else config.shift
        self.discrete = [i for i, d in enumerate(pc.action_spec.discrete) if d]
        self.sigma_start = self._sigma_start()
        scale = float(getattr(pc, "discrete_action_scale", 1.0))
        self.gripper_value = float(config.gripper_value if config.gripper_value is not None else min(0.1, scale))
        self._guess = EnvMemory()  # env id -> (*action_shape) normalized chunk

    def _sigma_start(self) -> float:
        c, view = self.config, self.view
        if c.sigma_start is not None:
            sigma = float(c.sigma_start)
        elif not hasattr(view, "t_to_sigma"):
            raise ValueError(
                f"{type(view).__name__} has no timestep grid, so rti start_t cannot name a level: set rti "
                f"sigma_start (--rti-sigma-start), a noise level in [{view.sigma_min:.4g}, {view.sigma_max:.4g}] "
                "(benchmarks/bench_rti.py estimate measures one)"
            )
        else:
            sigma = float(view.t_to_sigma(torch.tensor([float(c.start_t)], dtype=torch.float64))[0])
        view.check_sigma(torch.tensor([sigma], dtype=torch.float64))  # refuse a level the model never saw
        return sigma

    @property
    def config_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.config),
            "sigma_start_resolved": self.sigma_start,
            "gripper_value_resolved": self.gripper_value,
        }

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Forget the warm starts of ``env_ids`` (all if None); also resets the wrapped policy."""
        self._guess.reset(self.policy, env_ids)

    def shifted_guess(self, prev: torch.Tensor) -> torch.Tensor:
        """The previous chunk (H, Da) advanced by ``shift`` actions, end padded, grippers treated."""
        h = prev.shape[0]
        s = min(self.shift, h - 1)
        guess = torch.cat([prev[s:], prev[-1:].expand(s, *prev.shape[1:])]) if s > 0 else prev.clone()
        if self.discrete and self.config.gripper is GripperMode.RESET:
            g = guess[..., self.discrete]
            guess[..., self.discrete] = torch.where(g >= 0, 1.0, -1.0).to(g.dtype) * self.gripper_value
        return guess

    @property
    def observes_every_step(self) -> bool:
        return self.policy.observes_every_step

    def observe(self, obs: Mapping[str, Any], *, env_ids: Sequence[int]) -> None:
        self.policy.observe(obs, env_ids=env_ids)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    def predict(
        self,
        obs: Mapping[str, Any],
        *,
        env_ids: Sequence[int] | None = None,
        generator: Any = None,
        num_samples: int = 1,
        options: Any = None,
    ) -> PolicyOutput:
        """Chunks (B, H, Da) in env units; rows whose environment has a stored chunk are
        warm-started, the others sampled cold by the policy with ``options``."""
        if num_samples != 1:
            raise ValueError("RTI keeps one chunk per environment: num_samples must be 1")
        b = self.policy.check_obs(obs)
        env_ids = list(range(b)) if env_ids is None else [int(e) for e in env_ids]
        gens = generator if isinstance(generator, (list, tuple)) else [generator] * b
        warm = [i for i, e in enumerate(env_ids) if e in self._guess]
        cold = [i for i, e in enumerate(env_ids) if e not in self._guess]
        x0 = torch.empty(b, *self.view.action_shape, device=self.policy.device)
        nfe = torch.zeros(b, dtype=torch.int64)
        if cold:
            out = self.policy.predict(
                _rows(obs, cold),
                env_ids=[env_ids[i] for i in cold],
                generator=None if generator is None else [gens[i] for i in cold],
                options=options,
            )
            x0[cold] = self.view.from_action(out.actions.to(x0.device))
            nfe[cold] = torch.as_tensor(out.info.get("nfe", 0), dtype=torch.int64)
        if warm:
            with self.policy.inference_mode():
                cond = self.view.encode(_rows(obs, warm), env_ids=[env_ids[i] for i in warm])
                guess = torch.stack([self.shifted_guess(self._guess[env_ids[i]]) for i in warm]).to(x0.device)
                if self.config.init is WarmInit.RENOISE:
                    wg = None if generator is None else [gens[i] for i in warm]
                    guess = guess + self.sigma_start * randn_rows(tuple(guess.shape), wg, guess.device)
                x0[warm] = sample_chunk(
                    self.view,
                    cond,
                    x_init=guess,
                    sigma_start=self.sigma_start,
                    method=self.config.method,
                    steps=self.config.steps,
                    generator=None if generator is None else [gens[i] for i in warm],
                    x0_clip=getattr(self.policy, "x0_clip", None),
                )
            nfe[warm] = self.config.steps
        for i, e in enumerate(env_ids):
            self._guess[e] = x0[i].detach().clone()
        actions = self.view.to_action(x0, snap=True)
        self.policy.check_predicted_actions(actions, b)
        return PolicyOutput(actions, {"nfe": nfe, "warm": torch.tensor([i in warm for i in range(b)])})


def _rows(obs: Mapping[str, Any], rows: list[int]) -> dict[str, Any]:
    """The batch rows ``rows`` of an observation mapping."""
    return {k: v[rows] if torch.is_tensor(v) else v[rows] for k, v in obs.items()}


@dataclasses.dataclass(frozen=True)
class StartLevelEstimate:
    """What :func:`estimate_start_level` measured."""

    shift_error_rms: float
    """RMS over held-out windows of (shifted previous chunk - next cold chunk), normalized units."""
    shift_error_p90: float
    sigma_start: float
    start_t: float | None
    """The start level as a training timestep (None for a view without a timestep grid)."""
    windows: int
    contraction: float
    """Product over the warm schedule's steps of the ideal single-mode denoiser's Lipschitz factor
    (< 1: the warm steps shrink the guess's error)."""

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@torch.no_grad()
def estimate_start_level(
    policy: Any,
    windows: Sequence[Mapping[str, Any]],
    next_windows: Sequence[Mapping[str, Any]],
    *,
    steps: int = 3,
    shift: int | None = None,
    quantile: float = 0.9,
    generator_seed: int = 0,
) -> StartLevelEstimate:
    """Start level for RTI from held-out data and the contractivity condition.

    For pairs of held-out observation windows one control step apart (``windows[i]`` and
    ``next_windows[i]``, ``{key: (To, ...)}`` env units), the policy samples both chunks cold;
    the first is shifted as RTI shifts it. The warm start must absorb the difference between
    that guess and the next chunk, so the start level is the noise level whose std covers it:
    ``sigma_start = quantile(|guess - x*|)`` (per element, normalized units), clipped to the
    trained range. ``contraction`` reports ``prod_k sqrt(a_k) (1 - a_{k-1}) / (1 - a_k)`` over the
    resulting warm schedule (the ideal single-mode denoiser's factor from the notes; < 1 means
    the few steps contract the guess's error toward the denoiser's fixed point).
    """
    rti = RTI(policy, RTIConfig(steps=steps, shift=shift, sigma_start=policy.denoiser_view().sigma_max))
    view = rti.view
    errs = []
    for i, (w0, w1) in enumerate(zip(windows, next_windows)):
        seed = generator_seed + i  # the same noise for both: the difference is the observations' doing
        a0 = policy.predict({k: np.asarray(v)[None] for k, v in w0.items()}, generator=_gen(seed)).actions
        a1 = policy.predict({k: np.asarray(v)[None] for k, v in w1.items()}, generator=_gen(seed)).actions
        guess = rti.shifted_guess(view.from_action(a0)[0])
        errs.append((guess - view.from_action(a1)[0]).abs().flatten())
    if not errs:
        raise ValueError("estimate_start_level needs at least one pair of windows")
    e = torch.cat(errs).double()
    sigma = float(torch.quantile(e, quantile).clamp(view.sigma_min, view.sigma_max))
    t = float(view.sigma_to_t(torch.tensor([sigma], dtype=torch.float64))[0]) if hasattr(view, "sigma_to_t") else None
    sig = view.sigmas(steps, sigma)[:-1]  # the warm schedule's levels (the final step to 0 is excluded:
    a = 1.0 / (1.0 + sig**2)  # the ideal denoiser maps everything to its mean there, factor 0)
    a_t, a_next = a[:-1], a[1:]
    factor = (a_t / a_next).sqrt() * (1 - a_next) / (1 - a_t).clamp_min(1e-12)
    return StartLevelEstimate(
        shift_error_rms=float(e.pow(2).mean().sqrt()),
        shift_error_p90=float(torch.quantile(e, 0.9)),
        sigma_start=sigma,
        start_t=t,
        windows=len(errs),
        contraction=float(factor.prod()),
    )


def _gen(seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed)]
