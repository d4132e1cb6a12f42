"""The chunk scheduler: which action executes at each control tick, as chunks arrive late.

Time is in integer control ticks, passed in by the caller (no clock, no thread). A chunk
computed from the observation taken at tick ``obs_tick`` is aligned as the chunk executor
aligns it: index ``To-1`` (the newest observation's) is the action for ``obs_tick``, index
``i`` the one for ``obs_tick + i - (To-1)``; the scheduler keeps the ``keep`` actions from
index ``To-1`` on (default all ``H - To + 1``)::

    obs_tick = 10, To = 2, H = 8
    chunk index     0    1    2    3    4    5    6    7
    tick            9   10   11   12   13   14   15   16
                   (past) ^ first kept action

It arrives at ``available_tick``: the first tick whose action may come from it (the loop passes
the tick it is about to execute). Actions for earlier ticks, or for ticks already executed,
are stale: dropped and counted (``stale_dropped``), never executed. From the takeover tick on,
the chunk is merged with the queue by the strategy:

* ``replace``: the new chunk's actions replace the queued ones from the takeover tick on.
* ``temporal_ensemble`` (ACT, Zhao et al. 2023; lerobot's ``ACTTemporalEnsembler``): every
  chunk that covers a tick contributes; the action is ``sum_i w_i a_i / sum_i w_i`` with
  ``w_i = exp(-m * i)``, ``i = 0`` the oldest chunk covering that tick. With ``m > 0`` the
  **oldest** prediction weighs most (ACT's default ``m = 0.01``: nearly uniform, slightly
  toward the old); ``m < 0`` favours the newest. Stale contributions are dropped as above.
* ``rti``: RTI warm starts happen on the policy side (:class:`~robopolicy.inference.rti.RTI`);
  the scheduler replaces, as ``replace``.
* ``rtc``: :meth:`request` reports the delay ``d`` and the frozen actions (the queued actions
  for ticks ``obs_tick .. obs_tick + d - 1``, which execute while inference runs) and the
  ``executed`` count that :class:`~robopolicy.inference.rtc.RTC` takes; when the chunk arrives
  the queue keeps its actions before ``obs_tick + d`` (the new chunk's own version of them is
  skipped, ``prefix_kept``; a tick the queue had no action for is filled from the new chunk)
  and the new chunk replaces from there.

:meth:`next_action` returns the action for a tick, or None when there is none (counted as
``empty_ticks``); queued actions for ticks the caller skipped are dropped as stale. The jump
where a new chunk takes over, ``a_new(T) - a_old(T)`` at the first tick ``T`` the new chunk
changes (only when the queue held an action for ``T``), is recorded in :attr:`jumps`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

import numpy as np

from robopolicy.types import ChunkTiming


class MergeStrategy(str, enum.Enum):
    REPLACE = "replace"
    TEMPORAL_ENSEMBLE = "temporal_ensemble"
    RTI = "rti"
    RTC = "rtc"


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    strategy: MergeStrategy = MergeStrategy.REPLACE
    ensemble_coeff: float = 0.01
    """m of temporal ensembling's weights ``exp(-m * i)``, i = 0 the oldest (ACT's default 0.01)."""
    keep: int | None = None
    """Actions kept per chunk from index To-1 on (None: all H - To + 1)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "strategy", MergeStrategy(self.strategy))
        except ValueError:
            raise ValueError(
                f"unknown merge strategy {self.strategy!r}; choose from {[m.value for m in MergeStrategy]}"
            ) from None
        if not math.isfinite(self.ensemble_coeff):
            raise ValueError(f"ensemble_coeff must be finite, got {self.ensemble_coeff}")
        if self.keep is not None and self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")


@dataclasses.dataclass(frozen=True)
class ChunkRequest:
    """What the next inference call needs to know (from :meth:`ChunkScheduler.request`)."""

    obs_tick: int
    delay: int
    """d: ticks from ``obs_tick`` that execute from the queue while inference runs."""
    executed: int | None
    """Ticks since the observation of the newest merged chunk (RTC's ``executed``); None before one."""
    frozen: np.ndarray
    """(n, Da) the queued actions for ticks ``obs_tick .. obs_tick + n - 1``, n <= d (fewer when
    the queue runs out first)."""
    horizon: int
    """The span RTC's bound is stated on: H - To + 1 actions from the newest observation on."""

    @property
    def in_bound(self) -> bool:
        """RTC's ``d <= s <= H - d`` with s = ``executed`` (True before the first chunk)."""
        s = self.executed
        return s is None or self.delay <= s <= self.horizon - self.delay


