"""Typed config of EBT-Policy (Davies et al., 2025), made of parts.

Presets live in ``configs/policies/ebt_*.yaml`` and hold only the fields below (plus
``horizon`` / ``n_obs_steps`` / ``n_action_steps`` and the normalization fields of
:class:`~robopolicy.policy.PolicyConfig`); the observation and action specs come from the
dataset at training time::

    network: {d_model: 128, n_heads: 4, obs_layers: 2, energy_layers: 4, attn_dropout: 0.1}
    obs_encoder: {image_width: 32, image_feature_dim: 64, num_kp: 32, crop_shape: [76, 76]}
    descent: {step_size: 300, train_steps: 6, random_extra_steps: 3, step_size_scale: 1.5}
    inference: {num_inference_steps: 2, dynamic: false, max_steps: 20, grad_tol: 0.002}

``descent`` holds every constant of the energy-descent step (notes 2.2), shared by training and
inference; ``inference`` the defaults of :meth:`EBTPolicy.predict` (a call's options override
them). Fields that deviate from the reference code are marked *deviation* in their docstring.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, ClassVar

from robopolicy.data.normalizer import ACTION_KEY, NormMode
from robopolicy.nn.configs import ObsEncoderConfig
from robopolicy.policy import PolicyConfig


class MemoryMask(str, enum.Enum):
    """Which observation tokens an action token's cross-attention may read."""

    TIME_CAUSAL = "time_causal"
    """Action row t reads observation steps j <= t (the reference's memory mask; with To = 2 only
    action 0 is restricted, to the older frame)."""
    NONE = "none"
    """Every action row reads every observation token."""


class CandidateNorm(str, enum.Enum):
    """Over which elements the candidate's RMS normalisation ``RMSNorm_gamma(y)`` is taken."""

    CHUNK = "chunk"
    """Over each sample's whole chunk (H x Da). The reference calls ``F.rms_norm(y, y.shape)``: one RMS
    over the whole (B, H, Da) batch tensor, which couples the rows; per sample is the same at batch 1
    (its rollouts) and keeps the rows independent."""
    STEP = "step"
    """Over the Da dims of each action step (the notes' reading: "over the action dimension")."""


