"""robosuite adapter, scripted experts, demo generation and teleop recording.

robosuite itself is imported only when an env is built, so importing this package is cheap.
"""

from robopolicy.envs.experts import ExpertNoise, make_expert
from robopolicy.envs.generate import GenerateReport, generate_demos
from robopolicy.envs.robosuite_env import TASKS, RobosuiteEnv, task_info, validate_cameras

__all__ = [
    "TASKS",
    "RobosuiteEnv",
    "task_info",
    "validate_cameras",
    "ExpertNoise",
    "make_expert",
    "GenerateReport",
    "generate_demos",
]
