"""Benchmark suites (``sim/*.yaml``): which task, robot, controller, cameras, horizon and seeds.

Test seeds start at 100000 (as diffusion_policy's test inits do) so they never coincide with
the demo-generation seeds 0..N; episode ``i`` of an evaluation uses ``seed_start + offset + i``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from robopolicy.config import from_dict, load_yaml, resolve_path, to_dict

ROBOTS = ("Panda",)
CONTROLLERS = ("OSC_POSE",)


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
