"""Teleoperation recording with robosuite's own devices into an episode store.

One recorder loop (:func:`record_teleop`) serves every input device. It reads

- motion from a *device* with robosuite's ``Device`` interface: ``start_control()`` and
  ``input2action() -> dict | None`` (``None``: the device asked for a reset), converted to the
  env action with the robot's ``create_action_vector`` exactly as robosuite's
  ``collect_human_demonstrations.py`` does;
- episode control events (start / save / discard / quit) from a *controls* object with
  ``poll_events() -> list[ControlEvent]``.

Keys (``keyboard`` and ``spacemouse`` devices; the keys come from the keyboard either way)::

    n            start a new episode (the env resets with the next seed)
    Enter        save the current episode to the store
    Backspace    discard the current episode (robosuite's own reset, q / SpaceMouse right
                 button, discards too)
    Esc          stop recording (an unsaved episode is discarded) and close the store
    robosuite's motion keys: arrows (x-y), . and ; (z), e-r y-h o-p (rotate), space (gripper)

On a headless machine the same loop runs with :class:`ScriptedDevice`, a robosuite ``Device``
whose ``get_controller_state()`` replays a scripted expert's actions and whose
``poll_events()`` plays a list of save/discard decisions.
"""

from __future__ import annotations

import enum
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from robopolicy.envs.robosuite_env import RobosuiteEnv
from robopolicy.interrupts import defer_interrupts

KEYS_HELP = """\
teleop keys: n = new episode | Enter = save | Backspace = discard | Esc = quit
motion (robosuite keyboard): arrows x-y, '.'/';' z, e-r y-h o-p rotate, space gripper, q reset (discards)"""


class ControlEvent(str, enum.Enum):
    """Episode control events of the recorder."""

    START = "start"
    SAVE = "save"
    DISCARD = "discard"
    QUIT = "quit"


class DeviceUnavailableError(RuntimeError):
    """A teleop device (or its library / display) is not available on this machine."""


class EventSource(Protocol):
    def poll_events(self) -> list[ControlEvent]: ...


class TeleopDevice(Protocol):
    """robosuite's device interface as the recorder uses it."""

    active_robot: int

    def start_control(self) -> None: ...

    def input2action(self, mirror_actions: bool = False) -> dict[str, np.ndarray] | None: ...


def device_action(env: RobosuiteEnv, device: TeleopDevice) -> np.ndarray | None:
    """The env action (7,) for the device's current input; None if the device requested a reset."""
    ac = device.input2action()
    if ac is None:
        return None
    robot = env.env.robots[device.active_robot]
    action_dict = dict(ac)
    for arm in robot.arms:
        kind = robot.part_controllers[arm].input_type
        if kind != "delta":
            raise ValueError(f"teleop records OSC_POSE delta actions; arm {arm!r} uses {kind!r} input")
        action_dict[arm] = ac[f"{arm}_delta"]
    return np.asarray(robot.create_action_vector(action_dict), dtype=np.float64)


@dataclass
class RecordReport:
    """Counts of a teleop session."""

    path: str
    saved: int = 0
    discarded: int = 0
    steps: int = 0
    episode_indices: list[int] = field(default_factory=list)


