"""A mock 7-joint arm in pure numpy: tests and dry runs without a simulator or hardware.

Model. Joint positions ``q`` follow a joint target ``q_target`` (first order, ``response`` per
tick; 1.0 reaches it in one tick), clipped to the profile's joint limits. The end effector is a
fixed linear map of the joints, ``[dpos; drot] = J (q - q_home)`` with a constant rank-6
``J`` (6x7), around a home pose at ``home_eef_pos`` pointing down. A :meth:`MockArm.write` of an
OSC_POSE delta action moves ``q_target`` by ``pinv(J) [dpos; drot]`` (``metres_per_unit`` m and
0.5 rad per action unit, as robosuite's OSC) and advances one tick; :meth:`MockArm.hold` sets
``q_target = q`` and advances one tick. The gripper opening follows the command at 1 cm per tick.
Observations have the keys, shapes and dtypes of a robosuite Panda (``object`` is zeros).

Timing. :meth:`MockArm.read` captures the state at ``clock()`` (``Reading.t``), then sleeps
``latency_s`` plus a uniform draw from ``[0, jitter_s)`` (seeded); a reply later than
``read_timeout_s`` is a :class:`ReadTimeout` after sleeping the timeout. Pass ``clock`` and
``sleep`` to run on a fake clock.

Faults (:class:`Fault`), scheduled with :meth:`MockArm.schedule` (or ``faults=``) to fire at the
first read or write call made after ``at_read`` reads or ``at_write`` writes (both None: the
next call), or made active at once with :meth:`MockArm.trigger`:

=============== ===========================================================================
read_timeout    the next ``count`` reads sleep ``read_timeout_s`` and raise ReadTimeout
dropped_frame   the next ``count`` reads return the previous Reading (same ``seq`` and ``t``)
disconnect      the link is lost: this and every later call raises Disconnected (the arm
                stops) until :meth:`MockArm.connect`
nan_reading     the next ``count`` readings have NaN in ``key`` (and in ``state`` if part of it)
stuck_joint     joint ``joint`` stops following commands; once its target is more than
                ``tracking_tolerance`` away, every read raises FaultDetected naming the joint,
                until :meth:`MockArm.hold` (``tracking_tolerance=None``: never raised)
=============== ===========================================================================

``count=None`` keeps a read fault active until :meth:`MockArm.clear_faults`. Everything is a
function of ``seed`` and the sequence of calls: two arms with the same seed, calls and clock
give identical readings.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robopolicy.control.drivers.base import (
    Disconnected,
    EpisodicDriver,
    FaultDetected,
    Reading,
    ReadTimeout,
    panda_observation_shapes,
)
from robopolicy.control.drivers.registry import register_driver
from robopolicy.control.profile import HardwareProfile

ROT_RAD_PER_UNIT = 0.5
"""Radians of orientation goal per rotation action unit (robosuite's OSC ``output_max``)."""

# d(eef pose)/dq: rows x y z [m/rad], rx ry rz [rad/rad]; columns joints 1..7. Shoulder and
# elbow (2, 4) move x and z, the base (1) and joint 3 move y, the wrist (5-7) turns the hand.
_JACOBIAN = np.array(
    [
        [0.0, 0.4, 0.0, -0.3, 0.0, 0.0, 0.0],
        [0.5, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0],
        [0.0, -0.3, 0.0, -0.4, 0.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0, 0.5, 0.0, 1.0],
    ]
)
_HOME_QUAT = np.array([1.0, 0.0, 0.0, 0.0])  # xyzw: the hand pointing down (pi about x)
_GRIPPER_M_PER_TICK = 0.01
_FINGER_OPEN_M = 0.04


class Fault(str, enum.Enum):
    """Faults the mock arm can inject."""

    READ_TIMEOUT = "read_timeout"
    DROPPED_FRAME = "dropped_frame"
    DISCONNECT = "disconnect"
    NAN_READING = "nan_reading"
    STUCK_JOINT = "stuck_joint"


_READ_FAULTS = (Fault.READ_TIMEOUT, Fault.DROPPED_FRAME, Fault.NAN_READING)


@dataclass(frozen=True)
class FaultSpec:
    """A fault to inject (see the module docstring for what each does).

    Attributes:
        kind: a :class:`Fault` (or its value, e.g. ``"read_timeout"``).
        at_read: fire at the first call after this many reads.
        at_write: fire at the first call after this many writes (with ``at_read``: whichever first).
        count: reads a read fault affects; None: until ``clear_faults()``.
        joint: the joint index a ``stuck_joint`` fault sticks.
        key: the observation key a ``nan_reading`` fault fills with NaN.
    """

    kind: Fault
    at_read: int | None = None
    at_write: int | None = None
    count: int | None = 1
    joint: int = 0
    key: str = "eef_pos"

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", Fault(self.kind))
        except ValueError:
            raise ValueError(f"unknown fault {self.kind!r}; known faults: {[f.value for f in Fault]}") from None
        for name in ("at_read", "at_write"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        if self.count is not None and self.count < 1:
            raise ValueError(f"count must be >= 1 or None, got {self.count}")

    def due(self, reads: int, writes: int) -> bool:
        if self.at_read is None and self.at_write is None:
            return True
        return (self.at_read is not None and reads >= self.at_read) or (
            self.at_write is not None and writes >= self.at_write
        )


@register_driver("mock")
class MockArm(EpisodicDriver):
    """A deterministic mock arm with latency, jitter and injectable faults (module docstring).

    Args:
        profile: a 7-joint ``osc_pose`` profile (default: the robosuite Panda's).
        seed: seeds the initial-pose noise and the jitter.
        latency_s, jitter_s: each read's reply delay is ``latency_s + U[0, jitter_s)``.
        read_timeout_s: a read whose reply would take longer raises ReadTimeout.
        response: fraction of the remaining joint-target error closed per tick, in (0, 1].
        tracking_tolerance: joint-target error [rad] beyond which a stuck joint raises
            FaultDetected on read (None: never).
        init_noise: std of the Gaussian noise [rad] added to the home joint positions at reset.
        object_dim: size of the (zero) ``object`` observation; 10 matches Lift.
        home_eef_pos: end-effector position at the home pose [m, world frame].
        faults: FaultSpecs to schedule.
        clock, sleep: the monotonic clock and the sleep the mock uses (fake ones in tests).
    """

    def __init__(
        self,
        profile: HardwareProfile | str | Path = "robosuite_panda",
        *,
        seed: int = 0,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        read_timeout_s: float = 0.1,
        response: float = 1.0,
        tracking_tolerance: float | None = 0.05,
        init_noise: float = 0.0,
        object_dim: int = 10,
        home_eef_pos: Sequence[float] = (-0.1, 0.0, 1.0),
        faults: Iterable[FaultSpec] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(profile)
        p = self.profile
        if p.action_space != "osc_pose" or len(p.joints.names) != 7:
            raise ValueError(
                f"{self.name}: drives a 7-joint arm with osc_pose actions; profile {p.name!r} has "
                f"{len(p.joints.names)} joints and action space {p.action_space!r}"
            )
        if latency_s < 0 or jitter_s < 0 or not read_timeout_s > 0:
            raise ValueError(
                f"{self.name}: latency_s, jitter_s must be >= 0 and read_timeout_s > 0, "
                f"got {latency_s}, {jitter_s}, {read_timeout_s}"
            )
        if not 0 < response <= 1:
            raise ValueError(f"{self.name}: response must be in (0, 1], got {response}")
        self.latency_s, self.jitter_s, self.read_timeout_s = float(latency_s), float(jitter_s), float(read_timeout_s)
        self.response = float(response)
        self.tracking_tolerance = tracking_tolerance
        self.init_noise = float(init_noise)
        self.object_dim = int(object_dim)
        self.home_eef_pos = np.asarray(home_eef_pos, dtype=np.float64)
        self._clock, self._sleep = clock, sleep
        self._lower, self._upper = np.asarray(p.joints.lower), np.asarray(p.joints.upper)
        self._q_home = np.asarray(p.home.joint_pos, dtype=np.float64)
        self._j_pinv = np.linalg.pinv(_JACOBIAN)
        names = self.action_spec.names
        self._pos_idx = [names.index(d) for d in p.workspace.dims]
        self._rot_idx = [names.index(d) for d in ("drx", "dry", "drz")]
        self._grip_idx = names.index(p.gripper.dim)
        self._connected = False
        self._lost: str | None = None
        self._pending: list[FaultSpec] = []
        self._active: dict[Fault, int | None] = {}
        self._nan_key = "eef_pos"
        self._stuck: set[int] = set()
        self.reads = 0
        """read() calls made while connected."""
        self.writes = 0
        """write() calls made while connected."""
        self._seq = 0
        self._last: Reading | None = None
        self.reset(seed)
        for spec in faults:
            self.schedule(spec)

    # ------------------------------------------------------------------ state
    def reset(self, seed: int | None = None) -> None:
        """Put the arm at its home pose (plus ``init_noise``) and reseed the jitter (connected or not;
        read/write counts and faults are kept)."""
        self.seed = self.seed if seed is None else int(seed)
        self._rng_init = np.random.default_rng([self.seed, 0])
        self._rng_jitter = np.random.default_rng([self.seed, 1])
        q = self._q_home + (self._rng_init.normal(0.0, self.init_noise, 7) if self.init_noise > 0 else 0.0)
        self._q = np.clip(q, self._lower, self._upper)
        self._q_target = self._q.copy()
        self._qd = np.zeros(7)
        self._grip_cmd = float(self.profile.home.gripper)
        self._grip_w = self._finger_target(self._grip_cmd)
        self.last_info = {"success": False, "reward": 0.0, "done": False, "t": 0}

    @staticmethod
    def _finger_target(cmd: float) -> float:
        return _FINGER_OPEN_M * (1.0 - cmd) / 2.0  # -1 open (4 cm per finger), +1 closed

    def _advance(self) -> None:
        """One control tick of the joints and the gripper."""
        q = self._q + self.response * (self._q_target - self._q)
        for j in self._stuck:
            q[j] = self._q[j]
        q = np.clip(q, self._lower, self._upper)
        self._qd = (q - self._q) / self.profile.period_s
        self._q = q
        target = self._finger_target(self._grip_cmd)
        self._grip_w += float(np.clip(target - self._grip_w, -_GRIPPER_M_PER_TICK, _GRIPPER_M_PER_TICK))
        self.last_info = {**self.last_info, "t": self.last_info["t"] + 1}

    def _observe(self) -> dict[str, np.ndarray]:
        d = _JACOBIAN @ (self._q - self._q_home)
        quat = _quat_mul(_quat_from_rotvec(d[3:]), _HOME_QUAT)
        obs = {
            "eef_pos": self.home_eef_pos + d[:3],
            "eef_quat": quat,
            "gripper_qpos": np.array([self._grip_w, -self._grip_w]),
            "joint_pos": self._q.copy(),
            "joint_vel": self._qd.copy(),
            "object": np.zeros(self.object_dim),
        }
        obs = {k: v.astype(np.float32) for k, v in obs.items()}
        nan = self._consume(Fault.NAN_READING)
        if nan and self._nan_key != "state":
            obs[self._nan_key] = np.full_like(obs[self._nan_key], np.nan)
        obs["state"] = np.concatenate([obs["eef_pos"], obs["eef_quat"], obs["gripper_qpos"], obs["object"]])
        if nan and self._nan_key == "state":
            obs["state"] = np.full_like(obs["state"], np.nan)
        return obs

    # ------------------------------------------------------------------ faults
    def schedule(self, fault: FaultSpec | Fault | str, **kwargs: object) -> FaultSpec:
        """Schedule ``fault`` (a FaultSpec, or a kind plus FaultSpec fields); returns the spec."""
        spec = fault if isinstance(fault, FaultSpec) else FaultSpec(Fault(fault), **kwargs)  # type: ignore[arg-type]
        self._check_spec(spec)
        self._pending.append(spec)
        return spec

    def trigger(self, fault: Fault | str, **kwargs: object) -> None:
        """Make ``fault`` active now (``count``, ``joint``, ``key`` as in :class:`FaultSpec`)."""
        spec = FaultSpec(Fault(fault), **kwargs)  # type: ignore[arg-type]
        self._check_spec(spec)
        self._activate(spec, "triggered")

    def clear_faults(self) -> None:
        """Drop scheduled and active faults; stuck joints move again (a lost link stays lost)."""
        self._pending.clear()
        self._active.clear()
        self._stuck.clear()

    @property
    def stuck_joints(self) -> frozenset[int]:
        return frozenset(self._stuck)

    @property
    def active_faults(self) -> dict[Fault, int | None]:
        """Active read faults and the reads each has left (None: until cleared)."""
        return dict(self._active)

    def _check_spec(self, spec: FaultSpec) -> None:
        if spec.kind is Fault.STUCK_JOINT and not 0 <= spec.joint < 7:
            raise ValueError(f"{self.name}: stuck_joint joint must be in [0, 7), got {spec.joint}")
        if spec.kind is Fault.NAN_READING and spec.key not in self.observation_shapes():
            raise ValueError(
                f"{self.name}: nan_reading key {spec.key!r} is not an observation key {sorted(self.observation_shapes())}"
            )

    def _activate(self, spec: FaultSpec, when: str) -> None:
        if spec.kind is Fault.DISCONNECT:
            self._lose_link(f"injected disconnect ({when})")
        elif spec.kind is Fault.STUCK_JOINT:
            self._stuck.add(spec.joint)
        else:
            self._active[spec.kind] = spec.count
            if spec.kind is Fault.NAN_READING:
                self._nan_key = spec.key

    def _fire_due(self) -> None:
        due = [s for s in self._pending if s.due(self.reads, self.writes)]
        for spec in due:
            self._pending.remove(spec)
            self._activate(spec, f"after {self.reads} reads, {self.writes} writes")

    def _consume(self, kind: Fault) -> bool:
        if kind not in self._active:
            return False
        left = self._active[kind]
        if left is not None:
            if left <= 1:
                del self._active[kind]
            else:
                self._active[kind] = left - 1
        return True

    def _lose_link(self, reason: str) -> None:
        self._connected = False
        self._lost = reason
        self._q_target = self._q.copy()  # the arm's own watchdog stops it

    def _start_call(self) -> None:
        """Connected check and due faults, at the start of every read and write."""
        if self._lost:
            raise Disconnected(self.name, f"link lost: {self._lost}; call connect() to reconnect")
        self._require_connected()
        self._fire_due()
        if not self._connected:
            raise Disconnected(self.name, f"link lost: {self._lost}")

    # ------------------------------------------------------------------ Driver
    @property
    def connected(self) -> bool:
        return self._connected

    def observation_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return panda_observation_shapes(self.object_dim)

    def connect(self) -> None:
        self._connected = True
        self._lost = None

    def disconnect(self) -> None:
        self._connected = False

    def read(self) -> Reading:
        self._start_call()
        self.reads += 1
        t = self._clock()
        if self._consume(Fault.READ_TIMEOUT):
            self._sleep(self.read_timeout_s)
            raise ReadTimeout(self.name, f"no reading within {self.read_timeout_s:.3f} s (injected read timeout)")
        delay = self.latency_s + (self._rng_jitter.uniform(0.0, self.jitter_s) if self.jitter_s > 0 else 0.0)
        if delay > self.read_timeout_s:
            self._sleep(self.read_timeout_s)
            raise ReadTimeout(self.name, f"no reading within {self.read_timeout_s:.3f} s (reply delay {delay:.3f} s)")
        if delay > 0:
            self._sleep(delay)
        if self._last is not None and self._consume(Fault.DROPPED_FRAME):
            return self._last
        self._check_tracking()
        self._seq += 1
        self._last = Reading(t=t, seq=self._seq, obs=self._observe())
        return self._last

    def _check_tracking(self) -> None:
        if self.tracking_tolerance is None or not self._stuck:
            return
        err = np.abs(self._q_target - self._q)
        bad = [j for j in sorted(self._stuck) if err[j] > self.tracking_tolerance]
        if bad:
            names = self.profile.joints.names
            detail = ", ".join(f"{names[j]} (error {err[j]:.3f} rad)" for j in bad)
            raise FaultDetected(
                self.name,
                f"joint not following its command: {detail} > tolerance {self.tracking_tolerance} rad; hold() to clear",
            )

    def write(self, action: np.ndarray) -> None:
        self._start_call()
        self.writes += 1
        a = self.check_action(action)
        delta = np.concatenate(
            [a[self._pos_idx] * self.profile.workspace.metres_per_unit, a[self._rot_idx] * ROT_RAD_PER_UNIT]
        )
        self._q_target = np.clip(self._q_target + self._j_pinv @ delta, self._lower, self._upper)
        g = self.profile.gripper
        self._grip_cmd = float(np.clip(a[self._grip_idx], g.low, g.high))
        self._advance()

    def hold(self) -> None:
        self._start_call()
        self._q_target = self._q.copy()
        self._advance()


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of xyzw quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ]
    )


def _quat_from_rotvec(r: np.ndarray) -> np.ndarray:
    """xyzw quaternion of the rotation vector ``r`` (axis times angle)."""
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.array([0.5 * r[0], 0.5 * r[1], 0.5 * r[2], 1.0]) / np.sqrt(1.0 + 0.25 * angle**2)
    axis = r / angle
    return np.concatenate([axis * np.sin(angle / 2), [np.cos(angle / 2)]])


__all__ = ["Fault", "FaultSpec", "MockArm", "ROT_RAD_PER_UNIT"]
