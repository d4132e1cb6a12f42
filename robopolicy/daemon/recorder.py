"""Every daemon episode, recorded into a Zarr episode store ready for ``robopolicy train``.

The :class:`RunRecorder` is the controller's :class:`~robopolicy.control.controller.TickObserver`:
in the loop thread it only appends to lists; :meth:`RunRecorder.finish` writes the episode with
:meth:`~robopolicy.data.store.EpisodeStore.add_episode`, whose append is crash-safe (data first,
``episode_ends`` last; a store opened for appending rolls a partial tail back). A daemon killed
mid-episode therefore loses that episode and nothing before it.

Per tick (fields of the store, all of one episode's length)::

    <obs key>         every observation the driver returns (images with recording.images)
    action            (Da,) float32   what was sent to the arm (after the safety filter; the hold
                                      action on a fault tick)
    policy_action     (Da,) float32   what the policy's chunk asked for before the filter (NaN: none)
    predicted_chunk   (H, Da) float32 the newest merged chunk at that tick (NaN before the first)
    chunk_index       ()  int32       its number in the episode (-1: none yet)
    timestamp         ()  float64     capture time of the observation [s since the episode's start]
    tick_time         ()  float64     start of the tick [s since the episode's start]
    tick              ()  int32
    safety            ()  int32       bit i set: SAFETY_KINDS[i] happened on the tick (clamps, faults)

Per episode (``meta/episode_metadata``): ``source: daemon``, the end reason, the driver's success
(episodic drivers), the faults, the e-stops, per-kind clamp counts, the checkpoint, the seed, the
telemetry path, wall-clock start, and ``operator_success`` once the operator labels it
(``null`` until then).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.control.drivers.base import Reading
from robopolicy.control.safety import CLAMP_KINDS, FAULT_KINDS
from robopolicy.control.telemetry import ChunkRecord, TickRecord
from robopolicy.data.store import EpisodeStore
from robopolicy.types import IMAGE_PREFIX, ActionSpec

SAFETY_KINDS = FAULT_KINDS + CLAMP_KINDS
"""Bit order of the ``safety`` field."""
SOURCE = "daemon"


def open_store(path: Path, action_spec: ActionSpec, control_rate: float) -> EpisodeStore:
    """The recording store at ``path``, created if missing; opening it for appending rolls back an
    episode a killed daemon left half written. A store recorded for another action space or rate
    is refused (ValueError naming both), so recordings never mix."""
    if not path.exists():
        return EpisodeStore.create(path, action_spec=action_spec, control_rate=control_rate, source=SOURCE)
    store = EpisodeStore.open(path, "a")
    spec = store.action_spec
    if spec is not None and spec.names != action_spec.names:
        raise ValueError(
            f"recording store {path} holds actions {list(spec.names)}, this arm's are {list(action_spec.names)}: "
            "set recording.store to another path"
        )
    rate = store.control_rate
    if rate is not None and not math.isclose(rate, control_rate):
        raise ValueError(
            f"recording store {path} was recorded at {rate} Hz, the controller runs at {control_rate} Hz: "
            "set recording.store to another path"
        )
    return store


class RunRecorder:
    """One episode's recording (see the module docstring)."""

    def __init__(
        self,
        obs_shapes: dict[str, tuple[tuple[int, ...], np.dtype]],
        action_dim: int,
        chunk_shape: tuple[int, int],
        *,
        images: bool = True,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.keys = [k for k in obs_shapes if images or not k.startswith(IMAGE_PREFIX)]
        self.obs_shapes = obs_shapes
        self.action_dim = action_dim
        self.chunk_shape = chunk_shape
        self.meta = dict(meta or {})
        self.t0: float | None = None
        self.wall_start = time.time()
        self._cols: dict[str, list[Any]] = {
            k: []
            for k in (
                *self.keys,
                "action",
                "policy_action",
                "chunk_index",
                "timestamp",
                "tick_time",
                "tick",
                "safety",
            )
        }
        self._chunk_at_tick: list[np.ndarray | None] = []
        self._chunk: np.ndarray | None = None
        self._n_chunks = 0
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the loop thread
    def tick(self, rec: TickRecord, reading: Reading | None, policy_action: np.ndarray | None) -> None:
        if reading is None or rec.action is None:  # nothing observed or nothing sent: no sample
            return
        if self.t0 is None:
            self.t0 = reading.t - (rec.t_start or 0.0)
        c = self._cols
        for k in self.keys:
            c[k].append(np.asarray(reading.obs[k]))
        c["action"].append(np.asarray(rec.action, dtype=np.float32))
        c["policy_action"].append(
            np.full(self.action_dim, np.nan, np.float32)
            if policy_action is None
            else np.asarray(policy_action, dtype=np.float32)
        )
        c["chunk_index"].append(self._n_chunks - 1)
        c["timestamp"].append(reading.t - self.t0)
        c["tick_time"].append(rec.t_start)
        c["tick"].append(rec.tick)
        bits = 0
        for kind in rec.safety:
            if kind in SAFETY_KINDS:
                bits |= 1 << SAFETY_KINDS.index(kind)
        c["safety"].append(bits)
        self._chunk_at_tick.append(self._chunk)

    def chunk(self, rec: ChunkRecord, chunk: np.ndarray) -> None:
        a = np.full(self.chunk_shape, np.nan, np.float32)
        src = np.asarray(chunk, dtype=np.float32)
        h = min(a.shape[0], src.shape[0])
        a[:h] = src[:h]
        self._chunk = a
        self._n_chunks += 1

    # ------------------------------------------------------------------ other threads
    def event(self, kind: str, **fields: Any) -> None:
        """An operator or daemon event during the episode (e-stop, stop)."""
        with self._lock:
            self._events.append({"kind": kind, "wall_time": time.time(), **fields})

    @property
    def n_steps(self) -> int:
        return len(self._cols["tick"])

    def episode(self) -> dict[str, np.ndarray]:
        """The recorded steps as store fields (call after the run ended)."""
        c = self._cols
        out: dict[str, np.ndarray] = {}
        for k in self.keys:
            out[k] = np.stack(c[k]).astype(self.obs_shapes[k][1], copy=False)
        out["action"] = np.stack(c["action"])
        out["policy_action"] = np.stack(c["policy_action"])
        nan_chunk = np.full(self.chunk_shape, np.nan, np.float32)
        out["predicted_chunk"] = np.stack([nan_chunk if x is None else x for x in self._chunk_at_tick])
        out["chunk_index"] = np.asarray(c["chunk_index"], dtype=np.int32)
        out["timestamp"] = np.asarray(c["timestamp"], dtype=np.float64)
        out["tick_time"] = np.asarray(c["tick_time"], dtype=np.float64)
        out["tick"] = np.asarray(c["tick"], dtype=np.int32)
        out["safety"] = np.asarray(c["safety"], dtype=np.int32)
        return out

    def finish(self, store: EpisodeStore, result: Any) -> int | None:
        """Append the episode to ``store``; returns its index (None: no tick was recorded)."""
        if self.n_steps == 0:
            return None
        summary = getattr(result, "summary", {}) or {}
        meta = {
            **self.meta,
            "source": SOURCE,
            "wall_start": self.wall_start,
            "end_reason": getattr(result, "end_reason", None),
            "success": getattr(result, "success", None),
            "faults": [{k: f.get(k) for k in ("kind", "message", "tick")} for f in getattr(result, "faults", [])],
            "events": list(self._events),
            "safety_counts": (summary.get("counters") or {}).get("safety"),
            "chunks": self._n_chunks,
            "operator_success": None,
        }
        return store.add_episode(self.episode(), meta)


__all__ = ["SAFETY_KINDS", "RunRecorder", "open_store"]
