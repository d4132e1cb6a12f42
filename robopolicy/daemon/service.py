"""The daemon's core, without the web server: one arm, one policy, one episode at a time.

States (``Daemon.state``)::

    idle       connected, holding; waits for a command (the state after every start or restart)
    running    an episode runs (the controller's loop thread drives the arm)
    estopped   the operator pressed e-stop; the arm holds until ``reset``
    fault      the arm or the link failed (or an episode ended on a fault); holds until ``reset``

The daemon never moves the arm on its own: it starts idle (after a crash too), and only
``start_episode`` starts motion. ``estop`` works in every state and latches. Each episode runs a
:class:`~robopolicy.control.controller.Controller` in its own thread, with the safety filter and
watchdogs of ``robopolicy run``; its telemetry goes to ``runs_dir/<episode>/telemetry.jsonl``
and to :meth:`Daemon.records_since` (the live stream), and its observations and actions are
appended to the recording store when it ends (:mod:`robopolicy.daemon.recorder`).

All methods are thread-safe. Bad requests raise :class:`RequestError` with an HTTP status.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.control.controller import Controller, ControllerConfig, check_compatible
from robopolicy.control.drivers import make_driver
from robopolicy.control.drivers.base import Driver, DriverError, EpisodicDriver
from robopolicy.daemon.config import DaemonConfig
from robopolicy.daemon.recorder import RunRecorder, open_store

log = logging.getLogger("robopolicy.daemon")

STATES = ("idle", "running", "estopped", "fault")
TELEMETRY_BUFFER = 4096
"""Records kept for ``GET /api/telemetry`` and late WebSocket clients."""


class RequestError(Exception):
    """A request the daemon refuses: ``status`` is the HTTP status (400, 404, 409, 422)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass
class EpisodeInfo:
    index: int
    """The daemon's episode counter (since it started)."""
    checkpoint: str
    seed: int | None
    max_ticks: int
    run_dir: str
    started: float
    """Wall-clock start."""
    end_reason: str | None = None
    success: bool | None = None
    ticks: int = 0
    faults: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    store_episode: int | None = None
    """Its index in the recording store (None: not recorded, or not yet)."""
    error: str | None = None


