"""Teleoperation of a real arm: a lerobot leader arm moves the follower through our driver and
safety filter, and episodes are recorded into an episode store (the format of the simulator's
recorder, :mod:`robopolicy.envs.teleop`), with the same keys::

    n            start a new episode
    Enter        save the current episode to the store
    Backspace    discard the current episode
    Esc          stop recording (an unsaved episode is discarded) and close the store

Every tick (the profile's ``control_hz``, on a monotonic clock) the follower is read, the leader's
joints become the target, the safety filter clamps it (joint limits, ``max_delta``), and the
follower is commanded, recording or not, so the operator can move the arm to the next start
pose between episodes. While recording, each tick stores the follower's observation (every key of
its reading) and the action sent (after the filter: what the arm was told to do; lerobot's own
recorder stores the leader's pre-clip value). A driver error or a safety fault holds the arm,
discards the episode in progress and ends the session.

    robopolicy demos record --driver so101 --port /dev/ttyACM1 --robot-id follower \\
        --teleop so101_leader --leader-port /dev/ttyACM0 --leader-id leader --out datasets/so101.zarr
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.control.drivers.base import Driver, DriverError
from robopolicy.control.drivers.lerobot import (
    LerobotUnits,
    config_class,
    driver_errors,
    import_lerobot,
    use_stored_calibration,
)
from robopolicy.control.profile import HardwareProfile, resolve_profile
from robopolicy.control.safety import SafetyFilter
from robopolicy.envs.teleop import ControlEvent, EventSource, RecordReport
from robopolicy.interrupts import defer_interrupts

KEYS_HELP = "teleop keys: n = new episode | Enter = save | Backspace = discard | Esc = quit (move the leader arm)"


class LerobotLeader:
    """A lerobot leader arm (``Teleoperator``) read in the follower profile's action units.

    Args:
        profile: the follower's profile: its ``lerobot`` map names the leader's keys and units.
        teleop_type: lerobot's teleoperator type (default the profile's ``lerobot.teleop_type``).
        port, teleop_id, calibration_dir: as lerobot's teleoperator config (the calibration file is
            ``<calibration_dir>/<teleop_id>.json``; default dir lerobot's).
        teleop: an already built teleoperator (or a stand-in) instead.
    """

    name = "leader"

    def __init__(
        self,
        profile: HardwareProfile | str | Path,
        teleop_type: str | None = None,
        port: str = "",
        teleop_id: str = "leader",
        calibration_dir: str | Path | None = None,
        teleop: Any = None,
    ) -> None:
        self.profile = resolve_profile(profile)
        self.units = LerobotUnits(self.profile, self.name)
        self.teleop_type = teleop_type or self.units.map.teleop_type
        if not self.teleop_type and teleop is None:
            raise ValueError(f"profile {self.profile.name!r} names no leader arm (lerobot.teleop_type); pass one")
        if teleop is None and not port:
            raise ValueError("the leader arm needs a port (e.g. /dev/ttyACM0)")
        self.port, self.teleop_id = port, teleop_id
        self.calibration_dir = None if calibration_dir is None else Path(calibration_dir).expanduser()
        self.teleop = teleop
        self.calibration_written = False

    def build(self) -> Any:
        import_lerobot(self.name)
        from lerobot.teleoperators import TeleoperatorConfig, make_teleoperator_from_config

        cls = config_class(TeleoperatorConfig, self.teleop_type, "lerobot.teleoperators")
        fields = getattr(cls, "__dataclass_fields__", {})
        kwargs: dict[str, Any] = {"port": self.port, "id": self.teleop_id, "calibration_dir": self.calibration_dir}
        if "use_degrees" in fields:
            kwargs["use_degrees"] = self.units.degrees
        elif self.units.degrees:
            raise ValueError(f"lerobot's {self.teleop_type} has no use_degrees; the profile wants degrees")
        return make_teleoperator_from_config(cls(**{k: v for k, v in kwargs.items() if k in fields}))

    def connect(self) -> None:
        if self.teleop is None:
            self.teleop = self.build()
        if self.teleop.is_connected:
            return
        command = (
            f"lerobot-calibrate --teleop.type={self.teleop_type} --teleop.port={self.port} --teleop.id={self.teleop_id}"
            + (f" --teleop.calibration_dir={self.calibration_dir}" if self.calibration_dir else "")
        )
        self.calibration_written = use_stored_calibration(self.teleop, self.name, command)

    def action(self) -> np.ndarray:
        """The leader's joints as the follower's action ``(J+1,)`` (joints [rad], gripper)."""
        with driver_errors(self.name, "read"):
            return self.units.from_lerobot(self.teleop.get_action())

    def disconnect(self) -> None:
        if self.teleop is not None and self.teleop.is_connected:
            with driver_errors(self.name, "disconnect"):
                self.teleop.disconnect()


class TimedControls:
    """Episode control events at given polls (one poll per tick): ``[(poll index, event), ...]``;
    for headless runs and tests."""

    def __init__(self, schedule: Iterable[tuple[int, ControlEvent | str]]) -> None:
        self.schedule = sorted((int(k), ControlEvent(e)) for k, e in schedule)
        self.polls = 0

    def poll_events(self) -> list[ControlEvent]:
        out = [e for k, e in self.schedule if k == self.polls]
        self.polls += 1
        return out


def record_arm_teleop(
    driver: Driver,
    leader: Any,
    controls: EventSource,
    out: str | Path,
    *,
    device_name: str,
    task: str = "",
    operator: str = "",
    max_episodes: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], Any] = print,
) -> RecordReport:
    """Record teleoperated episodes of ``driver``'s arm, led by ``leader`` (``.action()``), into the
    store at ``out`` (created, or appended to if it exists); see the module docstring.

    Each saved episode stores every key of the driver's readings plus ``action`` (T, Da) and
    metadata ``{episode, success (None: an operator's save, not a task check), teleop_device, task,
    operator, driver, profile}``. Connects the driver and the leader if they are not, and leaves
    the arm holding (and both connected if they were) at the end.
    """
    from robopolicy.data.store import EpisodeStore

    profile = driver.profile
    out = Path(out)
    if out.exists():
        store = EpisodeStore.open(out, mode="a")
    else:
        store = EpisodeStore.create(
            out, action_spec=driver.action_spec, control_rate=profile.control_hz, source=f"teleop:{driver.name}"
        )
    report = RecordReport(path=str(out))
    safety = SafetyFilter(profile)
    period = profile.period_s
    connected_here = [d for d in (driver, leader) if not _connected(d)]
    recording, frames, actions = False, [], []
    episode = store.n_episodes
    try:
        for d in connected_here:
            d.connect()
        next_tick = clock()
        while max_episodes is None or report.saved < max_episodes:
            stop = False
            for ev in controls.poll_events():
                if ev is ControlEvent.QUIT:
                    stop = True
                    break
                if ev is ControlEvent.START and not recording:
                    recording, frames, actions = True, [], []
                    log(f"episode {episode} started")
                elif ev is ControlEvent.SAVE and recording:
                    recording = False
                    if not actions:
                        log("nothing recorded: episode discarded")
                        report.discarded += 1
                        continue
                    _save(store, report, frames, actions, _meta(episode, device_name, task, operator, driver))
                    log(f"episode {episode} saved: {len(actions)} steps ({report.saved} saved)")
                    episode += 1
                elif ev is ControlEvent.DISCARD and recording:
                    recording = False
                    report.discarded += 1
                    log("episode discarded")
            if stop:
                break
            try:
                reading = driver.read()
                target = leader.action()
                safe, events = safety.filter(target, reading, clock())
                if any(e.fault for e in events):
                    raise DriverError(driver.name, "; ".join(str(e) for e in events if e.fault))
                driver.write(safe)
            except DriverError as e:
                log(f"fault, holding: {e}")
                driver.hold()
                raise
            if recording:
                frames.append(reading.obs)
                actions.append(safe)
            next_tick += period
            delay = next_tick - clock()
            if delay > 0:
                sleep(delay)
            else:
                next_tick = clock()
    finally:
        if recording:
            report.discarded += 1
            log("unsaved episode discarded")
        try:
            if _connected(driver):
                driver.hold()
        finally:
            store.close()
            for d in connected_here:
                d.disconnect()
    return report


def _connected(device: Any) -> bool:
    if isinstance(device, Driver):
        return device.connected
    inner = getattr(device, "teleop", None)
    return inner is not None and bool(inner.is_connected)


def _meta(episode: int, device: str, task: str, operator: str, driver: Driver) -> dict[str, Any]:
    return {
        "episode": episode,
        "success": None,
        "teleop_device": device,
        "task": task,
        "operator": operator,
        "driver": driver.name,
        "profile": driver.profile.name,
    }


def _save(store: Any, report: RecordReport, frames: list[Mapping[str, np.ndarray]], actions, meta) -> None:
    data = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    data["action"] = np.stack(actions).astype(np.float32)
    with defer_interrupts():  # Ctrl-C while saving: the episode is written whole first
        report.episode_indices.append(store.add_episode(data, metadata=meta))
    report.saved += 1
    report.steps += len(actions)


__all__ = ["KEYS_HELP", "LerobotLeader", "TimedControls", "record_arm_teleop"]
