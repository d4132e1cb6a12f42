"""robosuite adapter: one Panda + OSC_POSE (delta) env whose observations use store keys.

Observation keys (the Zarr field names of the episode store)::

    eef_pos        (3,)  float32   end-effector position, world frame [m]
    eef_quat       (4,)  float32   end-effector orientation, xyzw
    gripper_qpos   (2,)  float32   finger joint positions
    joint_pos      (7,)  float32
    joint_vel      (7,)  float32
    object         (Do,) float32   robosuite's ``object-state`` (Do depends on the task)
    state          (9+Do,) float32 concat(eef_pos, eef_quat, gripper_qpos, object): the
                                   standard low-dim policy observation
    image.<camera> (H, W, 3) uint8 upright RGB, only for the requested cameras

Actions are ``osc_pose_action_spec()``: ``[dx, dy, dz, drx, dry, drz, gripper]`` in [-1, 1]
(scaled by robosuite to +-0.05 m / +-0.5 rad per step), gripper snapped to -1 open / +1 close.

Seeding: robosuite's placement samplers and robot init noise draw from the global
``np.random``; :meth:`RobosuiteEnv.reset` seeds it before every reset, so ``reset(seed)``
gives the same initial state in any process, whatever ran before (``hard_reset=False``).
Object sizes are sampled once, when the model is built; the constructor seeds that too
(``model_seed``), so envs built in different processes are identical.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robopolicy.envs.render import (
    apply_fast_render_patch,
    image_convention,
    make_current,
    render_camera,
    upright_observation,
)
from robopolicy.types import IMAGE_PREFIX, ActionSpec, osc_pose_action_spec

_COMMON_CAMERAS = ("agentview", "frontview", "birdview", "robot0_robotview", "robot0_eye_in_hand")


@dataclass(frozen=True)
class TaskInfo:
    """A supported task: its robosuite env name, default horizon, cameras and object-state size."""

    env_name: str
    max_steps: int
    object_dim: int
    cameras: tuple[str, ...]
    description: str = ""
    module: str = ""
    """Module that registers ``env_name`` with robosuite (imported before the env is built), for
    tasks defined in this package; empty for robosuite's own tasks."""


TASKS: dict[str, TaskInfo] = {
    "Lift": TaskInfo("Lift", 200, 10, _COMMON_CAMERAS + ("sideview",), "lift the red cube"),
    "PickPlaceCan": TaskInfo("PickPlaceCan", 400, 14, _COMMON_CAMERAS, "place the can into its bin"),
    "NutAssemblySquare": TaskInfo(
        "NutAssemblySquare", 400, 14, _COMMON_CAMERAS + ("sideview",), "fit the square nut onto its peg"
    ),
    "Stack": TaskInfo("Stack", 400, 23, _COMMON_CAMERAS + ("sideview",), "stack the red cube on the green cube"),
    "LiftCue": TaskInfo(
        "LiftCue",
        250,
        12,
        _COMMON_CAMERAS + ("sideview",),
        "memory: put the cube down in the zone that was green for the first 10 steps",
        module="robopolicy.envs.lift_cue_env",
    ),
}

LOW_DIM_KEYS = ("eef_pos", "eef_quat", "gripper_qpos", "joint_pos", "joint_vel", "object", "state")
_RENAME = {
    "robot0_eef_pos": "eef_pos",
    "robot0_eef_quat": "eef_quat",
    "robot0_gripper_qpos": "gripper_qpos",
    "robot0_joint_pos": "joint_pos",
    "robot0_joint_vel": "joint_vel",
    "object-state": "object",
}


