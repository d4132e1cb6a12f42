"""Typed inference options: how a policy is run at evaluation and in the controller.

``InferenceOptions(method="native")`` runs the policy's own sampler with its typed options
(``policy={"sampler": "ddim", "num_inference_steps": 10}`` for Diffusion Policy, checked against
the policy's ``options_class``); ``method="rti"`` wraps any policy with a denoiser view in
:class:`~robopolicy.inference.rti.RTI`, ``method="rtc"`` in :class:`~robopolicy.inference.rtc.RTC`
(inpainting toward the previous chunk; in the synchronous runner with ``rtc.delay`` ticks frozen,
0 by default, and ``n_action_steps`` executed per chunk). ``n_action_steps`` executes fewer actions per chunk
than the policy's Ta (1: replan every step, as RTI's paper does).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from robopolicy.inference.rtc import RTC, RTCConfig
from robopolicy.inference.rti import RTI, RTIConfig


class InferenceMethod(str, enum.Enum):
    NATIVE = "native"
    """The policy's own sampler."""
    RTI = "rti"
    """Real-Time Iteration warm starts through the denoiser view."""
    RTC = "rtc"
    """Real-time chunking: inpainting toward the previous chunk through the denoiser view."""


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How to run a policy; see the module docstring."""

    method: InferenceMethod = InferenceMethod.NATIVE
    policy: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """The policy's own inference options (its ``options_class`` fields); also RTI's cold start."""
    rti: RTIConfig = RTIConfig()
    rtc: RTCConfig = RTCConfig()
    n_action_steps: int | None = None
    """Actions executed per chunk (default: the policy's Ta)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "method", InferenceMethod(self.method))
        except ValueError:
            raise ValueError(
                f"unknown inference method {self.method!r}; choose from {[m.value for m in InferenceMethod]}"
            ) from None
        object.__setattr__(self, "policy", {k: v for k, v in dict(self.policy).items() if v is not None})
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")

    def build(self, policy: Any) -> Any:
        """The object to call ``predict`` / ``reset`` / ``observe`` on: the policy or its RTI / RTC wrapper.
        Bad options are refused here, before any rollout."""
        policy.resolve_options(self.policy)
        if self.n_action_steps is not None and self.n_action_steps > policy.config.n_action_steps:
            raise ValueError(
                f"n_action_steps {self.n_action_steps} exceeds the policy's Ta = {policy.config.n_action_steps}"
            )
        if self.method is InferenceMethod.RTI:
            shift = self.rti.shift if self.rti.shift is not None else self.n_action_steps
            return RTI(policy, dataclasses.replace(self.rti, shift=shift))
        if self.method is InferenceMethod.RTC:
            executed = self.rtc.execute_horizon if self.rtc.execute_horizon is not None else self.n_action_steps
            return RTC(policy, dataclasses.replace(self.rtc, execute_horizon=executed))
        return policy

    def to_dict(self) -> dict[str, Any]:
        d = {"method": self.method.value, "policy": {k: _plain(v) for k, v in self.policy.items()}}
        if self.method is InferenceMethod.RTI:
            d["rti"] = {k: _plain(v) for k, v in dataclasses.asdict(self.rti).items()}
        if self.method is InferenceMethod.RTC:
            d["rtc"] = {k: _plain(v) for k, v in dataclasses.asdict(self.rtc).items()}
        if self.n_action_steps is not None:
            d["n_action_steps"] = self.n_action_steps
        return d


def _plain(v: Any) -> Any:
    return v.value if isinstance(v, enum.Enum) else v
