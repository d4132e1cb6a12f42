"""The chunk executor: one place that turns action chunks into per-step actions, shared by the
evaluation runner and the real-time controller.

Per environment id it holds the observation history (the last ``To`` frames; at episode start
the first frame repeated, as diffusion_policy does) and the queue of actions still to execute.
A new chunk ``(H, Da)`` contributes its executed slice ``[To-1, To-1+Ta)``: the first executed
action is the one aligned with the newest observation::

    obs history     |o o|                        (To = 2)
    chunk           |a a a a a a a a a a a a a a a a|   (H = 16)
    executed           |a a a a a a a a|                [To-1, To-1+Ta), Ta = 8

The runner asks which environments need a chunk (:meth:`needing_chunk`), batches their
histories (:meth:`batch_obs`), hands each its chunk (:meth:`set_chunk`) and executes the
queued actions (:meth:`take`), feeding back every observation it sees (:meth:`observe`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from robopolicy.types import ChunkTiming


@dataclasses.dataclass
class _EnvState:
    history: deque
    queue: deque
    steps: int = 0
    chunks: int = 0


class ChunkExecutor:
    """Observation histories and action queues keyed by environment id."""

    def __init__(self, timing: ChunkTiming, obs_keys: Sequence[str], n_action_steps: int | None = None) -> None:
        self.timing = timing
        self.keys = list(obs_keys)
        self.n_action_steps = timing.n_action_steps if n_action_steps is None else int(n_action_steps)
        if not 1 <= self.n_action_steps <= timing.n_action_steps:
            raise ValueError(f"n_action_steps must be in [1, Ta={timing.n_action_steps}], got {self.n_action_steps}")
        self._envs: dict[int, _EnvState] = {}

    # ------------------------------------------------------------------ episodes
    def start(self, env_id: int, obs: Mapping[str, Any]) -> None:
        """A new episode in ``env_id``: history = the first frame repeated, empty queue."""
        frame = self._frame(obs)
        to = self.timing.n_obs_steps
        self._envs[int(env_id)] = _EnvState(deque([frame] * to, maxlen=to), deque())

    def end(self, env_id: int) -> None:
        self._envs.pop(int(env_id), None)

    @property
    def env_ids(self) -> list[int]:
        return sorted(self._envs)

    def __contains__(self, env_id: int) -> bool:
        return int(env_id) in self._envs

    # ------------------------------------------------------------------ stepping
    def observe(self, env_id: int, obs: Mapping[str, Any]) -> None:
        """The observation after an executed action."""
        st = self._envs[int(env_id)]
        st.history.append(self._frame(obs))
        st.steps += 1

    def needing_chunk(self) -> list[int]:
        """Environments whose action queue is empty, in id order."""
        return [e for e in sorted(self._envs) if not self._envs[e].queue]

    def batch_obs(self, env_ids: Sequence[int]) -> dict[str, np.ndarray]:
        """``{key: (B, To, ...)}`` of the histories of ``env_ids`` (row b is ``env_ids[b]``)."""
        return {k: np.stack([np.stack([f[k] for f in self._envs[int(e)].history]) for e in env_ids]) for k in self.keys}

    def set_chunk(self, env_id: int, chunk: Any) -> None:
        """Queue the executed slice of ``chunk`` (H, Da) for ``env_id`` (replacing what was queued)."""
        a = np.asarray(chunk, dtype=np.float32)
        h = self.timing.horizon
        if a.ndim != 2 or a.shape[0] != h:
            raise ValueError(f"a chunk must have shape ({h}, Da), got {a.shape}")
        start = self.timing.n_obs_steps - 1
        st = self._envs[int(env_id)]
        st.queue = deque(a[start : start + self.n_action_steps])
        st.chunks += 1

    def take(self, env_id: int, n: int | None = None) -> np.ndarray:
        """Pop ``n`` queued actions (all if None): (n, Da)."""
        q = self._envs[int(env_id)].queue
        n = len(q) if n is None else min(int(n), len(q))
        if n == 0:
            raise ValueError(f"environment {env_id} has no queued action (set a chunk first)")
        return np.stack([q.popleft() for _ in range(n)])

    def queued(self, env_id: int) -> int:
        return len(self._envs[int(env_id)].queue)

    def _frame(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"observation is missing {missing} (has {sorted(obs)})")
        return {k: np.asarray(obs[k]) for k in self.keys}
