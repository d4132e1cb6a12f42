"""Inference-time machinery shared by evaluation and the real-time controller: the policy
output type, typed inference options, and methods that wrap any denoising policy (RTI).

``PolicyOutput`` is imported eagerly (the policy contract uses it); the rest lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from robopolicy.inference.output import PolicyOutput

_LAZY = {
    "RTI": "robopolicy.inference.rti",
    "RTIConfig": "robopolicy.inference.rti",
    "GripperMode": "robopolicy.inference.rti",
    "InferenceOptions": "robopolicy.inference.options",
    "InferenceMethod": "robopolicy.inference.options",
}

__all__ = ["PolicyOutput", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robopolicy.inference' has no attribute {name!r}")
