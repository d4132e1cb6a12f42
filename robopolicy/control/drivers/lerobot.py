"""Any lerobot ``Robot`` as a :class:`Driver`: SO-100/SO-101 (``so100``, ``so101``), Koch
(``koch``), or any robot type a profile names (``lerobot``). Runs in the ``real`` environment
(``make real-env``); lerobot is imported on :meth:`LerobotDriver.connect` only.

Names and units come from the profile's ``lerobot`` map (``hardware/so101.yaml``): every joint
``j`` reads and writes lerobot's ``keys[j]`` (``<motor>.pos``), in degrees when
``joint_units: degrees`` (converted to and from our radians); the gripper keeps lerobot's
``0..100`` times ``gripper_scale``. Observations (float32)::

    joint_pos     (J,)    radians, the profile's joints in order
    gripper_pos   (1,)    the gripper action's units
    state         (J+1,)  joint_pos then gripper_pos: the action's layout
    image.<cam>   (H, W, 3) uint8, from lerobot's camera ``cameras[cam]`` (default: the same name)

Connecting. The robot is built from the profile's ``robot_type`` with ``port``, ``robot_id``,
``calibration_dir`` and ``cameras``, and connected with ``calibrate=False``: lerobot's
calibration is interactive (``input()``), so the driver refuses to connect without a stored
calibration file (``<calibration_dir>/<robot_id>.json``, written by ``lerobot-calibrate``). If
the servos' registers disagree with the file, the file is written to them with torque off (what
lerobot's own "use the calibration file" answer does).

Safety. Actions are already through our safety filter; lerobot's ``max_relative_target`` (a cap
on goal minus present position per motor) is set as a second layer to ``max_relative_ticks``
ticks of the profile's ``max_delta``. :meth:`hold` commands the present position (a fresh read,
or the newest reading if the bus does not answer) with the gripper at its last command.
:meth:`disconnect` leaves torque on by default (``disable_torque_on_disconnect=False``), so the
arm keeps holding instead of falling; lerobot's own default turns torque off.

Errors. lerobot and serial errors become :class:`DriverError` subclasses, so a controller holds:
``DeviceNotConnectedError``, a closed or vanished port → :class:`Disconnected`; "no status packet"
(a servo does not answer) and a camera timeout → :class:`ReadTimeout`; "incorrect status packet"
(bad checksum), a servo's error bits, or a joint that does not follow its target for
``tracking_timeout_s`` (more than ``tracking_tolerance`` rad away) → :class:`FaultDetected`.
"""

from __future__ import annotations

import importlib
import logging
import math
import pkgutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.control.drivers.base import (
    Disconnected,
    Driver,
    DriverError,
    FaultDetected,
    Reading,
    ReadTimeout,
)
from robopolicy.control.drivers.registry import register_driver
from robopolicy.control.profile import ActionKind, HardwareProfile
from robopolicy.types import IMAGE_PREFIX

log = logging.getLogger(__name__)

ROBOT_MODULES = {
    "so100_follower": "lerobot.robots.so_follower",
    "so101_follower": "lerobot.robots.so_follower",
    "koch_follower": "lerobot.robots.koch_follower",
    "so100_leader": "lerobot.teleoperators.so_leader",
    "so101_leader": "lerobot.teleoperators.so_leader",
    "koch_leader": "lerobot.teleoperators.koch_leader",
}
"""lerobot 0.4.x modules that register the robot and teleoperator configs we know."""


class LerobotMissing(ImportError):
    """lerobot is not installed in this environment."""


def import_lerobot(who: str) -> Any:
    """``lerobot``, or :class:`LerobotMissing` naming ``make real-env``."""
    try:
        return importlib.import_module("lerobot")
    except ImportError as e:
        raise LerobotMissing(
            f"{who}: lerobot is not installed in this environment ({sys.prefix}). The lerobot drivers run "
            "in the real environment: `make real-env`, then use .venv-real/bin/robopolicy (or .venv-real/bin/python)"
        ) from e


