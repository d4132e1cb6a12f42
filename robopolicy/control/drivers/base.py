"""The driver contract: what the controller needs of an arm, simulated or real.

A driver is used from one thread, the control loop's::

    driver.connect()
    while running:
        reading = driver.read()          # newest observation; reading.seq repeats if no new frame
        driver.write(action)             # one tick's action (already through the safety filter)
    driver.hold()                        # stop moving, keep position
    driver.disconnect()

Observations use the keys and units of :class:`robopolicy.envs.robosuite_env.RobosuiteEnv`
(``eef_pos`` [m, world frame], ``eef_quat`` xyzw, ``gripper_qpos``, ``joint_pos`` [rad],
``joint_vel`` [rad/s], ``object``, ``state``; float32), so a policy trained in simulation reads a
driver's observations as they are. Actions follow the profile's action spec.

Every failure of the arm or the link is a :class:`DriverError` (a subclass says which), whose
message starts with the driver's name; a controller catches ``DriverError`` and holds.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from robopolicy.control.profile import HardwareProfile, resolve_profile
from robopolicy.types import IMAGE_PREFIX, ActionSpec


class DriverError(RuntimeError):
    """A failure of the arm or its link, reported by driver ``driver``."""

    def __init__(self, driver: str, message: str) -> None:
        super().__init__(f"{driver}: {message}")
        self.driver = driver


class ReadTimeout(DriverError):
    """No observation arrived within the driver's read timeout."""


class Disconnected(DriverError):
    """The driver is not connected (never connected, disconnected, or the link was lost)."""


class FaultDetected(DriverError):
    """The arm reports a fault (a stuck joint, a tracking error, a failed simulation step)."""


class InvalidCommand(DriverError, ValueError):
    """The driver refused a command (wrong shape, NaN or inf); nothing was sent."""


@dataclass(frozen=True)
class Reading:
    """One observation from a driver.

    Attributes:
        t: ``time.monotonic()`` seconds at which the observation was captured (for a simulator:
            when the step that produced it finished). Latency compensation anchors on it.
        seq: frame counter, +1 per new frame; a reading with the previous reading's ``seq`` is a
            repeat (no new frame came).
        obs: ``{key: array}`` in the keys and units of ``RobosuiteEnv`` observations.
    """

    t: float
    seq: int
    obs: dict[str, np.ndarray] = field(repr=False)


def panda_observation_shapes(
    object_dim: int, cameras: Sequence[str] = (), image_size: int = 84
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of a Panda observation as ``RobosuiteEnv`` returns it."""
    f32 = np.dtype(np.float32)
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {
        "eef_pos": ((3,), f32),
        "eef_quat": ((4,), f32),
        "gripper_qpos": ((2,), f32),
        "joint_pos": ((7,), f32),
        "joint_vel": ((7,), f32),
        "object": ((object_dim,), f32),
        "state": ((9 + object_dim,), f32),
    }
    for cam in cameras:
        shapes[IMAGE_PREFIX + cam] = ((image_size, image_size, 3), np.dtype(np.uint8))
    return shapes


class Driver(abc.ABC):
    """An arm the controller drives: connect, read, write, hold, disconnect.

    Subclasses set :attr:`name` (by registering with :func:`register_driver`), pass their profile
    to ``__init__`` and implement the abstract methods. The base supplies the profile, the action
    spec, a context manager (``with driver:`` connects, and holds then disconnects on exit) and
    :meth:`check_action`.
    """

    name: ClassVar[str] = "driver"
    """Set by :func:`register_driver`; starts every error message."""

    def __init__(self, profile: HardwareProfile | str | Path) -> None:
        self._profile = resolve_profile(profile)

    @property
    def profile(self) -> HardwareProfile:
        """The hardware profile this driver was built with."""
        return self._profile

    @property
    def action_spec(self) -> ActionSpec:
        """Names and limits of the actions :meth:`write` takes (the profile's action space)."""
        return self._profile.action_spec

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and :meth:`disconnect` or a lost link."""

    @abc.abstractmethod
    def observation_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{key: (shape, dtype)}`` of the observations :meth:`read` returns (known before connecting)."""

    @abc.abstractmethod
    def connect(self) -> None:
        """Open the link (build the sim); afterwards :meth:`read` returns observations. Idempotent."""

    @abc.abstractmethod
    def read(self) -> Reading:
        """The newest observation. Raises :class:`ReadTimeout`, :class:`Disconnected` or
        :class:`FaultDetected`. Never waits for the control period."""

    @abc.abstractmethod
    def write(self, action: np.ndarray) -> None:
        """Send one tick's action ``(Da,)`` in :attr:`action_spec` units. Raises
        :class:`InvalidCommand` for a wrong shape or a non-finite value, :class:`Disconnected`."""

    @abc.abstractmethod
    def hold(self) -> None:
        """Stop moving and keep the current position; the gripper keeps its last command."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Close the link. Idempotent."""

    # ------------------------------------------------------------------ helpers
    def check_action(self, action: Any) -> np.ndarray:
        """``action`` as float64 ``(Da,)`` clipped to the action limits (discrete dims snapped);
        :class:`InvalidCommand` for a wrong shape or a non-finite value."""
        spec = self.action_spec
        a = np.array(action, dtype=np.float64)
        if a.shape != (spec.dim,):
            raise InvalidCommand(self.name, f"action must have shape ({spec.dim},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise InvalidCommand(self.name, f"action must be finite, got {a.tolist()}")
        return spec.clip(a)

    def _require_connected(self) -> None:
        if not self.connected:
            raise Disconnected(self.name, "not connected (call connect() first)")

    def __enter__(self) -> Driver:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if self.connected:
                self.hold()
        except DriverError:
            if exc_type is None:  # otherwise keep the error that ended the block
                raise
        finally:
            self.disconnect()


class EpisodicDriver(Driver):
    """A driver whose world restarts from a seeded initial state: a simulator or the mock arm.

    :attr:`last_info` describes the latest tick: ``success`` (the task's check), ``reward``,
    ``done`` (the episode's step limit reached) and ``t`` (ticks since the reset), so a
    controller can end an episode.
    """

    last_info: dict[str, Any]

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> None:
        """Start a new episode from the initial state of ``seed`` (default: the driver's seed)."""


__all__ = [
    "Disconnected",
    "Driver",
    "EpisodicDriver",
    "DriverError",
    "FaultDetected",
    "InvalidCommand",
    "ReadTimeout",
    "Reading",
    "panda_observation_shapes",
]
