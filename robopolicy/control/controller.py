"""The real-time controller: a fixed-rate loop that drives an arm while inference runs beside it.

One tick (index = control tick ``k``, scheduled at ``t0 + k / hz`` on ``time.monotonic``)::

    sleep until the tick's time      coarse time.sleep, then a spin on the clock for the last spin_s
    read the driver                  -> Reading; the To-frame history gets the frame (first frame
                                        repeated at the start, as the chunk executor does)
    pick up a finished chunk         scheduler.add_chunk(chunk, obs_tick, available_tick = k)
    start the next request           if the inference thread is idle and n_action_steps ticks passed
                                        since the last request: scheduler.request(k, d), then the
                                        thread predicts on the newest history (never waited for)
    take the tick's action           scheduler.next_action(k), None when the queue is empty
    safety filter, last              filter(action) / hold(): clamps, guards, watchdogs
    write or hold                    driver.write(safe), or driver.hold() with no action
    episode end / max ticks

Inference runs in one thread beside the loop (torch releases the GIL inside its kernels; the
controller also lowers ``sys.setswitchinterval`` during a run so the loop gets the GIL back
from the inference thread's Python code within ``switch_interval_s``). Every call to the
scheduler, the safety filter and the driver happens on the loop's thread; the inference thread
only calls the actor's ``predict`` (and ``observe``). ``inject_latency_ms`` is added inside
that thread after each prediction, as a slower policy or GPU would.

Delay estimate. ``d`` for a request is ``ceil(max(r_i) / period)`` over the last
``delay_window`` chunks, ``r_i`` being the time from the scheduled start of a chunk's
observation tick to the chunk being ready (inference plus injected latency plus the rest of
the tick it started in): the conservative estimate of RTC's reference code and lerobot
(``LatencyTracker.max``). The chunk is picked up at the first tick that starts after it is
ready, so with an on-time loop its actual delay is exactly ``ceil(r / period)``; the telemetry
records both and counts underestimates.

Scheduling priority (``priority``). Under load a tick is late when the OS gives the core to
another process as the tick is due, or when the inference thread holds the GIL and is itself
preempted. ``fifo`` runs the loop's thread ``SCHED_FIFO`` (``fifo_priority``) and the inference
thread at ``nice -10``: the loop wakes ahead of every normal process, and the GIL holder it may
wait for is rarely preempted. ``nice`` gives both threads ``nice -10``. ``auto`` takes the first
the OS permits (both need CAP_SYS_NICE, e.g. root or ``setcap``; ``none`` otherwise). The
garbage collector's existing objects are frozen (``gc.freeze``) so a collection during the run
walks only new ones. What was obtained is in the telemetry (``priority`` event) and everything
is restored at the end of the run.

Simulated time (``simulated_time=True``, for sweeps). The loop runs on a
:class:`SimulatedClock` shared with the driver (robosuite with ``realtime=False`` or the mock
arm, both built with ``clock=sim.now, sleep=sim.sleep``): only the loop's sleeps move it, so the
simulated world waits while Python works. Inference runs inline in the loop's thread when a
request is made (its real compute time is recorded, not spent on the clock), and its chunk is
ready ``inject_latency_ms`` later on the simulated clock: the delay is exactly
``ceil(latency / period)`` ticks whatever the machine's load (0 ms: ready within the tick it was
asked for, as in synchronous evaluation). Scheduler, safety filter, watchdogs and telemetry are
the same code as in wall-clock runs; a latency sweep is reproducible and faster than real time.

Precise sleep (:func:`sleep_until`). ``time.sleep`` until ``spin_s`` before the deadline, then
a busy loop on the clock (no yield: yielding hands the GIL to the inference thread, which may
then keep it for a whole switch interval). A tick that starts a period or more late is not
run late: the loop skips to the current tick (``skipped`` in its record; the scheduler drops
the skipped ticks' actions as stale), as ros2_control does, so there is never a catch-up burst.

Faults. Each ends the run with the arm holding and the fault recorded with the time from the
fault to the hold (``FaultRecord``); nothing recorded before it is lost (the telemetry is
flushed line by line, and the end event and summary are written in a ``finally``):

=================== ================================================================
read_timeout        ``driver.read()`` raised ReadTimeout
disconnect          the driver raised Disconnected (the hold cannot be sent: the arm's
                    own watchdog must stop it; ``hold_ok`` is False)
driver_fault        FaultDetected, e.g. the mock arm's stuck joint
driver_error        any other DriverError (e.g. a write refused)
inference_error     the actor raised in the inference thread (the exception and its
                    traceback are carried to the loop)
nan_action          a chunk with NaN/inf (refused before the scheduler), or a non-finite
                    action at the safety filter
watchdog            no fresh chunk (one with actions for ticks still to come) for
                    ``chunk_deadline_s`` (a policy slower than the deadline), no new driver frame for ``reading_deadline_s``, or no
                    first chunk within ``first_chunk_timeout_s``
nan_reading,        the safety filter's other guards
joint_limit, estop
controller_error    a bug in the loop itself (held, recorded, then re-raised)
=================== ================================================================
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from robopolicy.control.drivers.base import (
    Disconnected,
    Driver,
    DriverError,
    EpisodicDriver,
    FaultDetected,
    Reading,
    ReadTimeout,
)
from robopolicy.control.executor import ChunkExecutor
from robopolicy.control.safety import SafetyFilter, Watchdog
from robopolicy.control.scheduler import ChunkRequest, ChunkScheduler, MergeStrategy, SchedulerConfig
from robopolicy.control.telemetry import ChunkRecord, FaultRecord, Telemetry, TickRecord
from robopolicy.inference.rtc import RTC
from robopolicy.inference.rti import RTI
from robopolicy.types import GOAL_PREFIX

ENV_ID = 0
"""The environment id of the one arm in the actor's per-environment state."""


