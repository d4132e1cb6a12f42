"""BESO (score-based EDM diffusion, goal-conditioned, classifier-free guidance). Importing registers ``"beso"``."""

from robopolicy.policies.beso.config import (
    GOAL_PREFIX,
    BesoConfig,
    BesoInferenceDefaults,
    BesoInferenceOptions,
    EDMConfig,
    GoalConfig,
    ScoreNetConfig,
)
from robopolicy.policies.beso.model import BesoPolicy, sample_log_logistic

__all__ = [
    "GOAL_PREFIX",
    "BesoConfig",
    "BesoInferenceDefaults",
    "BesoInferenceOptions",
    "BesoPolicy",
    "EDMConfig",
    "GoalConfig",
    "ScoreNetConfig",
    "sample_log_logistic",
]
