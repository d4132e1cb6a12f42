"""Telemetry of a controller run: one JSON line per tick, per chunk and per event, a summary, a plot.

Each record is a JSON object with a ``type``; :class:`Telemetry` writes it to ``telemetry.jsonl``
as soon as it happens, line-buffered and flushed after every line, so a crash (or a SIGKILL)
loses nothing already recorded (a power cut may: there is no fsync per line)::

    {"type": "meta", ...}            the run's settings (first line)
    {"type": "tick", ...}            TickRecord, every control tick
    {"type": "chunk", ...}           ChunkRecord, every chunk that came back from inference
    {"type": "event", "kind": ...}   start, estop, watchdog, episode_end, end, ...
    {"type": "fault", ...}           FaultRecord: what failed, when, and the time until the arm held
    {"type": "summary", ...}         summarize() of the run (last line, when the run ended cleanly)

:func:`summarize` computes the summary from the records alone, so ``summarize(load_jsonl(path))``
works on the file of a run that died. Times in records are milliseconds, or seconds since the
run's start (``t_*``); ``lateness_ms`` is the start of a tick's body after its scheduled time.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np


@dataclasses.dataclass
class TickRecord:
    """One control tick."""

    tick: int
    t_sched: float
    """Scheduled start [s since the run's start]."""
    t_start: float
    """Actual start of the tick's body [s since the run's start]."""
    lateness_ms: float
    body_ms: float
    """Read, merge, request, filter, write (and the after-tick hook), without the telemetry write."""
    deadline_miss: bool
    """The body ended after the next tick's scheduled start."""
    skipped: int
    """Ticks skipped just before this one (the loop was more than a period late; no catch-up burst)."""
    source: str
    """``chunk`` (an action from the queue), ``empty`` (none queued: held), ``fault`` (held on a fault)."""
    seq: int | None
    """The driver reading's frame counter (None: the read failed)."""
    obs_age_ms: float | None
    """Age of that reading when the body started."""
    action: list[float] | None
    """What was sent (None: nothing, the driver failed)."""
    safety: list[str] = dataclasses.field(default_factory=list)
    """Kinds of the safety filter's events on this tick (clamps and faults)."""
    queued: int = 0
    """Actions queued for later ticks after this one's was taken."""


@dataclasses.dataclass
class ChunkRecord:
    """One chunk back from inference, and what merging it did."""

    chunk: int
    obs_tick: int
    """Tick of the newest observation it was computed from (and of its request)."""
    available_tick: int
    """First tick that could execute it (the tick the loop picked it up)."""
    delay_ticks: int
    """Implied delay: ``available_tick - obs_tick``."""
    delay_requested: int
    """d the scheduler (and RTC) were told (the running estimate when it was requested)."""
    executed: int | None
    """Ticks since the previous chunk's observation (RTC's s)."""
    frozen: int
    """Queued actions frozen for it at the request (RTC's prefix)."""
    inference_ms: float
    """The inference call, with the injected latency."""
    injected_ms: float
    ready_ms: float
    """From the scheduled start of ``obs_tick`` to the chunk being ready."""
    merged: bool
    stale_dropped: int
    """Its actions dropped because their tick had passed."""
    takeover_tick: int | None
    jump: float | None
    """Norm of the action change where it took over (None: no queued action there)."""
    nfe: int | None = None
    energy: float | None = None
    value: float | None = None


@dataclasses.dataclass
class FaultRecord:
    """A fault and the hold that answered it."""

    kind: str
    """read_timeout, disconnect, driver_fault, driver_error, inference_error, nan_action, watchdog,
    nan_reading, joint_limit, estop, controller_error."""
    message: str
    tick: int
    t_fault: float
    """When it happened, as far as known [s since start] (a watchdog: when its deadline passed;
    an inference exception: when it was raised in the inference thread)."""
    t_detect: float
    """When the loop saw it."""
    t_hold: float | None
    """When the driver's hold returned (None: no hold was attempted)."""
    fault_to_hold_ms: float | None
    hold_ok: bool
    hold_error: str | None = None
    """Why the hold failed (a lost link: the arm stops by its own watchdog)."""


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None  # strict JSON: NaN/inf as null
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return _jsonable(v.item())
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, enum.Enum):
        return _jsonable(v.value)
    return v


