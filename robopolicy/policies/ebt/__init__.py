"""EBT-Policy (energy-based transformer, inference by gradient descent). Importing registers ``"ebt"``."""

from robopolicy.policies.ebt.config import (
    CandidateNorm,
    EBTConfig,
    EBTDescentConfig,
    EBTInferenceDefaults,
    EBTInferenceOptions,
    EBTNetworkConfig,
    MemoryMask,
)
from robopolicy.policies.ebt.model import EBTPolicy

__all__ = [
    "CandidateNorm",
    "EBTConfig",
    "EBTDescentConfig",
    "EBTInferenceDefaults",
    "EBTInferenceOptions",
    "EBTNetworkConfig",
    "EBTPolicy",
    "MemoryMask",
]