def record_teleop(
    env: RobosuiteEnv,
    device: TeleopDevice,
    controls: EventSource,
    out: str | Path,
    *,
    device_name: str,
    seed: int = 0,
    operator: str = "",
    realtime: bool = True,
    max_episodes: int | None = None,
    log: Any = print,
) -> RecordReport:
    """Record teleoperated episodes into the store at ``out`` (created, or appended to if it exists).

    Each saved episode stores every observation key of ``env`` plus ``action`` (T, 7) and
    metadata ``{seed, success, teleop_device, task, operator}``; ``success`` is whether the task
    check passed at any step. Episode ``k`` of the session uses env seed ``seed + k``. With
    ``realtime`` the loop is paced to the env's control rate on a monotonic clock.
    """
    from robopolicy.data.store import EpisodeStore

    out = Path(out)
    if out.exists():
        store = EpisodeStore.open(out, mode="a")
    else:
        store = EpisodeStore.create(
            out, action_spec=env.action_spec, control_rate=float(env.control_freq), source=f"teleop:{env.task}"
        )
    report = RecordReport(path=str(out))
    period = 1.0 / env.control_freq
    recording = False
    next_seed = int(seed)
    frames: list[dict[str, np.ndarray]] = []
    actions: list[np.ndarray] = []
    ep_seed, success = next_seed, False
    obs: dict[str, np.ndarray] = {}
    next_tick = time.monotonic()
    try:
        while max_episodes is None or report.saved < max_episodes:
            stop = False
            for ev in controls.poll_events():
                if ev is ControlEvent.QUIT:
                    stop = True
                    break
                if ev is ControlEvent.START and not recording:
                    ep_seed, next_seed = next_seed, next_seed + 1
                    obs, frames, actions, success = env.reset(ep_seed), [], [], False
                    device.start_control()
                    recording = True
                    log(f"episode started (seed {ep_seed})")
                elif ev is ControlEvent.SAVE and recording:
                    recording = False
                    if not actions:
                        log("nothing recorded: episode discarded")
                        report.discarded += 1
                        continue
                    data = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
                    data["action"] = np.stack(actions).astype(np.float32)
                    meta = {
                        "seed": ep_seed,
                        "success": bool(success),
                        "teleop_device": device_name,
                        "task": env.task,
                        "operator": operator,
                    }
                    with defer_interrupts():  # Ctrl-C while saving: the episode is written whole first
                        report.episode_indices.append(store.add_episode(data, metadata=meta))
                    report.saved += 1
                    report.steps += len(actions)
                    log(f"episode saved: {len(actions)} steps, success={success} ({report.saved} saved)")
                elif ev is ControlEvent.DISCARD and recording:
                    recording = False
                    report.discarded += 1
                    log("episode discarded")
            if stop:
                if recording:
                    report.discarded += 1
                    log("unsaved episode discarded")
                break
            if not recording or env.t >= env.max_steps:
                if realtime:
                    time.sleep(period)
                continue
            action = device_action(env, device)
            if action is None:  # the device's own reset button
                recording = False
                report.discarded += 1
                log("device reset: episode discarded")
                continue
            action = env.validate_action(action)
            frames.append(obs)
            actions.append(action)
            obs, _, done, info = env.step(action)
            success = success or info["success"]
            env.render_viewer()
            if done:
                log(f"max_steps ({env.max_steps}) reached: press Enter to save or Backspace to discard")
            if realtime:
                next_tick += period
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_tick = time.monotonic()
    finally:
        store.close()
    return report


# --------------------------------------------------------------------------- devices
def robosuite_device_base() -> type:
    """robosuite's ``Device`` base class.

    ``import robosuite.devices`` imports ``Keyboard`` and with it pynput, which raises without an
    X display; then ``devices/device.py`` (which needs neither) is loaded on its own.
    """
    try:
        from robosuite.devices import Device

        return Device
    except ImportError:
        import importlib.util
        import sys

        import robosuite

        name = "_robopolicy_robosuite_device"
        if name not in sys.modules:
            path = Path(robosuite.__file__).parent / "devices" / "device.py"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[name] = module
        return sys.modules[name].Device


