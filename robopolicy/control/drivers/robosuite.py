"""The simulated Panda: :class:`~robopolicy.envs.robosuite_env.RobosuiteEnv` as a driver.

One :meth:`RobosuiteDriver.write` is one control tick: one ``env.step`` of an OSC_POSE delta
action. With ``realtime=True`` a write waits until one control period has passed since the
previous step started, so the sim never runs ahead of the wall clock (a write that comes late
steps at once, and the next one is due a period later: no catch-up burst). With
``realtime=False`` it steps as fast as it is called. The sim advances only on writes and holds:
a tick the controller skips is a tick the simulated world waits, unlike a real arm.

:meth:`RobosuiteDriver.read` never waits: it returns the observation of the latest step (or
reset), stamped with the monotonic time that step finished; its ``seq`` grows by one per step
or reset. :attr:`RobosuiteDriver.last_info` has the task's ``success``, ``reward``, ``done``
(``max_steps`` reached) and ``t`` of that step, so a controller can end the episode.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.control.drivers.base import EpisodicDriver, FaultDetected, Reading, panda_observation_shapes
from robopolicy.control.drivers.registry import register_driver
from robopolicy.control.profile import HardwareProfile
from robopolicy.envs.robosuite_env import task_info, validate_cameras


@register_driver("robosuite")
class RobosuiteDriver(EpisodicDriver):
    """robosuite's Panda on task ``task`` as a driver (module docstring).

    Args:
        task: a task of ``robopolicy.envs.robosuite_env.TASKS``.
        profile: a 7-joint ``osc_pose`` profile (default: ``robosuite_panda``).
        realtime: pace writes to the wall clock at ``control_hz``; False: as fast as possible.
        control_hz: control rate (a whole number of Hz, as robosuite steps at an int rate);
            default: the profile's.
        seed: the episode seed of :meth:`connect` (and of :meth:`reset` without one).
        cameras, image_size: camera observations, as ``RobosuiteEnv``.
        max_steps: episode length after which ``last_info["done"]`` is True (default: the task's).
        model_seed: seeds the model build, as ``RobosuiteEnv``.
        clock, sleep: the monotonic clock and sleep used for pacing and timestamps.
    """

    def __init__(
        self,
        task: str = "Lift",
        profile: HardwareProfile | str | Path = "robosuite_panda",
        *,
        realtime: bool = True,
        control_hz: float | None = None,
        seed: int = 0,
        cameras: Sequence[str] = (),
        image_size: int = 84,
        max_steps: int | None = None,
        model_seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(profile)
        p = self.profile
        if p.action_space != "osc_pose" or len(p.joints.names) != 7:
            raise ValueError(
                f"{self.name}: drives robosuite's Panda (7 joints, osc_pose actions); profile {p.name!r} has "
                f"{len(p.joints.names)} joints and action space {p.action_space!r}"
            )
        self.task = task
        self._info = task_info(task)
        self.cameras = validate_cameras(task, cameras)
        hz = float(p.control_hz if control_hz is None else control_hz)
        if not (hz > 0 and math.isfinite(hz) and hz == int(hz)):
            raise ValueError(f"{self.name}: control_hz must be a positive whole number, got {control_hz}")
        self.control_hz = int(hz)
        self.period_s = 1.0 / self.control_hz
        self.realtime = bool(realtime)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.max_steps = max_steps
        self.model_seed = int(model_seed)
        self._clock, self._sleep = clock, sleep
        self._env: Any = None
        self._seq = 0
        self._reading: Reading | None = None
        self._next_step_t: float | None = None
        self._gripper = float(p.home.gripper)
        self.last_info: dict[str, Any] = {}
        """``success``, ``reward``, ``done``, ``t`` of the latest step (after a reset: not yet)."""

    @property
    def env(self) -> Any:
        """The underlying ``RobosuiteEnv`` (None when not connected)."""
        return self._env

    @property
    def connected(self) -> bool:
        return self._env is not None

    def observation_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return panda_observation_shapes(self._info.object_dim, self.cameras, self.image_size)

    def connect(self) -> None:
        """Build the sim (a few seconds) and reset it with ``seed``."""
        if self._env is not None:
            return
        from robopolicy.envs.robosuite_env import RobosuiteEnv

        self._env = RobosuiteEnv(
            self.task,
            cameras=self.cameras,
            image_size=self.image_size,
            max_steps=self.max_steps,
            control_freq=self.control_hz,
            model_seed=self.model_seed,
        )
        self.reset(self.seed)

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (``seed``: default the constructor's); :meth:`read` returns its first frame."""
        self._require_connected()
        obs = self._env.reset(self.seed if seed is None else int(seed))
        self._gripper = float(self.profile.home.gripper)
        self._next_step_t = None
        self.last_info = {"success": self._env.is_success(), "reward": 0.0, "done": False, "t": 0}
        self._new_reading(obs)

    def read(self) -> Reading:
        self._require_connected()
        return self._reading  # type: ignore[return-value]  # set by connect()'s reset

    def write(self, action: np.ndarray) -> None:
        self._require_connected()
        a = self.check_action(action)
        self._step(a)

    def hold(self) -> None:
        """One tick of zero motion (a zero OSC delta), the gripper at its last command."""
        self._require_connected()
        a = np.zeros(self.action_spec.dim)
        a[self.action_spec.names.index(self.profile.gripper.dim)] = self._gripper
        self._step(a)

    def disconnect(self) -> None:
        env, self._env = self._env, None
        self._reading = None
        if env is not None:
            env.close()

    # ------------------------------------------------------------------ internals
    def _step(self, a: np.ndarray) -> None:
        self._pace()
        try:
            obs, reward, done, info = self._env.step(a)
        except Exception as e:  # a MuJoCo instability or a robosuite error: the arm's fault, not the caller's
            raise FaultDetected(self.name, f"simulation step failed: {type(e).__name__}: {e}") from e
        self._gripper = float(a[self.action_spec.names.index(self.profile.gripper.dim)])
        self.last_info = {"success": bool(info["success"]), "reward": reward, "done": bool(done), "t": info["t"]}
        self._new_reading(obs)

    def _pace(self) -> None:
        """Realtime: start this step no earlier than one period after the previous one started."""
        if not self.realtime:
            return
        now = self._clock()
        start = now if self._next_step_t is None else max(now, self._next_step_t)
        if start > now:
            self._sleep(start - now)
        self._next_step_t = start + self.period_s

    def _new_reading(self, obs: dict[str, np.ndarray]) -> None:
        self._seq += 1
        self._reading = Reading(t=self._clock(), seq=self._seq, obs=obs)


__all__ = ["RobosuiteDriver"]