def sleep_until(
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    spin_s: float = 0.001,
) -> float:
    """Return at ``clock() >= deadline`` (monotonic seconds), and that time.

    Sleeps with ``sleep`` until ``spin_s`` before the deadline, then spins on ``clock`` (an OS
    sleep wakes 50 us to a few ms late; the spin makes the median wake-up exact, the tail is the
    scheduler's). ``spin_s = 0``: sleep only (needed with a fake clock that only sleeping moves).
    """
    while True:
        now = clock()
        remaining = deadline - now
        if remaining <= 0:
            return now
        if remaining > spin_s:
            sleep(remaining - spin_s)
        # else: spin


PRIORITIES = ("auto", "fifo", "nice", "none")
NICE = -10
"""The niceness of the inference thread (``fifo``) or of both threads (``nice``)."""


def _set_nice(tid: int, value: int) -> bool:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, value)
        return True
    except (OSError, AttributeError):
        return False


def raise_loop_priority(mode: str, fifo_priority: int) -> tuple[str, Callable[[], None]]:
    """Raise the calling thread's priority per ``mode`` (module docstring): ``(what was
    obtained, a function that restores the thread)``. Never raises for lack of permission."""
    tid = threading.get_native_id()
    try:
        old_policy, old_param = os.sched_getscheduler(0), os.sched_getparam(0)
        old_nice = os.getpriority(os.PRIO_PROCESS, tid)
    except (OSError, AttributeError):  # not Linux: nothing to raise or restore
        return "none (not supported here)", lambda: None

    def restore() -> None:
        try:
            os.sched_setscheduler(0, old_policy, old_param)
        except OSError:
            pass
        _set_nice(tid, old_nice)

    if mode in ("auto", "fifo"):
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(fifo_priority)))
            return f"fifo {int(fifo_priority)}", restore
        except (OSError, AttributeError):
            if mode == "fifo":
                return "none (SCHED_FIFO not permitted)", restore
    if mode in ("auto", "nice") and _set_nice(tid, NICE):
        return f"nice {NICE}", restore
    return "none" if mode == "none" else f"none ({mode} not permitted)", restore