class ScriptedDevice:
    """A robosuite ``Device`` driven by a scripted expert, plus a scripted list of episode outcomes.

    ``plan`` holds one entry per episode, ``"save"`` or ``"discard"``: the device emits START,
    replays the expert until ``steps_after_success`` steps after success (or ``max_steps``
    steps), then emits the planned event; after the last entry it emits QUIT.
    """

    def __init__(
        self,
        env: RobosuiteEnv,
        plan: Sequence[str],
        *,
        noise: float = 0.0,
        seed: int = 0,
        steps_after_success: int = 5,
        max_steps: int | None = None,
    ) -> None:
        from robopolicy.envs.experts import make_expert

        Device = robosuite_device_base()

        bad = [p for p in plan if p not in ("save", "discard")]
        if bad:
            raise ValueError(f"plan entries must be 'save' or 'discard', got {bad}")

        class _Device(Device):  # robosuite's Device: its input2action turns our state into actions
            def start_control(inner) -> None:  # noqa: N805
                inner._reset_internal_state()

            def get_controller_state(inner) -> dict:  # noqa: N805
                return self._controller_state()

            def _postprocess_device_outputs(inner, dpos, drotation):  # noqa: N805
                return np.clip(dpos, -1, 1), np.clip(drotation, -1, 1)

        self._device = _Device(env.env)
        self._device._reset_internal_state()
        self.env = env
        self.plan = list(plan)
        self.expert = make_expert(env.task, env, np.random.default_rng(seed), noise=noise)
        self.steps_after_success = steps_after_success
        self.max_steps = max_steps or env.max_steps
        self._episode = -1
        self._events: queue.SimpleQueue[ControlEvent] = queue.SimpleQueue()
        self._events.put(ControlEvent.START)
        self._success_at: int | None = None
        self._started = False

    # robosuite Device interface
    @property
    def active_robot(self) -> int:
        return self._device.active_robot

    def start_control(self) -> None:
        self._device.start_control()
        self._episode += 1
        self._started = False
        self._success_at = None

    def input2action(self, mirror_actions: bool = False) -> dict[str, np.ndarray] | None:
        return self._device.input2action(mirror_actions=mirror_actions)

    def _controller_state(self) -> dict:
        obs = self.env.last_obs
        if not self._started:
            self.expert.reset(obs)
            self._started = True
        a = self.expert.act(obs)
        # invert robosuite's mapping drotation = raw[[1, 0, 2]] with z negated
        raw = np.array([a[4], a[3], -a[5]])
        self._after_step()
        return {
            "dpos": a[:3].copy(),
            "rotation": np.eye(3),
            "raw_drotation": raw,
            "grasp": int(a[6] > 0),
            "reset": 0,
            "base_mode": 0,
        }

    def _after_step(self) -> None:
        t = self.env.t + 1  # the step about to be taken
        if self._success_at is None and self.env.is_success():
            self._success_at = t
        if (self._success_at is not None and t >= self._success_at + self.steps_after_success) or t >= self.max_steps:
            self._events.put(ControlEvent(self.plan[self._episode]))
            self._events.put(ControlEvent.START if self._episode + 1 < len(self.plan) else ControlEvent.QUIT)

    # controls
    def poll_events(self) -> list[ControlEvent]:
        out = []
        while not self._events.empty():
            out.append(self._events.get())
        return out


class KeyboardControls:
    """Episode control keys from the keyboard (pynput; needs a display)."""

    def __init__(self) -> None:
        try:
            from pynput.keyboard import Key, Listener
        except Exception as e:  # pynput raises ImportError/other errors without an X display
            raise DeviceUnavailableError(
                f"keyboard controls need pynput and a display (DISPLAY / X server): {_first_line(e)}"
            ) from None
        self._events: queue.SimpleQueue[ControlEvent] = queue.SimpleQueue()
        special = {Key.enter: ControlEvent.SAVE, Key.backspace: ControlEvent.DISCARD, Key.esc: ControlEvent.QUIT}

        def on_release(key: Any) -> None:
            if key in special:
                self._events.put(special[key])
            elif getattr(key, "char", None) == "n":
                self._events.put(ControlEvent.START)

        self._listener = Listener(on_release=on_release)
        self._listener.start()

    def poll_events(self) -> list[ControlEvent]:
        out = []
        while not self._events.empty():
            out.append(self._events.get())
        return out

    def close(self) -> None:
        self._listener.stop()


DEVICES = ("keyboard", "spacemouse")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def make_device(name: str, env: RobosuiteEnv, pos_sensitivity: float = 1.0, rot_sensitivity: float = 1.0):
    """robosuite's ``Keyboard`` or ``SpaceMouse`` for ``env`` (imported lazily; clear error if unusable)."""
    if name not in DEVICES:
        raise ValueError(f"unknown teleop device {name!r}; valid devices: {', '.join(DEVICES)}")
    try:
        if name == "keyboard":
            from robosuite.devices import Keyboard as cls
        else:
            from robosuite.devices import SpaceMouse as cls
    except Exception as e:
        need = (
            "pynput and a display" if name == "keyboard" else "hidapi (pip install hidapi) and a connected SpaceMouse"
        )
        raise DeviceUnavailableError(
            f"teleop device {name!r} is unavailable (needs {need}): {_first_line(e)}"
        ) from None
    try:
        return cls(env=env.env, pos_sensitivity=pos_sensitivity, rot_sensitivity=rot_sensitivity)
    except Exception as e:
        raise DeviceUnavailableError(f"could not open teleop device {name!r}: {_first_line(e)}") from None


__all__ = [
    "KEYS_HELP",
    "ControlEvent",
    "DeviceUnavailableError",
    "RecordReport",
    "record_teleop",
    "device_action",
    "ScriptedDevice",
    "KeyboardControls",
    "make_device",
    "DEVICES",
]
