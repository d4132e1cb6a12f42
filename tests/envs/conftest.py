"""Shared fixtures for the robosuite env tests (envs are slow to build: share them per module)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def lift_env():
    from robopolicy.envs.robosuite_env import RobosuiteEnv

    env = RobosuiteEnv("Lift")
    yield env
    env.close()