@dataclasses.dataclass(frozen=True)
class BoundaryJump:
    """The change of the planned action where a new chunk takes over."""

    tick: int
    obs_tick: int
    """The new chunk's observation tick."""
    delta: np.ndarray
    """(Da,) a_new(tick) - a_old(tick)."""

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.delta))


@dataclasses.dataclass(frozen=True)
class MergeResult:
    merged: bool
    """False when the chunk was older than one already merged (dropped whole, ``outdated``)."""
    takeover_tick: int | None
    """The first tick the chunk changed (None if it changed nothing)."""
    stale: int
    """Its actions dropped because their tick had passed."""
    jump: BoundaryJump | None


@dataclasses.dataclass
class SchedulerCounters:
    """Running totals for telemetry."""

    chunks: int = 0
    """Chunks merged."""
    outdated: int = 0
    """Chunks dropped whole: computed from an older observation than a chunk already merged."""
    stale_dropped: int = 0
    """Actions never executed because their tick had passed (late chunks, skipped ticks)."""
    prefix_kept: int = 0
    """RTC: new-chunk actions inside the frozen prefix, not used (the queue's execute instead)."""
    replaced: int = 0
    """Queued actions superseded by a newer chunk before their tick."""
    executed: int = 0
    """Ticks that got an action."""
    empty_ticks: int = 0
    """Ticks that asked for an action and found none (starvation)."""


@dataclasses.dataclass
class _Slot:
    """One tick's planned action: ``total / weight``, from ``count`` chunks."""

    total: np.ndarray
    weight: float
    count: int

    @property
    def action(self) -> np.ndarray:
        return self.total / self.weight