class Telemetry:
    """Records of one run, kept in memory and streamed to ``path`` (JSONL) when given."""

    def __init__(
        self,
        path: str | Path | None = None,
        meta: Mapping[str, Any] | None = None,
        listener: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.listener = listener
        """Called with every record as it is written (the daemon's live telemetry stream)."""
        self.records: list[dict[str, Any]] = []
        self._file: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115  (closed in close())
        self.write({"type": "meta", **(meta or {})})

    # ------------------------------------------------------------------ writing
    def write(self, record: Mapping[str, Any]) -> dict[str, Any]:
        rec = _jsonable(dict(record))
        self.records.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec, allow_nan=False) + "\n")
            self._file.flush()
        if self.listener is not None:
            self.listener(rec)
        return rec

    def tick(self, rec: TickRecord) -> None:
        self.write({"type": "tick", **dataclasses.asdict(rec)})

    def chunk(self, rec: ChunkRecord) -> None:
        self.write({"type": "chunk", **dataclasses.asdict(rec)})

    def fault(self, rec: FaultRecord) -> None:
        self.write({"type": "fault", **dataclasses.asdict(rec)})

    def event(self, kind: str, **fields: Any) -> None:
        self.write({"type": "event", "kind": kind, **fields})

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()

    # ------------------------------------------------------------------ reading
    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == kind]

    def summary(self, counters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return summarize(self.records, counters)

    def plot(self, path: str | Path) -> Path:
        return plot(self.records, path)


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a telemetry file (a truncated last line, from a crash mid-write, is skipped)."""
    out = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise
    return out


def _pcts(values: Sequence[float], qs: Iterable[int]) -> dict[str, float | None]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    out: dict[str, float | None] = {f"p{q}": (float(np.percentile(arr, q)) if arr.size else None) for q in qs}
    out["max"] = float(arr.max()) if arr.size else None
    return out


def summarize(records: Sequence[Mapping[str, Any]], counters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run's summary from its records (``counters``: the scheduler's and the safety filter's
    totals, kept as they are under ``counters``).

    ``dropped_stale_actions`` is the scheduler's count when given (late chunks and skipped
    ticks), else the sum over the chunk records (late chunks only).
    """
    ticks = [r for r in records if r["type"] == "tick"]
    chunks = [r for r in records if r["type"] == "chunk"]
    faults = [r for r in records if r["type"] == "fault"]
    events = [r for r in records if r["type"] == "event"]
    meta = next((r for r in records if r["type"] == "meta"), {})
    counters = dict(counters or {})
    sched = counters.get("scheduler") or {}
    jumps = [c["jump"] for c in chunks if c.get("jump") is not None]
    energy = [c["energy"] for c in chunks if c.get("energy") is not None]
    value = [c["value"] for c in chunks if c.get("value") is not None]
    end = next((e for e in reversed(events) if e["kind"] == "end"), None)
    span = (ticks[-1]["t_start"] - ticks[0]["t_start"]) if len(ticks) > 1 else 0.0
    n_ticks = len(ticks)
    skipped = sum(int(t.get("skipped", 0)) for t in ticks)
    hz = meta.get("hz")
    out: dict[str, Any] = {
        "ticks": n_ticks,
        "hz": hz,
        "hz_measured": ((ticks[-1]["tick"] - ticks[0]["tick"]) / span) if span > 0 else None,
        "ticks_per_s": ((n_ticks - 1) / span) if span > 0 else None,
        "duration_s": span,
        "lateness_ms": _pcts([t["lateness_ms"] for t in ticks], (50, 99)),
        "body_ms": _pcts([t["body_ms"] for t in ticks], (50, 99)),
        "deadline_misses": sum(1 for t in ticks if t["deadline_miss"]),
        "skipped_ticks": skipped,
        "empty_queue_ticks": sum(1 for t in ticks if t["source"] == "empty"),
        "chunks": len(chunks),
        "inference_ms": _pcts([c["inference_ms"] for c in chunks], (50, 95)),
        "delay_ticks": _pcts([c["delay_ticks"] for c in chunks], (50, 95)),
        "delay_underestimated": sum(1 for c in chunks if c["delay_ticks"] > c["delay_requested"]),
        "dropped_stale_actions": int(
            sched["stale_dropped"] if "stale_dropped" in sched else sum(c["stale_dropped"] for c in chunks)
        ),
        "jump_mean": float(np.mean(jumps)) if jumps else None,
        "jump_max": float(np.max(jumps)) if jumps else None,
        "jumps": len(jumps),
        "energy_mean": float(np.mean(energy)) if energy else None,
        "value_mean": float(np.mean(value)) if value else None,
        "safety_events": _count(k for t in ticks for k in t.get("safety", [])),
        "watchdog_trips": sum(1 for e in events if e["kind"] == "watchdog"),
        "estops": sum(1 for e in events if e["kind"] == "estop"),
        "faults": [
            {k: f.get(k) for k in ("kind", "message", "tick", "fault_to_hold_ms", "hold_ok", "hold_error")}
            for f in faults
        ],
        "priority": next((e.get("loop") for e in events if e["kind"] == "priority"), None),
        "end_reason": end.get("reason") if end else None,
        "success": end.get("success") if end else None,
    }
    if counters:
        out["counters"] = counters
    return out


def _count(kinds: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kinds:
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def plot(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Three panels against the control tick: tick lateness and loop-body time (deadline misses
    marked), inference latency and the implied delay, chunk-boundary jumps; faults as red lines.
    Drawn with matplotlib's Agg canvas (no display, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ticks = [r for r in records if r["type"] == "tick"]
    chunks = [r for r in records if r["type"] == "chunk"]
    faults = [r for r in records if r["type"] == "fault"]
    meta = next((r for r in records if r["type"] == "meta"), {})
    fig = Figure(figsize=(10, 8), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    x = [t["tick"] for t in ticks]
    ax1.plot(x, [t["lateness_ms"] for t in ticks], lw=0.8, label="lateness")
    ax1.plot(x, [t["body_ms"] for t in ticks], lw=0.8, alpha=0.7, label="loop body")
    miss = [t for t in ticks if t["deadline_miss"] or t.get("skipped")]
    if miss:
        ax1.scatter([t["tick"] for t in miss], [t["lateness_ms"] for t in miss], c="r", s=12, label="deadline miss")
    ax1.set_ylabel("ms")
    ax1.set_title(
        f"{meta.get('strategy', '')} at {meta.get('hz', '?')} Hz, injected {meta.get('inject_latency_ms', 0)} ms"
    )
    ax1.legend(loc="upper right", fontsize="small")
    ax2.scatter([c["available_tick"] for c in chunks], [c["inference_ms"] for c in chunks], s=10, label="inference")
    ax2.set_ylabel("inference ms")
    twin = ax2.twinx()
    twin.step([c["available_tick"] for c in chunks], [c["delay_ticks"] for c in chunks], where="post", c="C1", lw=0.8)
    twin.set_ylabel("delay [ticks]", color="C1")
    jumps = [c for c in chunks if c.get("jump") is not None]
    ax3.scatter([c["takeover_tick"] for c in jumps], [c["jump"] for c in jumps], s=10, c="C2")
    ax3.set_ylabel("boundary jump |a_new - a_old|")
    ax3.set_xlabel("control tick")
    for f in faults:
        for ax in (ax1, ax2, ax3):
            ax.axvline(f["tick"], c="r", lw=1, ls="--")
        ax1.annotate(f["kind"], (f["tick"], 0), color="r", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


__all__ = ["ChunkRecord", "FaultRecord", "Telemetry", "TickRecord", "load_jsonl", "plot", "summarize"]