def config_class(registry: Any, kind: str, package: str) -> type:
    """The lerobot config class registered as ``kind`` in ``registry`` (``RobotConfig``,
    ``TeleoperatorConfig``, ``CameraConfig``), importing the module that registers it."""
    if kind in ROBOT_MODULES:
        importlib.import_module(ROBOT_MODULES[kind])
    if kind not in registry.get_known_choices():
        pkg = importlib.import_module(package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if kind in registry.get_known_choices():
                break
            try:
                importlib.import_module(f"{package}.{mod.name}")
            except ImportError:  # a robot whose optional SDK is not installed
                continue
    known = registry.get_known_choices()
    if kind not in known:
        raise ValueError(f"lerobot has no {registry.__name__} {kind!r}; known: {sorted(known)}")
    return registry.get_choice_class(kind)


def is_stream_source(spec: Mapping[str, Any]) -> bool:
    """Whether an OpenCV camera spec reads a video file or pipe rather than a device: an
    ``index_or_path`` that is a path outside ``/dev``."""
    source = spec.get("index_or_path")
    return (
        spec.get("type", "opencv") == "opencv"
        and isinstance(source, str | Path)
        and not str(source).startswith("/dev/")
    )


def camera_configs(cameras: Mapping[str, Mapping[str, Any]], rename: Mapping[str, str]) -> dict[str, Any]:
    """lerobot camera configs ``{lerobot key: CameraConfig}`` from ``{our name: {type: opencv, ...}}``."""
    from lerobot.cameras import CameraConfig

    out = {}
    for ours, spec in cameras.items():
        spec = dict(spec)
        kind = spec.pop("type", "opencv")
        cls = config_class(CameraConfig, kind, "lerobot.cameras")
        try:
            out[rename.get(ours, ours)] = cls(**spec)
        except TypeError as e:
            raise ValueError(f"camera {ours!r}: {e}") from None
    return out


@contextmanager
def driver_errors(name: str, what: str) -> Iterator[None]:
    """Turn lerobot, serial and OS errors raised inside into :class:`DriverError` subclasses."""
    try:
        yield
    except DriverError:
        raise
    except TimeoutError as e:  # a camera frame older than its limit
        raise ReadTimeout(name, f"{what}: {e}") from e
    except ConnectionError as e:  # lerobot's bus and DeviceNotConnectedError
        msg = str(e).strip()
        if type(e).__name__ == "DeviceNotConnectedError":
            raise Disconnected(name, f"{what}: {msg}") from e
        if "no status packet" in msg:
            raise ReadTimeout(name, f"{what}: a servo did not answer: {msg}") from e
        if "Incorrect status packet" in msg:
            raise FaultDetected(name, f"{what}: corrupt answer on the bus (bad checksum or framing): {msg}") from e
        raise Disconnected(name, f"{what}: {msg}") from e
    except OSError as e:  # the serial port vanished (serial.SerialException is an OSError)
        raise Disconnected(name, f"{what}: {type(e).__name__}: {e}") from e
    except RuntimeError as e:  # a servo's error bits (overload, overheat, voltage)
        raise FaultDetected(name, f"{what}: {e}") from e


class LerobotUnits:
    """Our joint-space actions and readings to and from lerobot's ``{<motor>.pos: value}``, by a
    profile's ``lerobot`` map (shared by the follower driver and the leader arm)."""

    def __init__(self, profile: HardwareProfile, who: str) -> None:
        if profile.action_kind is not ActionKind.ABSOLUTE_JOINT or profile.lerobot is None:
            raise ValueError(
                f"{who}: profile {profile.name!r} must have a joint action space and a lerobot map (has "
                f"{profile.action_space!r}, lerobot map: {'yes' if profile.lerobot else 'no'}); e.g. hardware/so101.yaml"
            )
        self.profile, self.who, self.map = profile, who, profile.lerobot
        self.joint_keys = [profile.lerobot.keys[j] for j in profile.joints.names]
        self.gripper_key = profile.lerobot.keys[profile.gripper.dim]
        self.degrees = profile.lerobot.joint_units == "degrees"

    def to_lerobot(self, action: np.ndarray) -> dict[str, float]:
        """Our action ``(J+1,)`` as lerobot's ``{<motor>.pos: value}``."""
        q = np.degrees(action[:-1]) if self.degrees else action[:-1]
        out = {k: float(v) for k, v in zip(self.joint_keys, q)}
        out[self.gripper_key] = float(action[-1]) / self.map.gripper_scale
        return out

    def from_lerobot(self, values: Mapping[str, Any]) -> np.ndarray:
        """lerobot's ``{<motor>.pos: value}`` as our ``(J+1,)`` float64 (joints [rad], gripper)."""
        try:
            q = np.array([values[k] for k in self.joint_keys], dtype=np.float64)
            g = float(values[self.gripper_key]) * self.map.gripper_scale
        except KeyError as e:
            raise FaultDetected(self.who, f"lerobot's values have no {e.args[0]!r} (has {sorted(values)})") from None
        return np.append(np.radians(q) if self.degrees else q, g)


def use_stored_calibration(device: Any, who: str, command: str) -> bool:
    """Connect a lerobot robot or teleoperator with ``calibrate=False`` from its calibration file
    (refused without one: lerobot's calibration is interactive); write the file to the servos if
    they disagree with it. True if it was written."""
    fpath = Path(getattr(device, "calibration_fpath", ""))
    if not getattr(device, "calibration", None) or not fpath.is_file():
        raise Disconnected(
            who,
            f"no calibration file at {fpath}: calibrate once with `{command}` (interactive), or copy the file there",
        )
    with driver_errors(who, "connect"):
        device.connect(calibrate=False)
        if device.is_calibrated:
            return False
        log.warning("%s: the servos disagree with %s; writing the file to them", who, fpath)
        device.bus.disable_torque()
        device.bus.write_calibration(device.calibration)
        device.configure()  # the device's own torque state again (a follower holds, a leader stays free)
        if not device.is_calibrated:
            raise FaultDetected(who, f"the servos do not keep the calibration of {fpath}")
    return True


class LerobotDriver(Driver):
    """A lerobot ``Robot`` behind the :class:`Driver` contract (module docstring).

    Args:
        profile: a joint-space profile with a ``lerobot`` map (``so101``).
        port: the serial port (``/dev/ttyACM0``; an emulated bus's pty).
        robot_id: lerobot's ``id``: the calibration file is ``<calibration_dir>/<robot_id>.json``.
        calibration_dir: where the calibration file is (default lerobot's,
            ``~/.cache/huggingface/lerobot/calibration/robots/<robot name>``).
        cameras: ``{our camera name: {type: opencv, index_or_path: 0, width: 640, height: 480, fps: 30}}``.
        robot_type: lerobot's robot type (default the profile's ``lerobot.robot_type``).
        max_relative_ticks: lerobot's ``max_relative_target`` per motor, in ticks of ``max_delta``
            (None: not set).
        disable_torque_on_disconnect: let the arm go limp on :meth:`disconnect` (lerobot's default).
        retries: extra tries of a failed bus exchange (a read, or a write's read of the present
            position for ``max_relative_target``) before it is an error.
        tracking_tolerance: [rad] a joint this far from its last target for ``tracking_timeout_s``
            is a fault (None: not checked).
        robot: an already built lerobot ``Robot`` (or a stand-in with its interface) instead of one
            built from the options above.
        clock: monotonic seconds (``Reading.t``).
    """

    default_profile: str | None = None
    """The profile when none is given (None: ``profile=`` is required)."""
    default_robot_type: str | None = None
    """lerobot's robot type when none is given (None: the profile's)."""

    def __init__(
        self,
        profile: HardwareProfile | str | Path | None = None,
        port: str = "",
        robot_id: str = "follower",
        calibration_dir: str | Path | None = None,
        cameras: Mapping[str, Mapping[str, Any]] | None = None,
        robot_type: str | None = None,
        max_relative_ticks: float | None = 5.0,
        disable_torque_on_disconnect: bool = False,
        retries: int = 1,
        tracking_tolerance: float | None = 0.35,
        tracking_timeout_s: float = 0.5,
        robot: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if profile is None and self.default_profile is None:
            raise ValueError(f"{self.name}: profile= is needed (a hardware profile with a lerobot map, e.g. so101)")
        super().__init__(self.default_profile if profile is None else profile)  # type: ignore[arg-type]
        p = self.profile
        self.units = LerobotUnits(p, self.name)
        if robot is None and not port:
            raise ValueError(f"{self.name}: port= is needed (the arm's serial port, e.g. /dev/ttyACM0)")
        if max_relative_ticks is not None and not max_relative_ticks > 0:
            raise ValueError(f"{self.name}: max_relative_ticks must be > 0 or None, got {max_relative_ticks}")
        self.lerobot_map = self.units.map
        self.port = port
        self.robot_id = robot_id
        self.calibration_dir = None if calibration_dir is None else Path(calibration_dir).expanduser()
        self.cameras = {k: dict(v) for k, v in (cameras or {}).items()}
        self.robot_type = robot_type or self.default_robot_type or self.lerobot_map.robot_type
        self.max_relative_ticks = max_relative_ticks
        self.disable_torque_on_disconnect = disable_torque_on_disconnect
        self.retries = int(retries)
        self.tracking_tolerance = tracking_tolerance
        self.tracking_timeout_s = float(tracking_timeout_s)
        self.robot = robot
        self._clock = clock
        self._degrees = self.units.degrees
        self._seq = 0
        self._last: Reading | None = None
        self._target: np.ndarray | None = None  # the last action written, ours
        self._off_since: dict[str, float] = {}
        self.calibration_written = False
        """True when :meth:`connect` wrote the calibration file to the servos."""

    # ------------------------------------------------------------------ units
    def to_lerobot(self, action: np.ndarray) -> dict[str, float]:
        """Our action ``(J+1,)`` as lerobot's ``{<motor>.pos: value}``."""
        return self.units.to_lerobot(action)

    def from_lerobot(self, values: Mapping[str, Any]) -> np.ndarray:
        """lerobot's ``{<motor>.pos: value}`` as our ``(J+1,)`` float64 (joints [rad], gripper)."""
        return self.units.from_lerobot(values)

    def max_relative_target(self) -> dict[str, float] | None:
        """lerobot's ``max_relative_target``: ``{motor: cap}`` in lerobot's units (floats, as it needs)."""
        if self.max_relative_ticks is None:
            return None
        caps = self.profile.max_delta_vector() * self.max_relative_ticks
        as_lerobot = self.to_lerobot(caps)
        return {k.removesuffix(".pos"): abs(float(v)) for k, v in as_lerobot.items()}

    # ------------------------------------------------------------------ contract
    @property
    def connected(self) -> bool:
        return self.robot is not None and bool(self.robot.is_connected)

    def observation_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        f32 = np.dtype(np.float32)
        n = len(self.profile.joints.names)
        shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            "joint_pos": ((n,), f32),
            "gripper_pos": ((1,), f32),
            "state": ((n + 1,), f32),
        }
        for cam, spec in self.cameras.items():
            shapes[IMAGE_PREFIX + cam] = ((int(spec["height"]), int(spec["width"]), 3), np.dtype(np.uint8))
        return shapes

    def build_robot(self) -> Any:
        """The lerobot ``Robot`` for the options (lerobot imported here)."""
        import_lerobot(self.name)
        from lerobot.robots import RobotConfig, make_robot_from_config

        cls = config_class(RobotConfig, self.robot_type, "lerobot.robots")
        fields = getattr(cls, "__dataclass_fields__", {})
        kwargs: dict[str, Any] = {
            "port": self.port,
            "id": self.robot_id,
            "calibration_dir": self.calibration_dir,
            "cameras": camera_configs(self.cameras, self.lerobot_map.cameras),
            "max_relative_target": self.max_relative_target(),
            "disable_torque_on_disconnect": self.disable_torque_on_disconnect,
        }
        if "use_degrees" in fields:
            kwargs["use_degrees"] = self._degrees
        elif self._degrees:
            raise ValueError(f"{self.name}: lerobot's {self.robot_type} has no use_degrees; the profile wants degrees")
        robot = make_robot_from_config(cls(**{k: v for k, v in kwargs.items() if k in fields}))
        self._free_stream_cameras(robot)
        return robot

    def _free_stream_cameras(self, robot: Any) -> None:
        """Let an OpenCV camera that reads a video file or pipe (:func:`is_stream_source`) keep the
        stream's own size and rate. lerobot's robot configs require ``width``, ``height`` and
        ``fps``, but its ``OpenCVCamera`` then sets them on the capture, which OpenCV refuses on a
        file (``VideoCapture.set`` returns False: "failed to set capture_width"); with them None it
        takes the stream's. :meth:`read` checks every frame's shape against ``width`` and ``height``."""
        for ours, spec in self.cameras.items():
            cam = getattr(robot, "cameras", {}).get(self.lerobot_map.cameras.get(ours, ours))
            if cam is not None and is_stream_source(spec):
                cam.width = cam.height = cam.fps = None

    def connect(self) -> None:
        if self.connected:
            return
        if self.robot is None:
            self.robot = self.build_robot()
        command = (
            f"lerobot-calibrate --robot.type={self.robot_type} --robot.port={self.port} --robot.id={self.robot_id}"
            + (f" --robot.calibration_dir={self.calibration_dir}" if self.calibration_dir else "")
        )
        self.calibration_written = use_stored_calibration(self.robot, self.name, command)
        self._last, self._target, self._off_since = None, None, {}

    def read(self) -> Reading:
        self._require_connected()
        t = self._clock()
        raw = self._retry("read", self.robot.get_observation)
        present = self.from_lerobot(raw)
        obs = {
            "joint_pos": present[:-1].astype(np.float32),
            "gripper_pos": present[-1:].astype(np.float32),
            "state": present.astype(np.float32),
        }
        for cam in self.cameras:
            key = self.lerobot_map.cameras.get(cam, cam)
            if key not in raw:
                raise ReadTimeout(self.name, f"no frame from camera {cam!r} (lerobot key {key!r})")
            image = np.asarray(raw[key], dtype=np.uint8)
            expect = (int(self.cameras[cam]["height"]), int(self.cameras[cam]["width"]), 3)
            if image.shape != expect:
                raise FaultDetected(self.name, f"camera {cam!r} gave a {image.shape} frame, configured {expect}")
            obs[IMAGE_PREFIX + cam] = image
        self._check_tracking(present, t)
        self._seq += 1
        self._last = Reading(t=t, seq=self._seq, obs=obs)
        return self._last

    def write(self, action: np.ndarray) -> None:
        self._require_connected()
        a = self.check_action(action)
        self._retry("write", lambda: self.robot.send_action(self.to_lerobot(a)))
        self._target = a

    def hold(self) -> None:
        """Command the present position (a fresh read; the newest reading if the bus does not
        answer), the gripper at its last command."""
        self._require_connected()
        present = None
        try:
            present = self._read_present()
        except DriverError as e:
            if self._last is None:
                raise
            log.warning("%s: hold on the newest reading (the fresh read failed: %s)", self.name, e)
            present = np.asarray(self._last.obs["state"], dtype=np.float64)
        hold = present.copy()
        if self._target is not None:
            hold[-1] = self._target[-1]
        hold = self.action_spec.clip(hold)
        with driver_errors(self.name, "hold"):
            bus = getattr(self.robot, "bus", None)
            if bus is not None:  # straight to the servos: no extra read that a dead servo would fail
                bus.sync_write("Goal_Position", {k.removesuffix(".pos"): v for k, v in self.to_lerobot(hold).items()})
            else:
                self.robot.send_action(self.to_lerobot(hold))
        self._target = hold
        self._off_since = {}

    def disconnect(self) -> None:
        if self.robot is None or not self.connected:
            return
        try:
            with driver_errors(self.name, "disconnect"):
                self.robot.disconnect()
        except DriverError as e:  # the port is closed either way
            log.warning("%s", e)

    # ------------------------------------------------------------------ helpers
    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, tried ``1 + retries`` times while the bus times out or answers garbage."""
        for attempt in range(self.retries + 1):
            try:
                with driver_errors(self.name, what):
                    return fn()
            except (ReadTimeout, FaultDetected) as e:
                if attempt == self.retries:
                    raise
                log.debug("%s: %s failed (%s), retrying", self.name, what, e)
        raise AssertionError("unreachable")

    def _read_present(self) -> np.ndarray:
        with driver_errors(self.name, "hold: reading the present position"):
            bus = getattr(self.robot, "bus", None)
            if bus is not None:
                raw = bus.sync_read("Present_Position")
                return self.from_lerobot({f"{m}.pos": v for m, v in raw.items()})
            return self.from_lerobot(self.robot.get_observation())

    def _check_tracking(self, present: np.ndarray, now: float) -> None:
        """FaultDetected when a joint stays more than ``tracking_tolerance`` from its target for
        ``tracking_timeout_s`` (a stuck joint, a collision, a servo that lost torque)."""
        if self.tracking_tolerance is None or self._target is None:
            return
        names = self.profile.joints.names
        err = np.abs(present[:-1] - self._target[:-1])
        for j, name in enumerate(names):
            if err[j] <= self.tracking_tolerance:
                self._off_since.pop(name, None)
                continue
            since = self._off_since.setdefault(name, now)
            if now - since > self.tracking_timeout_s:
                raise FaultDetected(
                    self.name,
                    f"joint {name} does not follow its target: {math.degrees(err[j]):.1f} deg away for "
                    f"{now - since:.2f} s (tolerance {math.degrees(self.tracking_tolerance):.1f} deg, "
                    f"{self.tracking_timeout_s} s)",
                )


@register_driver("lerobot")
class GenericLerobotDriver(LerobotDriver):
    """Any lerobot robot type a profile's ``lerobot`` map names (``profile=`` is required)."""


@register_driver("so101")
class SO101Driver(LerobotDriver):
    """lerobot's SO-101 follower (profile ``so101``)."""

    default_profile = "so101"


@register_driver("so100")
class SO100Driver(LerobotDriver):
    """lerobot's SO-100 follower: the SO-101's servos, units and limits (profile ``so101``)."""

    default_profile = "so101"
    default_robot_type = "so100_follower"


@register_driver("koch")
class KochDriver(LerobotDriver):
    """lerobot's Koch follower (profile ``koch``; Dynamixel servos)."""

    default_profile = "koch"


__all__ = [
    "GenericLerobotDriver",
    "KochDriver",
    "LerobotDriver",
    "LerobotMissing",
    "LerobotUnits",
    "SO100Driver",
    "SO101Driver",
    "camera_configs",
    "config_class",
    "driver_errors",
    "import_lerobot",
    "is_stream_source",
    "use_stored_calibration",
]