class Daemon:
    """See the module docstring. ``driver`` overrides the config's (tests pass a prepared one)."""

    def __init__(self, config: DaemonConfig, driver: Driver | None = None) -> None:
        self.config = config
        self.driver = driver if driver is not None else make_driver(config.driver.name, **config.driver.options)
        self._lock = threading.RLock()
        self._state = "idle"
        self._reason: str | None = None
        self.policy: Any = None
        self.checkpoint: str | None = None
        self._controller: Controller | None = None
        self._recorder: RunRecorder | None = None
        self._thread: threading.Thread | None = None
        self._episodes = itertools.count()
        self.current: EpisodeInfo | None = None
        self.last: EpisodeInfo | None = None
        self._buffer: deque[tuple[int, dict[str, Any]]] = deque(maxlen=TELEMETRY_BUFFER)
        self._seq = itertools.count(1)
        self.last_seq = 0
        self._store = None
        self.started = time.time()
        self._heartbeat = time.monotonic()

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        """Connect and hold. A driver that cannot connect leaves the daemon in ``fault`` (the API
        still answers; ``reset`` retries)."""
        self._publish({"type": "state", "state": "idle"})
        try:
            self._store = open_store(self.config.store_path, self.driver.action_spec, self.config.controller.hz)
        except Exception as e:
            self._set_fault(f"recording store: {e}")
            raise
        self._connect_and_hold()

    def _connect_and_hold(self) -> None:
        try:
            self.driver.connect()
            self.driver.hold()
        except DriverError as e:
            self._set_fault(f"driver: {e}")
            return
        with self._lock:
            self._state, self._reason = "idle", None
        self._publish({"type": "state", "state": "idle"})

    def close(self) -> None:
        """E-stop a running episode, wait for it, hold and disconnect."""
        with self._lock:
            ctl, th = self._controller, self._thread
        if ctl is not None:
            ctl.estop("daemon shutting down")
        if th is not None:
            th.join(timeout=10)
        try:
            if self.driver.connected:
                self.driver.hold()
        except DriverError as e:
            log.warning("hold on shutdown failed: %s", e)
        finally:
            self.driver.disconnect()
        if self._store is not None:
            self._store.close()

    # ------------------------------------------------------------------ commands
    @property
    def state(self) -> str:
        return self._state

    def load_policy(self, checkpoint: str, device: str | None = None) -> dict[str, Any]:
        """Load a checkpoint (a policy or run folder); refused while an episode runs."""
        import torch

        from robopolicy.eval.runner import resolve_checkpoint
        from robopolicy.policy import Policy

        path = Path(checkpoint).expanduser()
        if not path.is_absolute():
            raise RequestError(400, f"checkpoint must be an absolute path, got {checkpoint!r}")
        roots = self.config.policy_root_paths
        resolved = path.resolve()
        if roots and not any(resolved.is_relative_to(r) for r in roots):
            raise RequestError(403, f"checkpoint {checkpoint!r} is outside policy_roots {[str(r) for r in roots]}")
        with self._lock:
            if self._state == "running":
                raise RequestError(409, "an episode is running: stop it before loading another policy")
        try:
            ckpt = resolve_checkpoint(path)
        except FileNotFoundError as e:
            raise RequestError(404, str(e)) from None
        dev = device or self.config.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            policy = Policy.load(ckpt, device=dev)
        except Exception as e:
            raise RequestError(422, f"cannot load {ckpt}: {type(e).__name__}: {e}") from None
        try:
            check_compatible(policy, self.driver)
        except ValueError as e:
            raise RequestError(422, f"{ckpt} does not fit this arm: {e}") from None
        with self._lock:
            if self._state == "running":
                raise RequestError(409, "an episode started while loading: stop it first")
            self.policy, self.checkpoint = policy, str(ckpt)
        self._publish({"type": "policy", "checkpoint": str(ckpt), "name": policy.name})
        log.info("policy loaded: %s (%s)", ckpt, policy.name)
        return {"checkpoint": str(ckpt), "policy": policy.name, "device": str(policy.device)}

    def start_episode(self, seed: int | None = None, max_ticks: int | None = None, task: str | None = None) -> dict:
        """Start an episode with the loaded policy (state must be idle)."""
        with self._lock:
            if self._state != "idle":
                raise RequestError(409, f"cannot start an episode in state {self._state!r} (reset first)")
            if self.policy is None:
                raise RequestError(409, "no policy loaded: POST /api/policy first")
            if not self.driver.connected:
                raise RequestError(409, "the arm is not connected (reset to reconnect)")
            cc = self.config.controller
            cfg = ControllerConfig(
                hz=cc.hz,
                strategy=cc.strategy,
                priority=cc.priority,
                max_ticks=max_ticks or cc.max_ticks,
                n_action_steps=cc.n_action_steps,
                chunk_deadline_s=cc.chunk_deadline_s,
                reading_deadline_s=cc.reading_deadline_s,
                seed=seed if seed is not None else (0 if isinstance(self.driver, EpisodicDriver) else None),
            )
            index = next(self._episodes)
            run_dir = self.config.runs_path / f"{time.strftime('%Y%m%d-%H%M%S')}-ep{index:04d}"
            pc = self.policy.config
            rec = RunRecorder(
                self.driver.observation_shapes(),
                self.driver.action_spec.dim,
                (int(pc.timing.horizon), int(pc.action_spec.dim)),
                images=self.config.recording.images,
                meta={"checkpoint": self.checkpoint, "seed": cfg.seed, "task": task, "run_dir": str(run_dir)},
            )
            ctl = Controller(
                self.policy,
                self.driver,
                cfg,
                telemetry_path=run_dir / "telemetry.jsonl",
                meta={"checkpoint": self.checkpoint, "episode": index, "task": task},
                recorder=rec,
                telemetry_listener=self._publish,
            )
            info = EpisodeInfo(
                index, str(self.checkpoint), cfg.seed, int(cfg.max_ticks or 0), str(run_dir), time.time()
            )
            self._controller, self._recorder, self.current = ctl, rec, info
            self._state, self._reason = "running", None
            self._thread = threading.Thread(target=self._run, args=(ctl, rec, info), name="daemon-episode", daemon=True)
            self._thread.start()
        self._publish({"type": "state", "state": "running", "episode": index})
        log.info("episode %d started (seed %s, up to %d ticks)", index, cfg.seed, cfg.max_ticks)
        return {"episode": index, "run_dir": str(run_dir)}

    def _run(self, ctl: Controller, rec: RunRecorder, info: EpisodeInfo) -> None:
        result = None
        try:
            result = ctl.run()
            info.end_reason, info.success, info.ticks = result.end_reason, result.success, result.ticks
            info.faults = [{k: f.get(k) for k in ("kind", "message", "tick")} for f in result.faults]
        except Exception as e:  # the controller recorded the fault and held
            info.end_reason, info.error = "error", f"{type(e).__name__}: {e}"
            log.error("episode %d failed: %s\n%s", info.index, info.error, traceback.format_exc())
        try:
            if self._store is not None:
                info.store_episode = rec.finish(self._store, result)
        except Exception as e:
            info.error = (info.error or "") + f" recording failed: {type(e).__name__}: {e}"
            log.error("episode %d not recorded: %s", info.index, e)
        with self._lock:
            self._controller = self._recorder = None
            self.last, self.current = info, None
            if self._state == "estopped":
                pass  # latched until reset
            elif info.end_reason in ("fault", "error"):
                kinds = ", ".join(f["kind"] for f in info.faults) or info.error or "error"
                self._state, self._reason = "fault", f"episode {info.index} ended on a fault: {kinds}"
            else:
                self._state = "idle"
            state = self._state
        self._publish(
            {
                "type": "episode_end",
                "episode": info.index,
                "reason": info.end_reason,
                "success": info.success,
                "store_episode": info.store_episode,
            }
        )
        self._publish({"type": "state", "state": state, "reason": self._reason})
        log.info("episode %d ended: %s (recorded as %s)", info.index, info.end_reason, info.store_episode)

    def stop_episode(self) -> dict:
        with self._lock:
            if self._state != "running" or self._controller is None:
                raise RequestError(409, f"no episode is running (state {self._state!r})")
            self._controller.stop()
            if self._recorder is not None:
                self._recorder.event("stop")
        return {"stopping": True}

    def estop(self, reason: str = "operator e-stop") -> dict:
        """Hold now and latch ``estopped`` (any state)."""
        with self._lock:
            prev = self._state
            self._state, self._reason = "estopped", reason
            ctl, rec = self._controller, self._recorder
        if ctl is not None:
            ctl.estop(reason)
            if rec is not None:
                rec.event("estop", reason=reason)
        else:
            try:
                if self.driver.connected:
                    self.driver.hold()
            except DriverError as e:
                log.error("hold on e-stop failed: %s", e)
        self._publish({"type": "state", "state": "estopped", "reason": reason, "from": prev})
        log.warning("e-stop (%s) in state %s", reason, prev)
        return {"state": "estopped", "from": prev}

    def reset(self) -> dict:
        """Clear an e-stop or a fault: back to idle, holding (reconnects a lost link). The arm
        does not move."""
        with self._lock:
            if self._state == "running":
                raise RequestError(409, "an episode is running: stop or e-stop it first")
            if self._thread is not None and self._thread.is_alive():
                raise RequestError(409, "the last episode is still ending; retry in a moment")
        if not self.driver.connected:
            self._connect_and_hold()
        else:
            try:
                self.driver.hold()
            except DriverError as e:
                self._set_fault(f"driver: {e}")
        with self._lock:
            if self._state in ("estopped", "fault") and self.driver.connected:
                self._state, self._reason = "idle", None
            state = self._state
        self._publish({"type": "state", "state": state})
        return {"state": state}

    def label(self, success: bool, episode: int | None = None, note: str | None = None) -> dict:
        """The operator's success label for a recorded episode (default: the last one)."""
        if self._store is None:
            raise RequestError(409, "no recording store")
        with self._lock:
            if episode is None:
                if self.last is None or self.last.store_episode is None:
                    raise RequestError(409, "no episode was recorded since the daemon started")
                episode = self.last.store_episode
            if not 0 <= episode < self._store.n_episodes:
                raise RequestError(404, f"episode {episode} is not in the store (it has {self._store.n_episodes})")
            fields: dict[str, Any] = {"operator_success": bool(success)}
            if note is not None:
                fields["operator_note"] = note
            meta = self._store.update_episode_metadata(episode, **fields)
        self._publish({"type": "label", "store_episode": episode, "success": bool(success)})
        return {"store_episode": episode, "metadata": meta}

    # ------------------------------------------------------------------ status and telemetry
    def _set_fault(self, reason: str) -> None:
        with self._lock:
            self._state, self._reason = "fault", reason
        log.error("fault: %s", reason)
        self._publish({"type": "state", "state": "fault", "reason": reason})

    def _publish(self, record: dict[str, Any]) -> None:
        """Append to the live buffer (called from the loop thread for every telemetry record)."""
        seq = next(self._seq)
        self._buffer.append((seq, record))
        self.last_seq = seq
        if record.get("type") == "tick":
            self._heartbeat = time.monotonic()

    def records_since(self, seq: int, limit: int = 1000) -> tuple[int, list[dict[str, Any]]]:
        """Records after ``seq`` (oldest first, at most ``limit``) and the newest seq."""
        items = list(self._buffer)
        out = [dict(r, seq=s) for s, r in items if s > seq][:limit]
        return (out[-1]["seq"] if out else max(seq, items[-1][0] if items else 0)), out

    def healthy(self) -> bool:
        """False when an episode runs but its loop has not ticked for a second (a hung loop)."""
        with self._lock:
            running = self._state == "running"
        return not running or time.monotonic() - self._heartbeat < 1.0

    def status(self) -> dict[str, Any]:
        with self._lock:
            cur = dataclasses.asdict(self.current) if self.current else None
            last = dataclasses.asdict(self.last) if self.last else None
            state, reason = self._state, self._reason
        store = self._store
        return {
            "state": state,
            "reason": reason,
            "policy": None
            if self.policy is None
            else {"checkpoint": self.checkpoint, "name": self.policy.name, "device": str(self.policy.device)},
            "driver": {
                "name": self.driver.name,
                "profile": self.driver.profile.name,
                "connected": self.driver.connected,
                "actions": list(self.driver.action_spec.names),
            },
            "controller": dataclasses.asdict(self.config.controller),
            "episode": cur,
            "last_episode": last,
            "recording": {
                "store": str(self.config.store_path),
                "episodes": None if store is None else store.n_episodes,
            },
            "telemetry_seq": self.last_seq,
            "uptime_s": time.time() - self.started,
        }


def jsonable_status(d: dict[str, Any]) -> dict[str, Any]:
    """Status with numpy values made plain (it is sent as JSON)."""

    def conv(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        return v

    return conv(d)


__all__ = ["STATES", "Daemon", "EpisodeInfo", "RequestError", "jsonable_status"]