class ChunkScheduler:
    """One arm's action queue keyed by tick; see the module docstring."""

    def __init__(self, timing: ChunkTiming, config: SchedulerConfig = SchedulerConfig()) -> None:
        self.timing, self.config = timing, config
        self.offset = timing.n_obs_steps - 1
        self.span = timing.horizon - self.offset
        self.keep = self.span if config.keep is None else int(config.keep)
        if self.keep > self.span:
            raise ValueError(f"keep must be <= H - To + 1 = {self.span}, got {self.keep}")
        self.reset()

    def reset(self) -> None:
        """An empty queue, counters and jumps cleared (a new episode)."""
        self._slots: dict[int, _Slot] = {}
        self._last_tick: int | None = None  # the last tick next_action was asked for
        self._newest_obs: int | None = None  # obs tick of the newest merged chunk
        self._delays: dict[int, int] = {}  # RTC: obs tick -> requested delay
        self._dim = 0  # Da, once a chunk was seen
        self.counters = SchedulerCounters()
        self.jumps: list[BoundaryJump] = []

    # ------------------------------------------------------------------ inference side
    def request(self, obs_tick: int, delay: int = 0) -> ChunkRequest:
        """Note an inference call on the observation of ``obs_tick`` expected to take ``delay``
        ticks (d, e.g. ``ceil(max recent latency / period)``); returns what RTC needs."""
        obs_tick, delay = int(obs_tick), int(delay)
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        frozen = []
        for t in range(obs_tick, obs_tick + delay):
            slot = self._slots.get(t)
            if slot is None:
                break
            frozen.append(slot.action)
        self._delays[obs_tick] = delay
        executed = None if self._newest_obs is None else obs_tick - self._newest_obs
        arr = np.stack(frozen).astype(np.float32) if frozen else np.zeros((0, self._dim), np.float32)
        return ChunkRequest(obs_tick, delay, executed, arr, self.span)

    def add_chunk(self, chunk: Any, obs_tick: int, available_tick: int) -> MergeResult:
        """Merge ``chunk`` (H, Da), computed from the observation of ``obs_tick`` and usable from
        ``available_tick`` on (>= ``obs_tick``)."""
        a = np.asarray(chunk, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != self.timing.horizon:
            raise ValueError(f"a chunk must have shape ({self.timing.horizon}, Da), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("a chunk must be finite (the safety filter is not the place to find NaN plans)")
        obs_tick, available_tick = int(obs_tick), int(available_tick)
        self._dim = a.shape[1]
        if available_tick < obs_tick:
            raise ValueError(f"available_tick {available_tick} is before the chunk's obs_tick {obs_tick}")
        delay = self._delays.pop(obs_tick, 0)
        self._delays = {t: d for t, d in self._delays.items() if t > obs_tick}
        if self._newest_obs is not None and obs_tick < self._newest_obs:
            self.counters.outdated += 1
            return MergeResult(False, None, 0, None)
        self._newest_obs = obs_tick
        self.counters.chunks += 1
        floor = available_tick if self._last_tick is None else max(available_tick, self._last_tick + 1)
        ticks = range(obs_tick, obs_tick + self.keep)
        actions = a[self.offset : self.offset + self.keep]
        stale = sum(1 for t in ticks if t < floor)
        self.counters.stale_dropped += stale
        fresh = [(t, act) for t, act in zip(ticks, actions) if t >= floor]
        strategy = self.config.strategy
        if strategy is MergeStrategy.TEMPORAL_ENSEMBLE:
            takeover, jump = self._ensemble(fresh, obs_tick)
        else:
            frozen_until = obs_tick + delay if strategy is MergeStrategy.RTC else floor
            takeover, jump = self._replace(fresh, obs_tick, frozen_until)
        if jump is not None:
            self.jumps.append(jump)
        return MergeResult(True, takeover, stale, jump)

    def _replace(self, fresh: list, obs_tick: int, frozen_until: int) -> tuple[int | None, BoundaryJump | None]:
        """Queue ``fresh`` (tick, action) pairs: before ``frozen_until`` only where the queue has
        nothing; from there on replacing the queue (whose later actions are dropped)."""
        takeover, jump = None, None
        for t, act in fresh:
            old = self._slots.get(t)
            if t < frozen_until and old is not None:
                self.counters.prefix_kept += 1
                continue
            if takeover is None:
                takeover = t
                if old is not None:
                    jump = BoundaryJump(t, obs_tick, act - old.action)
            if old is not None:
                self.counters.replaced += 1
            self._slots[t] = _Slot(act.copy(), 1.0, 1)
        return takeover, jump  # (a newer chunk ends no earlier than the queue: nothing old is left after it)

    def _ensemble(self, fresh: list, obs_tick: int) -> tuple[int | None, BoundaryJump | None]:
        """Add each (tick, action) to its tick's weighted sum: weight ``exp(-m * count)``."""
        m = self.config.ensemble_coeff
        takeover, jump = None, None
        for t, act in fresh:
            old = self._slots.get(t)
            if old is None:
                self._slots[t] = _Slot(act.copy(), 1.0, 1)
                new_action = None
            else:
                before = old.action
                w = math.exp(-m * old.count)
                old.total = old.total + w * act
                old.weight += w
                old.count += 1
                new_action = old.action
            if takeover is None:
                takeover = t
                if new_action is not None:
                    jump = BoundaryJump(t, obs_tick, new_action - before)
        return takeover, jump

    # ------------------------------------------------------------------ loop side
    def next_action(self, tick: int) -> np.ndarray | None:
        """The action (Da,) float32 for ``tick`` (strictly after the last tick asked for), or None."""
        tick = int(tick)
        if self._last_tick is not None and tick <= self._last_tick:
            raise ValueError(f"tick {tick} is not after the last tick asked for ({self._last_tick})")
        self._last_tick = tick
        for t in [t for t in self._slots if t < tick]:  # skipped ticks: never execute them late
            del self._slots[t]
            self.counters.stale_dropped += 1
        slot = self._slots.pop(tick, None)
        if slot is None:
            self.counters.empty_ticks += 1
            return None
        self.counters.executed += 1
        return slot.action.astype(np.float32)

    def remaining(self, tick: int) -> int:
        """Queued actions for ticks >= ``tick``."""
        return sum(1 for t in self._slots if t >= int(tick))

    def planned(self, tick: int) -> np.ndarray | None:
        """The action queued for ``tick`` now (None if none), without consuming it."""
        slot = self._slots.get(int(tick))
        return None if slot is None else slot.action.astype(np.float32)

    def stats(self) -> dict[str, Any]:
        """Counters and jump summary for telemetry."""
        norms = [j.norm for j in self.jumps]
        return {
            **dataclasses.asdict(self.counters),
            "jumps": len(norms),
            "jump_mean": float(np.mean(norms)) if norms else None,
            "jump_max": float(np.max(norms)) if norms else None,
        }
