"""Checkpoints of other stacks converted into robopolicy policies (``robopolicy import-checkpoint``).

* :mod:`.lerobot`: a lerobot 0.4 ``DiffusionPolicy`` checkpoint directory (``config.json``,
  ``model.safetensors``, the pre/post-processor files) -> a Diffusion Policy checkpoint that
  :meth:`robopolicy.policy.Policy.load` reads. lerobot itself is not imported.

The converters are imported lazily, so ``robopolicy --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "UnsupportedCheckpointError": "robopolicy.checkpoints.lerobot",
    "convert_lerobot_diffusion": "robopolicy.checkpoints.lerobot",
    "import_lerobot_checkpoint": "robopolicy.checkpoints.lerobot",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robopolicy.checkpoints' has no attribute {name!r}")
