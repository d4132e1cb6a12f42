"""Policy-side faults for dry runs, tests and the fault benchmark (the driver-side ones are the
mock arm's :class:`~robopolicy.control.drivers.mock.FaultSpec`).

:class:`FaultyActor` wraps a policy or an actor and misbehaves from its ``at``-th prediction
(counted from the last ``reset``, so the controller's warm-up call does not count):

=========  ================================================================
raise      raises a RuntimeError (as a CUDA error or a bug would)
nan        returns the chunk with one NaN (action 3, dimension 1)
slow       sleeps ``slow_s`` before returning (a policy slower than the deadline)
=========  ================================================================
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from robopolicy.inference.output import PolicyOutput

MODES = ("raise", "nan", "slow")


class FaultyActor:
    """``policy`` (or an actor) that fails per ``mode`` from its ``at``-th ``predict`` on."""

    def __init__(self, policy: Any, mode: str, at: int = 3, slow_s: float = 0.6) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown actor fault {mode!r}; choose from {list(MODES)}")
        if at < 1:
            raise ValueError(f"at must be >= 1, got {at}")
        self.inner, self.mode, self.at, self.slow_s = policy, mode, int(at), float(slow_s)
        self.policy = getattr(policy, "policy", policy)
        self.calls = 0

    @property
    def observes_every_step(self) -> bool:
        return bool(getattr(self.inner, "observes_every_step", False))

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        self.calls = 0
        self.inner.reset(env_ids)

    def observe(self, obs: Mapping[str, Any], *, env_ids: Sequence[int]) -> None:
        self.inner.observe(obs, env_ids=env_ids)

    def predict(self, obs: Mapping[str, Any], **kwargs: Any) -> PolicyOutput:
        self.calls += 1
        out = self.inner.predict(obs, **kwargs)
        if self.calls < self.at:
            return out
        if self.mode == "raise":
            raise RuntimeError("injected fault: CUDA error: an illegal memory access was encountered")
        if self.mode == "nan":
            a = out.actions.clone()
            a[0, min(3, a.shape[1] - 1), 1] = float("nan")
            return PolicyOutput(a, out.info)
        time.sleep(self.slow_s)
        return out


__all__ = ["MODES", "FaultyActor"]