@dataclasses.dataclass(frozen=True)
class EBTNetworkConfig:
    """Sizes of the observation temporal encoder and the energy network (notes 2.1)."""

    d_model: int = 256
    """Token width d of both transformers."""
    n_heads: int = 4
    """Attention heads (must divide d_model)."""
    obs_layers: int = 8
    """Causal pre-norm blocks over the To observation tokens."""
    energy_layers: int = 8
    """Energy blocks (self-attention over the H action tokens, cross-attention to the obs tokens, MLP)."""
    mlp_ratio: float = 1.0
    """MLP hidden width / d_model (the reference uses hidden = d)."""
    attn_dropout: float = 0.3
    """Dropout on the attention weights (training only)."""
    proj_dropout: float = 0.0
    """Dropout after the attention and MLP projections (training only)."""
    memory_mask: MemoryMask = MemoryMask.TIME_CAUSAL
    """Cross-attention mask of the energy network."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "memory_mask", MemoryMask(self.memory_mask))
        for name in ("d_model", "n_heads", "obs_layers", "energy_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model must be a multiple of n_heads={self.n_heads}, got {self.d_model}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        for name in ("attn_dropout", "proj_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class EBTDescentConfig:
    """The energy-descent step (notes 2.2 / 2.3); defaults are the run template's (2.5)."""

    step_size: float = 1000.0
    """alpha: base step of ``v <- mu v - alpha rho exp(E) / tau * dE/dy``. The one sensitive knob:
    E is a mean over H x Da outputs, so raw gradients are small and alpha is large."""
    train_steps: int = 6
    """K0: fewest descent steps of a training batch."""
    random_extra_steps: int = 3
    """R: a training batch takes K = K0 + U{0..R+1} steps (redrawn every batch)."""
    step_size_scale: float = 1.5
    """s: training draws rho ~ U[1/s, s] per sample and step (1: no randomisation); 1 at inference."""
    temperature: float = 1.0
    """tau of the energy-scaled step ``alpha exp(E) / tau``."""
    momentum: float = 0.9
    """mu: Nesterov look-ahead ``y + mu v`` and velocity decay."""
    langevin_sigma_max: float = 0.2
    """Training-only Langevin noise at the first step (cosine-annealed to ``langevin_sigma_min``)."""
    langevin_sigma_min: float = 0.002
    """Langevin noise as k reaches K."""
    detach_velocity: bool = True
    """Detach the velocity between training steps, so each loss term trains only the step that made
    it (EBT's truncated training). The reference updates v in place and never detaches it, so a
    gradient path crosses steps through v (it looks unintended): False reproduces that."""
    energy_clamp: float | None = None
    """*Deviation* (off by default): clamp E to at most this value inside ``exp`` of the step size,
    a guard against a runaway step on a high-energy candidate. The reference has no clamp."""
    candidate_norm: CandidateNorm = CandidateNorm.CHUNK
    """Scope of the candidate's RMS normalisation (a learnable gain gamma per action dim follows it;
    the reference has no gain, which is gamma fixed at its initial 1)."""
    candidate_norm_eps: float = 1e-6
    """eps of the candidate's RMS normalisation."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidate_norm", CandidateNorm(self.candidate_norm))
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be finite and > 0, got {self.step_size}")
        if self.train_steps < 1:
            raise ValueError(f"train_steps must be >= 1, got {self.train_steps}")
        if self.random_extra_steps < 0:
            raise ValueError(f"random_extra_steps must be >= 0, got {self.random_extra_steps}")
        if not (math.isfinite(self.step_size_scale) and self.step_size_scale >= 1):
            raise ValueError(f"step_size_scale must be finite and >= 1, got {self.step_size_scale}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.langevin_sigma_min <= self.langevin_sigma_max < math.inf:
            raise ValueError(
                "Langevin noise needs 0 <= langevin_sigma_min <= langevin_sigma_max, got "
                f"{self.langevin_sigma_min} and {self.langevin_sigma_max}"
            )
        if self.energy_clamp is not None and not math.isfinite(self.energy_clamp):
            raise ValueError(f"energy_clamp must be finite or null, got {self.energy_clamp}")
        if not self.candidate_norm_eps > 0:
            raise ValueError(f"candidate_norm_eps must be > 0, got {self.candidate_norm_eps}")

    def langevin_sigma(self, k: int, num_steps: int) -> float:
        """Noise of training step k of K: ``min + (max - min) (1 + cos(pi k / K)) / 2``."""
        lo, hi = self.langevin_sigma_min, self.langevin_sigma_max
        return lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * k / num_steps))


@dataclasses.dataclass(frozen=True)
class EBTInferenceDefaults:
    """How ``predict`` descends by default (notes 2.4): ``paper`` mode, exactly ``num_inference_steps``
    clean steps; or ``dynamic`` mode, each row stepping until its energy-gradient norm falls
    below ``grad_tol`` (then one final step), at least 2 and at most ``max_steps`` steps."""

    num_inference_steps: int = 2
    """Steps of the fixed ("paper", EBT-2) mode."""
    dynamic: bool = False
    """Dynamic compute: stop each row on a small gradient instead of after ``num_inference_steps``."""
    max_steps: int = 20
    """Cap of the dynamic mode (>= 2: its first check always passes, then one final step)."""
    grad_tol: float = 0.002
    """Dynamic mode: a row stops (after one final step) once ``||dE/dy||_2 <= grad_tol``."""

    def __post_init__(self) -> None:
        check_steps(self.num_inference_steps, self.max_steps, self.grad_tol)


def check_steps(num_inference_steps: int | None, max_steps: int | None, grad_tol: float | None) -> None:
    """ValueError naming a bad step count or tolerance (``None``: not given)."""
    n = num_inference_steps
    if n is not None and (isinstance(n, bool) or n < 1):
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {n!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or max_steps < 2):
        raise ValueError(
            f"max_steps must be an integer >= 2 (dynamic mode always takes a step and a final step), got {max_steps!r}"
        )
    if grad_tol is not None and not (math.isfinite(grad_tol) and grad_tol >= 0):
        raise ValueError(f"grad_tol must be finite and >= 0, got {grad_tol!r}")


@dataclasses.dataclass(frozen=True)
class EBTInferenceOptions:
    """Inference options of EBT-Policy (``robopolicy eval --num-inference-steps 4``,
    ``--policy-option dynamic=true``).
    ``None`` means the config's value (``inference:``)."""

    num_inference_steps: int | None = None
    dynamic: bool | None = None
    max_steps: int | None = None
    grad_tol: float | None = None
    noise: Any = None
    """Initial candidate, standard normal (B, N, H, Da) or (B, H, Da), instead of drawing it (tests)."""

    def __post_init__(self) -> None:
        check_steps(self.num_inference_steps, self.max_steps, self.grad_tol)


@dataclasses.dataclass(frozen=True)
class EBTConfig(PolicyConfig):
    """EBT-Policy. Part defaults are the reference run template's (d 256, 8 + 8 layers, alpha
    1000, K 6-10, EBT-2 at inference); ``configs/policies/ebt_lowdim.yaml`` is the CPU size."""

    network: EBTNetworkConfig = dataclasses.field(default_factory=EBTNetworkConfig)
    """Transformer sizes (observation encoder and energy network)."""
    obs_encoder: ObsEncoderConfig = dataclasses.field(default_factory=ObsEncoderConfig)
    """Per-step observation features (the image fields are used only when there are images)."""
    descent: EBTDescentConfig = dataclasses.field(default_factory=EBTDescentConfig)
    """The energy-descent step and the training schedule of step counts and noise."""
    inference: EBTInferenceDefaults = dataclasses.field(default_factory=EBTInferenceDefaults)
    """Default steps / dynamic mode of ``predict`` (a call's options override them)."""

    preset_name: ClassVar[str] = "ebt"
    parts: ClassVar[dict[str, type]] = {
        "network": EBTNetworkConfig,
        "obs_encoder": ObsEncoderConfig,
        "descent": EBTDescentConfig,
        "inference": EBTInferenceDefaults,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        mode = self.normalization.get(ACTION_KEY, NormMode.LIMITS)
        if mode is not NormMode.LIMITS:
            raise ValueError(
                f"normalization.action must be 'limits' for EBT-Policy, got {mode.value!r}: the candidate starts "
                "from N(0, I) and is RMS-normalised, so the actions must live in [-1, 1] (the reference asserts it)"
            )
