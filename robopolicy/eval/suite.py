"""Benchmark suites (``sim/*.yaml``): which task, robot, controller, cameras, horizon and seeds.

Test seeds start at 100000 (as diffusion_policy's test inits do) so they never coincide with
the demo-generation seeds 0..N; episode ``i`` of an evaluation uses ``seed_start + offset + i``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.config import from_dict, load_yaml, resolve_path, to_dict

ROBOTS = ("Panda",)
CONTROLLERS = ("OSC_POSE",)


@dataclasses.dataclass(frozen=True)
class GoalSource:
    """Goal-conditioned evaluation (``goals:`` in a suite): episode i starts from the initial
    state of held-out demonstration i of ``store`` (its recorded env seed) and the policy gets
    that demonstration's final frame as its goal (``obs["goal.<key>"]``). Generate the store at
    the suite's test seeds, away from the training seeds::

        robopolicy demos generate --task Lift --episodes 50 --seed 100000 --out datasets/lift_goals.zarr

    Success (``success``), and the episode ends at it:

    * ``task_or_goal`` (default): the task's own success, or (with ``tolerance``) being within
      ``tolerance`` of the goal on ``match_key[match_dims]`` (Euclidean) at any step;
    * ``goal``: reaching the goal only. The task's own success is recorded but ends nothing,
      for tasks with several outcomes (one scripted expert variant puts the Lift cube down on
      one of four spots: ``demos generate --task Lift --variant place4``)."""

    store: str
    match_key: str | None = None
    """Observation key compared with the goal for the reach check (e.g. ``object``)."""
    match_dims: tuple[int, ...] = ()
    """Dims of ``match_key`` compared (empty: all), e.g. ``[0, 1, 2]``: the object's position."""
    tolerance: float | None = None
    """Reach distance in the key's units (None: task success only)."""
    success: str = "task_or_goal"
    """``task_or_goal`` or ``goal`` (see above)."""

    def __post_init__(self) -> None:
        if not self.store:
            raise ValueError("goals.store must name an episode store of held-out demonstrations")
        if self.tolerance is not None:
            if not self.tolerance > 0:
                raise ValueError(f"goals.tolerance must be > 0, got {self.tolerance}")
            if not self.match_key:
                raise ValueError("goals.tolerance needs goals.match_key (the observation compared with the goal)")
        object.__setattr__(self, "match_dims", tuple(int(d) for d in self.match_dims))
        if self.success not in ("task_or_goal", "goal"):
            raise ValueError(f"goals.success must be 'task_or_goal' or 'goal', got {self.success!r}")
        if self.success == "goal" and self.tolerance is None:
            raise ValueError("goals.success: goal needs goals.tolerance (the reach distance)")

    def distance(self, obs: Mapping[str, Any], goal: Mapping[str, np.ndarray]) -> float:
        """Euclidean distance between ``obs`` and the goal frames on ``match_key[match_dims]``."""
        a = np.asarray(obs[self.match_key], dtype=np.float64)
        g = np.asarray(goal[self.match_key], dtype=np.float64)
        if self.match_dims:
            a, g = a[list(self.match_dims)], g[list(self.match_dims)]
        return float(np.linalg.norm(a - g))


@dataclasses.dataclass(frozen=True)
class Perturbation:
    """A scripted shove (``perturbation:`` in a suite): from env step ``at_step`` on, for
    ``steps`` steps, the arm executes ``action`` (6 OSC deltas in [-1, 1]) instead of the
    policy's actions, with the gripper at ``gripper`` (-1 open: a forced release, so the policy
    must re-grasp; None: the policy's own gripper command). Then the policy is back in control."""

    at_step: int = 30
    steps: int = 6
    action: tuple[float, ...] = (0.0, 0.8, 0.4, 0.0, 0.0, 0.0)
    gripper: float | None = -1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", tuple(float(a) for a in self.action))
        if self.at_step < 0 or self.steps < 1:
            raise ValueError(f"perturbation needs at_step >= 0 and steps >= 1, got {self.at_step}, {self.steps}")
        if len(self.action) != 6 or not all(-1.0 <= a <= 1.0 for a in self.action):
            raise ValueError(f"perturbation.action must be 6 OSC deltas in [-1, 1], got {list(self.action)}")
        if self.gripper is not None and not -1.0 <= self.gripper <= 1.0:
            raise ValueError(f"perturbation.gripper must be in [-1, 1] or null, got {self.gripper}")


@dataclasses.dataclass(frozen=True)
class Suite:
    """One simulated benchmark."""

    task: str
    """robosuite task (``robopolicy.envs.robosuite_env.TASKS``: Lift, PickPlaceCan, ...)."""
    name: str = ""
    """Display name (default: the YAML file's stem)."""
    robot: str = "Panda"
    """Robot arm (only Panda is supported)."""
    controller: str = "OSC_POSE"
    """Arm controller (only OSC_POSE delta actions are supported)."""
    cameras: tuple[str, ...] = ()
    """Cameras observed as ``image.<camera>`` (empty: low-dim only)."""
    image_size: int = 84
    """Square camera image size in pixels."""
    max_steps: int = 400
    """Episode length limit in env steps (episodes also end at success)."""
    seed_start: int = 100_000
    """Seed of episode 0 (test seeds, away from the training seeds 0..N)."""
    episodes: int = 50
    """Default number of episodes."""
    control_freq: int = 20
    """Env steps per second (also the video frame rate)."""
    description: str = ""
    """Free text."""
    goals: GoalSource | None = None
    """Goal-conditioned evaluation from held-out demonstrations (see :class:`GoalSource`)."""
    perturbation: Perturbation | None = None
    """A scripted shove mid-episode (see :class:`Perturbation`)."""

    def __post_init__(self) -> None:
        from robopolicy.envs.robosuite_env import validate_cameras

        object.__setattr__(self, "cameras", validate_cameras(self.task, self.cameras))  # checks the task too
        if self.robot not in ROBOTS:
            raise ValueError(f"suite robot must be one of {ROBOTS}, got {self.robot!r}")
        if self.controller not in CONTROLLERS:
            raise ValueError(f"suite controller must be one of {CONTROLLERS}, got {self.controller!r}")
        for name in ("image_size", "max_steps", "episodes", "control_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"suite {name} must be >= 1, got {getattr(self, name)}")
        if self.seed_start < 0:
            raise ValueError(f"suite seed_start must be >= 0, got {self.seed_start}")

    def env_kwargs(self) -> dict[str, Any]:
        """Arguments of :class:`robopolicy.envs.robosuite_env.RobosuiteEnv`."""
        return {
            "task": self.task,
            "cameras": self.cameras,
            "image_size": self.image_size,
            "max_steps": self.max_steps,
            "control_freq": self.control_freq,
        }

    def to_dict(self) -> dict[str, Any]:
        return {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}


def load_suite(path: str | Path) -> Suite:
    """Read a suite YAML (relative paths also tried under the repository root)."""
    p = resolve_path(path)
    data = load_yaml(p)
    data.setdefault("name", p.stem)
    try:
        return from_dict(Suite, data)
    except ValueError as e:
        raise ValueError(f"suite {p}: {e}") from None