class SimulatedClock:
    """A clock that only :meth:`sleep` moves (seconds from 0); see "Simulated time" above."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.t += float(seconds)


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """How the loop runs (module docstring)."""

    hz: float = 20.0
    """Control ticks per second."""
    strategy: MergeStrategy = MergeStrategy.REPLACE
    """How chunks merge (``replace``, ``temporal_ensemble``, ``rti``, ``rtc``); ``rti`` / ``rtc``
    wrap a plain policy in the RTI / RTC actor."""
    inject_latency_ms: float = 0.0
    """Artificial latency added to every inference call, inside the inference thread."""
    n_action_steps: int | None = None
    """s: ticks between the observations of two requests (a request also waits for the previous
    one to finish). Default: the policy's Ta; 1 for temporal ensembling."""
    max_ticks: int | None = None
    """End after this tick index (None: at the episode's end only)."""
    chunk_deadline_s: float | None = None
    """Watchdog on fresh chunks (armed by the first): default the time the queue lasts,
    ``keep / hz`` (no fresh chunk by then and the arm would starve)."""
    reading_deadline_s: float | None = None
    """Watchdog on new driver frames (``Reading.seq`` advancing): default 5 periods."""
    first_chunk_timeout_s: float = 10.0
    """The first fresh chunk must come within this after the loop starts (after the warm-up)."""
    delay_window: int = 10
    """Chunks whose latency the delay estimate (their max) is taken over."""
    ensemble_coeff: float = 0.01
    """Temporal ensembling's m (ACT's weights exp(-m i))."""
    keep: int | None = None
    """Actions kept per chunk from index To-1 on (None: all H - To + 1)."""
    spin_s: float = 0.001
    """The precise sleep's spin before each tick (0: plain sleep)."""
    switch_interval_s: float | None = 0.0005
    """``sys.setswitchinterval`` during the run (None: leave Python's 5 ms)."""
    warmup: bool = True
    """Run the actor once (twice for RTI/RTC, to warm the guided path) before the clock starts,
    not timed (first-call overheads: allocation, CUDA kernels, engine builds)."""
    stop_on_success: bool = True
    """End the run when an episodic driver reports success."""
    seed: int | None = 0
    """Episode seed (an episodic driver is reset with it; None: not reset) and the policy's noise."""
    simulated_time: bool = False
    """Run on a :class:`SimulatedClock` (passed as ``clock`` / ``sleep``, shared with the driver),
    inference inline, each chunk ready ``inject_latency_ms`` after its request on that clock."""
    priority: str = "none"
    """``auto``, ``fifo``, ``nice`` or ``none``: the loop's (and inference thread's) scheduling
    priority during the run (module docstring; ``robopolicy run`` uses ``auto``)."""
    fifo_priority: int = 50
    """The loop thread's SCHED_FIFO priority (1-99) with ``fifo``."""

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            raise ValueError(f"unknown priority {self.priority!r}; choose from {list(PRIORITIES)}")
        if not 1 <= int(self.fifo_priority) <= 99:
            raise ValueError(f"fifo_priority must be in [1, 99], got {self.fifo_priority}")
        try:
            object.__setattr__(self, "strategy", MergeStrategy(self.strategy))
        except ValueError:
            raise ValueError(
                f"unknown strategy {self.strategy!r}; choose from {[m.value for m in MergeStrategy]}"
            ) from None
        if not (math.isfinite(self.hz) and self.hz > 0):
            raise ValueError(f"hz must be > 0, got {self.hz}")
        if not (math.isfinite(self.inject_latency_ms) and self.inject_latency_ms >= 0):
            raise ValueError(f"inject_latency_ms must be >= 0, got {self.inject_latency_ms}")
        for name in ("n_action_steps", "max_ticks", "delay_window", "keep"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        for name in ("chunk_deadline_s", "reading_deadline_s", "first_chunk_timeout_s", "switch_interval_s"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        if not self.spin_s >= 0:
            raise ValueError(f"spin_s must be >= 0, got {self.spin_s}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.hz


class TickObserver(Protocol):
    """What :class:`Controller` tells a recorder (the daemon's run recorder), in the loop thread."""

    def tick(self, rec: TickRecord, reading: Reading | None, policy_action: np.ndarray | None) -> None:
        """After tick ``rec.tick``'s telemetry line: its reading (None: the read failed) and the
        action the scheduler gave before the safety filter (None: none was queued); ``rec.action``
        is what was sent."""

    def chunk(self, rec: ChunkRecord, chunk: np.ndarray) -> None:
        """A chunk came back from inference and was merged (``chunk``: its actions, ``(H', Da)``)."""


@dataclasses.dataclass
class RunResult:
    """How a run ended."""

    end_reason: str
    """success, done (the episode's step limit), max_ticks, fault, stopped, interrupted, error."""
    success: bool | None
    """The episodic driver's success at the end (None: not episodic)."""
    ticks: int
    """Ticks run."""
    faults: list[dict[str, Any]]
    summary: dict[str, Any]
    telemetry_path: Path | None


@dataclasses.dataclass
class _Job:
    request: ChunkRequest
    t_sched: float
    """Scheduled start of the request's tick (monotonic)."""
    obs: dict[str, np.ndarray]
    frames: list[dict[str, np.ndarray]]
    """Observations for ``actor.observe`` since the previous request (policies that observe every step)."""


@dataclasses.dataclass
class _Result:
    job: _Job
    chunk: np.ndarray | None
    info: dict[str, float | None]
    inference_s: float
    injected_s: float
    t_ready: float
    error: str | None = None
    traceback: str | None = None


class _InlineInference:
    """Simulated time: the prediction runs at submit (the simulated clock stands still), and its
    result is handed out once the clock reaches the request's tick plus the injected latency."""

    synchronous = True

    def __init__(self, runner: _InferenceThread, inject_s: float, clock: Callable[[], float]) -> None:
        self.runner, self.inject_s, self.clock = runner, inject_s, clock
        self.busy = False
        self._pending: _Result | None = None

    def start(self) -> None:
        pass

    def submit(self, job: _Job) -> None:
        self.busy = True
        t = time.perf_counter()
        res = self.runner.run(job, inject=False)
        res.inference_s = time.perf_counter() - t
        res.injected_s = self.inject_s if res.error is None else 0.0
        res.t_ready = job.t_sched + (self.inject_s if res.error is None else 0.0)
        self._pending = res

    def poll(self) -> _Result | None:
        res = self._pending
        if res is None or self.clock() < res.t_ready - 1e-9:
            return None
        self._pending, self.busy = None, False
        return res

    def stop(self, timeout: float = 5.0) -> bool:
        return True


class _InferenceThread:
    """One daemon thread that runs the actor's predictions, one job at a time; the loop polls it."""

    def __init__(
        self,
        actor: Any,
        options: Any,
        generator: torch.Generator,
        inject_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.actor, self.options, self.generator, self.inject_s, self.clock = actor, options, generator, inject_s, clock
        self.is_rtc = isinstance(actor, RTC)
        self.synchronous = False
        self.nice: int | None = None
        """Niceness the thread sets itself at start (None: leave it)."""
        self.niced = False
        self.busy = False
        """A job was submitted and its result not polled yet (touched by the loop only)."""
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._results: queue.Queue[_Result] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="robopolicy-inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: _Job) -> None:
        self.busy = True
        self._jobs.put(job)

    def poll(self) -> _Result | None:
        try:
            res = self._results.get_nowait()
        except queue.Empty:
            return None
        self.busy = False
        return res

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to end (an injected wait is cut short; a running prediction is not) and
        wait up to ``timeout``; True if it ended."""
        self._stop.set()
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        if self.nice is not None:
            self.niced = _set_nice(threading.get_native_id(), self.nice)
        while True:
            job = self._jobs.get()
            if job is None or self._stop.is_set():
                return
            self._results.put(self.run(job))

    def run(self, job: _Job, inject: bool = True) -> _Result:
        t0 = self.clock()
        try:
            for frame in job.frames:
                self.actor.observe(frame, env_ids=[ENV_ID])
            kwargs: dict[str, Any] = {}
            if self.is_rtc:
                kwargs["delay"] = job.request.delay
                if job.request.executed is not None:
                    kwargs["executed"] = job.request.executed
            out = self.actor.predict(
                job.obs, env_ids=[ENV_ID], generator=self.generator, options=self.options, **kwargs
            )
            chunk = out.actions[0].detach().float().cpu().numpy()
            info = {k: _row0(out.info.get(k)) for k in ("nfe", "energy", "value")}
            t1 = self.clock()
            if inject and self.inject_s > 0:
                self._stop.wait(self.inject_s)
            t_ready = self.clock()
            return _Result(job, chunk, info, t_ready - t0, t_ready - t1, t_ready)
        except BaseException as e:  # carried to the loop, which holds and reports it
            t = self.clock()
            return _Result(job, None, {}, t - t0, 0.0, t, f"{type(e).__name__}: {e}", traceback.format_exc())


def _row0(v: Any) -> float | None:
    if v is None:
        return None
    if torch.is_tensor(v):
        v = v.detach().float().cpu()
        return float(v.reshape(-1)[0]) if v.numel() else None
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    return float(a[0]) if a.size else None


def _error_kind(e: DriverError) -> str:
    if isinstance(e, ReadTimeout):
        return "read_timeout"
    if isinstance(e, Disconnected):
        return "disconnect"
    if isinstance(e, FaultDetected):
        return "driver_fault"
    return "driver_error"


def resolve_actor(policy_or_actor: Any, strategy: MergeStrategy, options: Any = None) -> tuple[Any, Any]:
    """``(policy, actor)``: a policy is wrapped in RTI / RTC for those strategies (default
    settings; pass an ``RTI`` / ``RTC`` actor for others); an actor must match the strategy."""
    from robopolicy.inference.options import InferenceOptions

    strategy = MergeStrategy(strategy)
    obj = policy_or_actor
    policy = getattr(obj, "policy", obj)
    if not hasattr(policy, "config") or not hasattr(policy, "resolve_options"):
        raise TypeError(f"expected a policy or an actor wrapping one, got {type(obj).__name__}")
    if obj is policy and strategy in (MergeStrategy.RTI, MergeStrategy.RTC):
        obj = InferenceOptions(method=strategy.value, policy=dict(options or {})).build(policy)
    if strategy is MergeStrategy.RTC and not isinstance(obj, RTC):
        raise ValueError(f"strategy 'rtc' needs the RTC actor (or a policy to wrap), got {type(obj).__name__}")
    if strategy is MergeStrategy.RTI and not isinstance(obj, RTI):
        raise ValueError(f"strategy 'rti' needs the RTI actor (or a policy to wrap), got {type(obj).__name__}")
    if isinstance(obj, (RTC, RTI)) and strategy.value != type(obj).__name__.lower():
        raise ValueError(
            f"a {type(obj).__name__} actor runs with strategy {type(obj).__name__.lower()!r}, not {strategy.value!r}"
        )
    return policy, obj


def check_compatible(policy: Any, driver: Driver) -> None:
    """The driver gives every observation the policy needs, in its shape, and takes its actions."""
    cfg = policy.config
    goals = [k for k in cfg.obs_spec.keys if k.startswith(GOAL_PREFIX)]
    if goals or getattr(cfg, "goal_keys", None):
        raise ValueError(
            f"policy {policy.name!r} is goal-conditioned ({goals or cfg.goal_keys}); the controller gives no goals"
        )
    shapes = driver.observation_shapes()
    for f in cfg.obs_spec.fields:
        if f.key not in shapes:
            raise ValueError(
                f"the policy needs observation {f.key!r}, which driver {driver.name!r} does not give "
                f"(it gives {sorted(shapes)}; images need the camera among the driver's cameras)"
            )
        if tuple(shapes[f.key][0]) != tuple(f.shape):
            raise ValueError(
                f"observation {f.key!r}: driver {driver.name!r} gives {shapes[f.key][0]}, policy expects {f.shape}"
            )
    if tuple(cfg.action_spec.names) != tuple(driver.action_spec.names):
        raise ValueError(
            f"the policy's actions {list(cfg.action_spec.names)} are not driver {driver.name!r}'s "
            f"{list(driver.action_spec.names)}"
        )


class Controller:
    """Drives ``driver`` with a policy (or an RTI / RTC actor) at ``config.hz``; see the module docstring.

    Args:
        policy_or_actor: a :class:`~robopolicy.policy.Policy`, or an actor wrapping one (``.policy``).
        driver: the arm; connected by :meth:`run` if it is not (and then disconnected at the end).
        config: the loop's settings.
        options: the policy's inference options (its ``options_class`` or a dict).
        telemetry_path: where the JSONL goes (None: kept in memory only).
        meta: extra fields for the telemetry's first line (checkpoint, task...).
        after_tick: called with the tick index after each tick's write (e.g. to render a video
            frame); its time counts in the loop body.
        recorder: a :class:`TickObserver` told of every tick (after its telemetry line, with the
            reading and the policy's action) and every merged chunk; it runs in the loop thread,
            so it must be quick (the daemon's recorder appends to lists).
        telemetry_listener: called with every telemetry record as it is written (in the thread
            that wrote it); it must be quick and must not raise.
    """

    def __init__(
        self,
        policy_or_actor: Any,
        driver: Driver,
        config: ControllerConfig = ControllerConfig(),
        *,
        options: Any = None,
        telemetry_path: str | Path | None = None,
        meta: Mapping[str, Any] | None = None,
        after_tick: Callable[[int], None] | None = None,
        recorder: TickObserver | None = None,
        telemetry_listener: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config, self.driver = config, driver
        self.policy, self.actor = resolve_actor(policy_or_actor, config.strategy, options)
        self.options = self.policy.resolve_options(options)
        check_compatible(self.policy, driver)
        self.timing = self.policy.config.timing
        self.keys = list(self.policy.config.obs_spec.keys)
        self.scheduler = ChunkScheduler(
            self.timing, SchedulerConfig(config.strategy, ensemble_coeff=config.ensemble_coeff, keep=config.keep)
        )
        default_s = 1 if config.strategy is MergeStrategy.TEMPORAL_ENSEMBLE else self.timing.n_action_steps
        self.n_action_steps = int(config.n_action_steps or default_s)
        if self.n_action_steps > self.scheduler.keep:
            raise ValueError(
                f"n_action_steps {self.n_action_steps} exceeds the {self.scheduler.keep} actions kept per chunk: "
                "the queue would run dry between requests"
            )
        period = config.period_s
        self.chunk_watchdog = Watchdog(config.chunk_deadline_s or self.scheduler.keep * period, "chunk")
        self.reading_watchdog = Watchdog(config.reading_deadline_s or 5 * period, "reading")
        self.safety = SafetyFilter(driver.profile, watchdogs=[self.chunk_watchdog, self.reading_watchdog])
        self.telemetry_path = None if telemetry_path is None else Path(telemetry_path)
        self.meta = dict(meta or {})
        self.after_tick = after_tick
        self.recorder = recorder
        self.telemetry_listener = telemetry_listener
        self._tick_reading: Reading | None = None
        self._tick_policy_action: np.ndarray | None = None
        if config.simulated_time and clock is time.monotonic:
            raise ValueError(
                "simulated_time needs a SimulatedClock shared with the driver: "
                "Controller(..., clock=sim.now, sleep=sim.sleep) and the driver built with the same clock"
            )
        self._clock, self._sleep = clock, sleep
        self._stop_request = threading.Event()
        self._estop_reason: str | None = None
        self.telemetry: Telemetry | None = None

    # ------------------------------------------------------------------ from other threads
    def stop(self) -> None:
        """End the run at the next tick (the arm holds). Thread-safe."""
        self._stop_request.set()

    def estop(self, reason: str = "e-stop") -> None:
        """Latch the safety filter's e-stop at the next tick: the arm holds and the run ends with
        an ``estop`` fault. Thread-safe."""
        self._estop_reason = str(reason) or "e-stop"

    # ------------------------------------------------------------------ the run
    def run(self) -> RunResult:
        """Run until the episode ends, ``max_ticks``, a fault, :meth:`stop` or Ctrl-C."""
        cfg, driver = self.config, self.driver
        connected_here = not driver.connected
        self._setup_episode()
        self.telemetry = tel = Telemetry(self.telemetry_path, self._meta(), listener=self.telemetry_listener)
        got, restore_priority = "none", None
        old_switch = sys.getswitchinterval()
        if cfg.switch_interval_s is not None:
            sys.setswitchinterval(cfg.switch_interval_s)
        gen = torch.Generator(device=self.policy.device).manual_seed(int(cfg.seed or 0))
        self._worker: Any = _InferenceThread(self.actor, self.options, gen, cfg.inject_latency_ms / 1e3, self._clock)
        if cfg.simulated_time:
            self._worker = _InlineInference(self._worker, cfg.inject_latency_ms / 1e3, self._clock)
        self._t0 = self._clock()
        end, tick = None, 0
        try:
            if connected_here:
                driver.connect()
            if isinstance(driver, EpisodicDriver) and cfg.seed is not None:
                driver.reset(cfg.seed)
            if cfg.warmup:
                end = self._warmup()
            if not cfg.simulated_time and cfg.priority != "none":
                got, restore_priority = raise_loop_priority(cfg.priority, cfg.fifo_priority)
                if not got.startswith("none") and isinstance(self._worker, _InferenceThread):
                    self._worker.nice = NICE
            gc.collect()
            gc.freeze()
            self._worker.start()
            period = cfg.period_s
            self._t0 = t0 = self._clock()
            tel.event("priority", requested=cfg.priority, loop=got, inference_nice=self._worker_nice())
            tel.event("start", t0_monotonic=t0, simulated_time=cfg.simulated_time)
            spin_s = 0.0 if cfg.simulated_time else cfg.spin_s
            while end is None:
                sched = t0 + tick * period
                start = sleep_until(sched, clock=self._clock, sleep=self._sleep, spin_s=spin_s)
                skipped = 0
                if start - sched >= period:  # more than a period late: skip to the current tick
                    now_tick = int((start - t0) // period)
                    skipped, tick = now_tick - tick, now_tick
                    sched = t0 + tick * period
                end = self._tick(tick, sched, start, skipped)
                tick += 1
        except KeyboardInterrupt:
            end = "interrupted"
        except BaseException as e:
            end = "error"
            self._fault("controller_error", f"{type(e).__name__}: {e}", tick, self._clock(), None)
            raise
        finally:
            gc.unfreeze()
            if restore_priority is not None:
                restore_priority()
            self._finish(end or "error", connected_here, old_switch)
        return self.result

    def _worker_nice(self) -> int | None:
        w = self._worker
        return w.nice if isinstance(w, _InferenceThread) else None

    def _setup_episode(self) -> None:
        self.scheduler.reset()
        self.safety.reset()
        self.chunk_watchdog.disarm()
        self.reading_watchdog.disarm()
        self.actor.reset([ENV_ID])
        self._history = ChunkExecutor(self.timing, self.keys)
        self._frames: list[dict[str, np.ndarray]] = []
        self._last_seq: int | None = None
        self._last_request: int | None = None
        self._chunks = 0
        self._fresh = 0  # chunks with actions for ticks still to come
        self._ready: deque[float] = deque(maxlen=self.config.delay_window)
        self._faults: list[dict[str, Any]] = []

    def _meta(self) -> dict[str, Any]:
        cfg = self.config
        return {
            **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)},
            "n_action_steps_resolved": self.n_action_steps,
            "keep_resolved": self.scheduler.keep,
            "chunk_deadline_s_resolved": self.chunk_watchdog.deadline_s,
            "reading_deadline_s_resolved": self.reading_watchdog.deadline_s,
            "policy": getattr(self.policy, "name", type(self.policy).__name__),
            "actor": type(self.actor).__name__,
            "actor_config": getattr(self.actor, "config_dict", None),
            "timing": dataclasses.asdict(self.timing),
            "device": str(self.policy.device),
            "driver": self.driver.name,
            "profile": self.driver.profile.name,
            **self.meta,
        }

    def _warmup(self) -> str | None:
        """Untimed predictions on the first reading (the actor is reset after); a fault if the read fails."""
        try:
            reading = self.driver.read()
        except DriverError as e:
            return self._fault(_error_kind(e), str(e), -1, self._clock(), None)
        to = self.timing.n_obs_steps
        obs = {k: np.stack([np.asarray(reading.obs[k])] * to)[None] for k in self.keys}
        gen = torch.Generator(device=self.policy.device).manual_seed(0x5EED)
        t = time.perf_counter()
        for _ in range(2 if isinstance(self.actor, (RTC, RTI)) else 1):
            self.actor.predict(obs, env_ids=[ENV_ID], generator=gen, options=self.options)
        self.actor.reset([ENV_ID])
        self.telemetry.event("warmup", ms=(time.perf_counter() - t) * 1e3)  # type: ignore[union-attr]
        return None

    def _rel(self, t: float | None) -> float | None:
        return None if t is None else t - self._t0

    def _tick(self, tick: int, sched: float, start: float, skipped: int) -> str | None:
        rec = TickRecord(
            tick,
            self._rel(sched),
            self._rel(start),
            (start - sched) * 1e3,
            0.0,
            False,
            skipped,
            "chunk",
            None,
            None,
            None,
        )
        self._tick_reading = self._tick_policy_action = None
        end = self._body(tick, sched, rec)
        t_end = self._clock()
        rec.body_ms = (t_end - start) * 1e3
        rec.deadline_miss = t_end > sched + self.config.period_s
        self.telemetry.tick(rec)  # type: ignore[union-attr]
        if self.recorder is not None:
            self.recorder.tick(rec, self._tick_reading, self._tick_policy_action)
        return end

    def _body(self, tick: int, sched: float, rec: TickRecord) -> str | None:
        driver, safety, tel = self.driver, self.safety, self.telemetry
        assert tel is not None
        if self._stop_request.is_set():
            rec.source = "empty"
            return "stopped"
        if self._estop_reason is not None and not safety.estopped:
            safety.estop(self._estop_reason)
            tel.event("estop", tick=tick, reason=self._estop_reason)
        # 1. read
        try:
            reading = driver.read()
        except DriverError as e:
            return self._fault(_error_kind(e), str(e), tick, self._clock(), rec)
        now = self._clock()
        rec.seq, rec.obs_age_ms = reading.seq, (now - reading.t) * 1e3
        self._tick_reading = reading
        self._observe(reading, now)
        # 2. a finished chunk
        end = self._pick_up(tick, now, rec)
        if end is not None:
            return end
        if self._fresh == 0 and now - self._t0 > self.config.first_chunk_timeout_s:
            t_fault = self._t0 + self.config.first_chunk_timeout_s
            msg = (
                f"no fresh chunk within first_chunk_timeout_s = {self.config.first_chunk_timeout_s} s "
                f"({self._chunks} came, each too late for any of its actions)"
            )
            tel.event("watchdog", tick=tick, name="first_chunk", detail=msg)
            return self._fault("watchdog", msg, tick, t_fault, rec)
        # 3. the next request, on the newest history
        if not self._worker.busy and (self._last_request is None or tick - self._last_request >= self.n_action_steps):
            self._request(tick, sched)
            if self._worker.synchronous:  # simulated time: a chunk ready within this tick is used in it
                end = self._pick_up(tick, self._clock(), rec)
                if end is not None:
                    return end
        # 4. this tick's action, through the safety filter, to the driver
        action = self.scheduler.next_action(tick)
        self._tick_policy_action = action
        rec.queued = self.scheduler.remaining(tick + 1)
        now = self._clock()
        if action is None:
            rec.source = "empty"
            safe, events = safety.hold(reading, now)
        else:
            safe, events = safety.filter(action, reading, now)
        rec.safety = [e.kind for e in events]
        faults = [e for e in events if e.fault]
        if faults:
            t_fault = now
            for e in faults:
                if e.kind == "watchdog":
                    dog = self.chunk_watchdog if e.dims == ("chunk",) else self.reading_watchdog
                    tel.event("watchdog", tick=tick, name=dog.name, detail=e.detail)
                    t_fault = min(t_fault, (dog.last_fed or now) + dog.deadline_s)
            return self._fault(faults[0].kind, "; ".join(str(e) for e in faults), tick, t_fault, rec)
        try:
            if action is None:
                driver.hold()
            else:
                driver.write(safe)
        except DriverError as e:
            return self._fault(_error_kind(e), str(e), tick, self._clock(), rec)
        rec.action = safe.tolist()
        if self.after_tick is not None:
            self.after_tick(tick)
        # 5. the end?
        if isinstance(driver, EpisodicDriver):
            info = driver.last_info
            if info.get("success") and self.config.stop_on_success:
                return "success"
            if info.get("done"):
                return "done"
        if self.config.max_ticks is not None and tick + 1 >= self.config.max_ticks:
            return "max_ticks"
        return None

    def _pick_up(self, tick: int, now: float, rec: TickRecord) -> str | None:
        """Merge a finished chunk, if there is one; a fault if it failed or is not finite."""
        res = self._worker.poll()
        if res is None:
            return None
        if res.error is not None:
            self.telemetry.event("inference_traceback", tick=tick, traceback=res.traceback)  # type: ignore[union-attr]
            return self._fault("inference_error", res.error, tick, res.t_ready, rec)
        if not np.isfinite(res.chunk).all():  # type: ignore[arg-type]
            bad = int((~np.isfinite(res.chunk)).sum())  # type: ignore[arg-type]
            msg = f"the chunk from tick {res.job.request.obs_tick} has {bad} non-finite values; refused"
            return self._fault("nan_action", msg, tick, res.t_ready, rec)
        self._merge(res, tick, now)
        return None

    def _observe(self, reading: Reading, now: float) -> None:
        if reading.seq != self._last_seq:
            self.reading_watchdog.feed(now)
            self._last_seq = reading.seq
        if ENV_ID not in self._history:
            self._history.start(ENV_ID, reading.obs)  # the first frame repeated, as the executor does
        else:
            self._history.observe(ENV_ID, reading.obs)
        if self.actor.observes_every_step:
            self._frames.append({k: np.asarray(reading.obs[k])[None] for k in self.keys})

    def delay_estimate(self) -> int:
        """d for the next request: ceil(max recent ready time / period), 0 before any chunk."""
        if not self._ready:
            return 0
        return max(0, math.ceil(max(self._ready) / self.config.period_s - 1e-9))

    def _request(self, tick: int, sched: float) -> None:
        req = self.scheduler.request(tick, self.delay_estimate())
        frames, self._frames = self._frames, []
        self._worker.submit(_Job(req, sched, self._history.batch_obs([ENV_ID]), frames))
        self._last_request = tick

    def _merge(self, res: _Result, tick: int, now: float) -> None:
        req = res.job.request
        merge = self.scheduler.add_chunk(res.chunk, req.obs_tick, tick)
        if merge.merged and merge.stale < self.scheduler.keep:  # fresh: it has actions for ticks to come
            self.chunk_watchdog.feed(now)
            self._fresh += 1
        ready = res.t_ready - res.job.t_sched
        self._ready.append(ready)
        self._chunks += 1
        crec = ChunkRecord(
            chunk=self._chunks - 1,
            obs_tick=req.obs_tick,
            available_tick=tick,
            delay_ticks=tick - req.obs_tick,
            delay_requested=req.delay,
            executed=req.executed,
            frozen=len(req.frozen),
            inference_ms=res.inference_s * 1e3,
            injected_ms=res.injected_s * 1e3,
            ready_ms=ready * 1e3,
            merged=merge.merged,
            stale_dropped=merge.stale,
            takeover_tick=merge.takeover_tick,
            jump=None if merge.jump is None else merge.jump.norm,
            nfe=None if res.info.get("nfe") is None else int(res.info["nfe"]),  # type: ignore[arg-type]
            energy=res.info.get("energy"),
            value=res.info.get("value"),
        )
        self.telemetry.chunk(crec)  # type: ignore[union-attr]
        if self.recorder is not None:
            self.recorder.chunk(crec, res.chunk)  # type: ignore[arg-type]

    def _fault(self, kind: str, message: str, tick: int, t_fault: float, rec: TickRecord | None) -> str:
        """Hold, and record the fault with the time from ``t_fault`` until the hold returned."""
        t_detect = self._clock()
        hold_ok, hold_error = False, None
        try:
            self.driver.hold()
            hold_ok = True
        except Exception as e:  # a lost link cannot take the hold: the arm's own watchdog must stop it
            hold_error = f"{type(e).__name__}: {e}"
        t_hold = self._clock()
        if rec is not None:
            rec.source = "fault"
            rec.action = self.safety.hold_action().tolist() if hold_ok else None
        fault = FaultRecord(
            kind=kind,
            message=message,
            tick=tick,
            t_fault=self._rel(t_fault),  # type: ignore[arg-type]
            t_detect=self._rel(t_detect),  # type: ignore[arg-type]
            t_hold=self._rel(t_hold),
            fault_to_hold_ms=(t_hold - t_fault) * 1e3,
            hold_ok=hold_ok,
            hold_error=hold_error,
        )
        self._faults.append(dataclasses.asdict(fault))
        if self.telemetry is not None:
            self.telemetry.fault(fault)
        return "fault"

    def _finish(self, end: str, connected_here: bool, old_switch: float) -> None:
        """Hold (unless a fault already did), stop inference, write the end and the summary."""
        tel, driver = self.telemetry, self.driver
        assert tel is not None
        try:
            if end not in ("fault", "error") and driver.connected:
                try:
                    driver.hold()
                except DriverError as e:
                    tel.event("final_hold_failed", error=str(e))
            stopped = self._worker.stop()
            sys.setswitchinterval(old_switch)
            success = bool(driver.last_info.get("success")) if isinstance(driver, EpisodicDriver) else None
            ticks = len(tel.of_type("tick"))
            tel.event("end", reason=end, success=success, ticks=ticks, inference_thread_ended=stopped)
            counters = {
                "scheduler": self.scheduler.stats(),
                "safety": dict(self.safety.counters),
                "watchdog_trips": {d.name: d.trips for d in (self.chunk_watchdog, self.reading_watchdog)},
            }
            summary = tel.summary(counters)
            tel.write({"type": "summary", **summary})
            self.result = RunResult(end, success, ticks, list(self._faults), summary, tel.path)
        finally:
            tel.close()
            if connected_here:
                driver.disconnect()


__all__ = [
    "Controller",
    "ControllerConfig",
    "RunResult",
    "SimulatedClock",
    "TickObserver",
    "check_compatible",
    "raise_loop_priority",
    "resolve_actor",
    "sleep_until",
]
