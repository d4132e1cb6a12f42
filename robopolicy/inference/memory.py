"""Per-environment memory of actors that wrap a policy (RTI's warm start, RTC's previous chunk)."""

from __future__ import annotations

from collections.abc import Sequence


class EnvMemory(dict):
    """Env id -> tensor. ``reset(policy, env_ids)`` forgets those environments (all if None) and
    resets the wrapped policy's own per-environment state with them."""

    def forget(self, env_ids: Sequence[int] | None = None) -> None:
        if env_ids is None:
            self.clear()
        else:
            for e in env_ids:
                self.pop(int(e), None)

    def reset(self, policy: object, env_ids: Sequence[int] | None = None) -> None:
        self.forget(env_ids)
        policy.reset(env_ids)  # type: ignore[attr-defined]


__all__ = ["EnvMemory"]