def task_info(task: str) -> TaskInfo:
    """The :class:`TaskInfo` of ``task``; ValueError naming it and the valid tasks otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[task]


def validate_cameras(task: str, cameras: Sequence[str]) -> tuple[str, ...]:
    """Check camera names for ``task`` (no duplicates); returns them as a tuple."""
    info = task_info(task)
    if isinstance(cameras, str):
        raise ValueError(f"cameras must be a sequence of names, got the string {cameras!r}")
    cameras = tuple(cameras)
    for cam in cameras:
        if cam not in info.cameras:
            raise ValueError(f"unknown camera {cam!r} for task {task}; valid cameras: {', '.join(info.cameras)}")
    if len(set(cameras)) != len(cameras):
        raise ValueError(f"duplicate cameras in {list(cameras)}")
    return cameras


def validate_video_camera(task: str, camera: str) -> str:
    """Check the camera name of evaluation videos for ``task``; returns it."""
    info = task_info(task)
    if not isinstance(camera, str) or camera not in info.cameras:
        raise ValueError(f"unknown video camera {camera!r} for task {task}; valid cameras: {', '.join(info.cameras)}")
    return camera


class RobosuiteEnv:
    """A robosuite manipulation task (Panda, OSC_POSE delta) with store-keyed observations.

    Args:
        task: one of :data:`TASKS`.
        cameras: camera names to observe as ``image.<camera>`` (none: low-dim only).
        image_size: square camera image size in pixels.
        max_steps: episode length after which ``done`` is True (default: the task's).
        control_freq: policy steps per second.
        has_renderer: open robosuite's on-screen viewer (teleoperation only; needs a display).
        model_seed: seeds the model build (object sizes), so envs in all processes are identical.
    """

    def __init__(
        self,
        task: str,
        cameras: Sequence[str] = (),
        image_size: int = 84,
        max_steps: int | None = None,
        control_freq: int = 20,
        has_renderer: bool = False,
        model_seed: int = 0,
    ) -> None:
        self.task = task
        self.info = task_info(task)
        self.cameras = validate_cameras(task, cameras)
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.max_steps = int(max_steps if max_steps is not None else self.info.max_steps)
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.control_freq = int(control_freq)
        self.action_spec: ActionSpec = osc_pose_action_spec()

        apply_fast_render_patch()
        import robosuite
        from robosuite.controllers import load_composite_controller_config

        if self.info.module:  # registers the task's env class with robosuite
            importlib.import_module(self.info.module)
        controller = load_composite_controller_config(controller=None, robot="Panda")  # BASIC + OSC_POSE delta
        # Model building samples object sizes from the global np.random (e.g. Lift's cube); seed
        # it so every process builds the same model (with hard_reset=False it is never rebuilt).
        np.random.seed(int(model_seed))
        self._image_convention = image_convention()  # robosuite reads it while building the camera sensors
        self.env = robosuite.make(
            self.info.env_name,
            robots="Panda",
            controller_configs=controller,
            has_renderer=has_renderer,
            has_offscreen_renderer=bool(self.cameras),
            use_camera_obs=bool(self.cameras),
            camera_names=list(self.cameras) or "agentview",
            camera_heights=self.image_size,
            camera_widths=self.image_size,
            hard_reset=False,
            ignore_done=True,
            control_freq=self.control_freq,
        )
        ctx = getattr(self.env.sim, "_render_context_offscreen", None)
        if ctx is not None:  # shrink the offscreen buffer to the image size (faster on llvmpipe)
            ctx.update_offscreen_size(self.image_size, self.image_size)
        self._has_renderer = has_renderer
        self._t = 0
        self._last_obs: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ observations
    def observation_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{key: (shape, dtype)}`` of every observation key this env returns."""
        f32 = np.dtype(np.float32)
        shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            "eef_pos": ((3,), f32),
            "eef_quat": ((4,), f32),
            "gripper_qpos": ((2,), f32),
            "joint_pos": ((7,), f32),
            "joint_vel": ((7,), f32),
            "object": ((self.info.object_dim,), f32),
            "state": ((9 + self.info.object_dim,), f32),
        }
        for cam in self.cameras:
            shapes[IMAGE_PREFIX + cam] = ((self.image_size, self.image_size, 3), np.dtype(np.uint8))
        return shapes

    def _convert(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        obs = {new: np.asarray(raw[old], dtype=np.float32) for old, new in _RENAME.items()}
        obs["state"] = np.concatenate([obs["eef_pos"], obs["eef_quat"], obs["gripper_qpos"], obs["object"]])
        for cam in self.cameras:
            obs[IMAGE_PREFIX + cam] = upright_observation(raw[f"{cam}_image"], self._image_convention)
        self._last_obs = obs
        return obs

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Start an episode whose initial state is a function of ``seed`` only."""
        np.random.seed(int(seed))
        self._t = 0
        if self.cameras:  # robosuite renders the camera observations into the current GL context
            make_current(self.env)
        return self._convert(self.env.reset())

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, dict]:
        """Apply one action (7,) -> ``(obs, reward, done, info)``; ``info["success"]`` is the task check.

        ``done`` is True once ``max_steps`` steps were taken (success does not end an episode).
        """
        a = self.validate_action(action)
        if self.cameras:
            make_current(self.env)
        raw, reward, _, _ = self.env.step(a)
        self._t += 1
        success = self.is_success()
        done = self._t >= self.max_steps
        return self._convert(raw), float(reward), done, {"success": success, "t": self._t}

    def validate_action(self, action: np.ndarray) -> np.ndarray:
        """Check shape (7,) and finiteness; clip to [-1, 1] and snap the gripper to -1/+1."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action_spec.dim,):
            raise ValueError(f"action must have shape ({self.action_spec.dim},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action must be finite, got {a.tolist()}")
        return self.action_spec.clip(a.copy())

    def is_success(self) -> bool:
        """The task's own success check on the current sim state."""
        return bool(self.env._check_success())

    def outcome(self) -> dict[str, str] | None:
        """The task's categorical outcome of the current state (e.g. LiftCue's ``placed``:
        cued / other / none), for tasks that define ``outcome()``; None for the others."""
        fn = getattr(self.env, "outcome", None)
        return dict(fn()) if callable(fn) else None

    @property
    def last_obs(self) -> dict[str, np.ndarray] | None:
        """The observation returned by the latest ``reset``/``step`` (None before the first)."""
        return self._last_obs

    @property
    def t(self) -> int:
        """Steps taken in the current episode."""
        return self._t

    # ------------------------------------------------------------------ rendering
    def render_frame(self, camera: str = "agentview", size: int = 256) -> np.ndarray:
        """An upright ``(size, size, 3)`` uint8 frame from ``camera`` (for videos).

        Rendered exactly as robosuite renders its camera observations (same render context
        settings: visual meshes shown, collision meshes hidden; same camera), so it equals the
        ``image.<camera>`` observation of the same state at the same size. Low-dim envs have no
        render context; the first call creates one the way robosuite does
        (:func:`robopolicy.envs.render.offscreen_context`).
        """
        if camera not in self.info.cameras:
            raise ValueError(f"unknown camera {camera!r} for task {self.task}; valid: {', '.join(self.info.cameras)}")
        if int(size) <= 0:
            raise ValueError(f"frame size must be positive, got {size}")
        return render_camera(self.env, camera, int(size), int(size))

    def render_viewer(self) -> None:
        """Refresh robosuite's on-screen viewer (only with ``has_renderer=True``)."""
        if self._has_renderer:
            self.env.render()

    def close(self) -> None:
        """Release the sim and render contexts."""
        env, self.env = getattr(self, "env", None), None
        if env is not None:
            # robosuite frees the render context's GL objects in the current GL context: make it ours
            make_current(env)
            env.close()

    def __enter__(self) -> RobosuiteEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "TASKS",
    "LOW_DIM_KEYS",
    "TaskInfo",
    "RobosuiteEnv",
    "task_info",
    "validate_cameras",
    "validate_video_camera",
]
