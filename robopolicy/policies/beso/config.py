"""Typed config of BESO (Reuss et al., 2023): score-based EDM diffusion over action chunks with a
causal score transformer, goals from future observations and classifier-free guidance.

A preset (``configs/policies/beso_lowdim.yaml``) holds::

    policy: beso
    horizon: 16
    n_obs_steps: 2
    n_action_steps: 8
    net: {d_model: 128, n_layer: 4, n_head: 4, p_drop_attn: 0.05}
    edm: {sigma_data: 0.5, sigma_min: 0.005, sigma_max: 1.0, schedule: exponential}
    goal: {enabled: true, mask_prob: 0.1}
    inference: {sampler: dpm_solver_1, num_inference_steps: 3, guidance_weight: 1.0}

Defaults are BESO's (``../shared/research/seed_rti_beso.md`` section C): sigma_data 0.5, the
relay-kitchen sigma range (0.005, 1), the truncated log-logistic training density (loc ln
sigma_data, scale 0.5), the exponential 3-step schedule and the first-order DPM-Solver.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

from robopolicy.data.normalizer import ACTION_KEY, NormMode
from robopolicy.data.windows import DataWindows, FrameRef
from robopolicy.diffusion.samplers import InferenceDefaults, SamplerMethod
from robopolicy.nn.configs import ObsEncoderConfig
from robopolicy.policies.diffusion.config import DiffusionInferenceOptions
from robopolicy.policy import PolicyConfig
from robopolicy.types import GOAL_PREFIX


@dataclasses.dataclass(frozen=True)
class ScoreNetConfig:
    """The score transformer (:class:`~robopolicy.nn.score_gpt.ScoreGPT`)."""

    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.05
    """Dropout inside the blocks (attention and residual; BESO block push: 0.05 / 0.05)."""
    causal: bool = False
    """BESO's causal mask (action j sees the actions before it only). Off by default here: every
    observation precedes the chunk anyway, and the mask only hides later action tokens, which
    left chunks incoherent on the bimodal toy (modes switching inside a chunk; README)."""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layer", "n_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"net.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"net.d_model ({self.d_model}) must be divisible by net.n_head ({self.n_head})")
        for name in ("p_drop_emb", "p_drop_attn"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"net.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class EDMConfig:
    """EDM preconditioning, the training noise density and the sampling schedule."""

    sigma_data: float = 0.5
    sigma_min: float = 0.005
    sigma_max: float = 1.0
    density_loc: float | None = None
    """Training: ln(sigma) ~ Logistic(loc, scale) truncated to [sigma_min, sigma_max]; None: ln(sigma_data)."""
    density_scale: float = 0.5
    schedule: str = "exponential"
    """Sampling schedule from sigma_max to sigma_min: ``exponential`` (BESO's default), ``karras``, ``linear``."""
    rho: float = 7.0
    """Karras schedule's rho (only for ``schedule: karras``)."""

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"edm: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not self.sigma_data > 0 or not self.density_scale > 0:
            raise ValueError(
                f"edm.sigma_data and edm.density_scale must be > 0, got {self.sigma_data}, {self.density_scale}"
            )
        if self.schedule not in ("exponential", "karras", "linear"):
            raise ValueError(f"edm.schedule must be exponential, karras or linear, got {self.schedule!r}")

    @property
    def loc(self) -> float:
        return math.log(self.sigma_data) if self.density_loc is None else float(self.density_loc)


@dataclasses.dataclass(frozen=True)
class GoalConfig:
    """Goals: one future observation frame of the same demonstration (every observation key)."""

    enabled: bool = True
    """False: no goal token at all (a goal-free BESO)."""
    min_offset: int | None = None
    """First step after the anchor a goal may come from; None: just after the action window
    (``H - To + 1``), as BESO draws goals after the window's end."""
    mask_prob: float = 0.1
    """Classifier-free guidance training: each sample's goal is dropped with this probability
    (BESO's ``cond_mask_prob``; 0 trains a goal-conditioned-only model)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_prob <= 1.0:
            raise ValueError(f"goal.mask_prob must be in [0, 1], got {self.mask_prob}")
        if self.min_offset is not None and self.min_offset < 1:
            raise ValueError(f"goal.min_offset must be >= 1 (a future frame), got {self.min_offset}")


def _check_weight(w: float | None, name: str) -> None:
    if w is not None and not (math.isfinite(w) and w >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {w}")


@dataclasses.dataclass(frozen=True)
class BesoInferenceDefaults(InferenceDefaults):
    """Default sampling (``inference:``): the shared defaults' fields, BESO's values, plus guidance."""

    sampler: SamplerMethod = SamplerMethod.DPM_SOLVER_1
    num_inference_steps: int = 3
    guidance_weight: float = 1.0
    """D = D_uncond + w (D_cond - D_uncond) when a goal is given: 1 is the plain conditional
    pass (one network call per step), 0 the goal-free policy, > 1 guided (two calls per step,
    batched into one). Without a goal the policy is goal-free whatever w is."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weight(self.guidance_weight, "inference.guidance_weight")


@dataclasses.dataclass(frozen=True)
class BesoInferenceOptions(DiffusionInferenceOptions):
    """Per-call options (``robopolicy eval --policy-option guidance_weight=2``): Diffusion
    Policy's (sampler, steps, initial noise) plus the guidance weight; None: the config's."""

    guidance_weight: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_weight(self.guidance_weight, "guidance_weight")


@dataclasses.dataclass(frozen=True)
class BesoConfig(PolicyConfig):
    """BESO over action chunks (H 16, To 2, Ta 8 by default, as Diffusion Policy)."""

    preset_name: ClassVar[str] = "beso"
    parts: ClassVar[dict[str, type]] = {
        "net": ScoreNetConfig,
        "obs_encoder": ObsEncoderConfig,
        "edm": EDMConfig,
        "goal": GoalConfig,
        "inference": BesoInferenceDefaults,
    }

    net: ScoreNetConfig = dataclasses.field(default_factory=ScoreNetConfig)
    obs_encoder: ObsEncoderConfig = dataclasses.field(default_factory=ObsEncoderConfig)
    edm: EDMConfig = dataclasses.field(default_factory=EDMConfig)
    goal: GoalConfig = dataclasses.field(default_factory=GoalConfig)
    inference: BesoInferenceDefaults = dataclasses.field(default_factory=BesoInferenceDefaults)
    clip_sample: bool = True
    """Clip the final chunk to the normalized data bounds [-1, 1] (BESO clips its actions to the
    data's bounds); needs limits normalization of the actions."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.normalization.get(ACTION_KEY) is NormMode.GAUSSIAN and self.clip_sample:
            raise ValueError(
                "normalization.action: 'gaussian' puts actions outside [-1, 1], where clip_sample clips "
                "them; set clip_sample: false (or normalize actions by limits)"
            )

    @property
    def goal_offset(self) -> int:
        """First step after the anchor a training goal may come from."""
        g = self.goal.min_offset
        return self.horizon - self.n_obs_steps + 1 if g is None else g

    @property
    def goal_keys(self) -> list[str]:
        """The observation names a goal is passed under: ``goal.<key>`` per observation key."""
        return [GOAL_PREFIX + k for k in self.obs_spec.keys] if self.goal.enabled else []

    def data_windows(self) -> DataWindows:
        """Diffusion Policy's windows plus, with goals, one random future frame of every
        observation key (``goal.<key>``, all from the same step)."""
        extras = {}
        if self.goal.enabled:
            extras = {GOAL_PREFIX + k: FrameRef(k, self.goal_offset, future=True) for k in self.obs_spec.keys}
        return DataWindows.from_timing(
            self.obs_spec.keys, self.horizon, self.n_obs_steps, self.n_action_steps, extras=extras
        )
