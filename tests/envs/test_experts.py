"""Scripted experts succeed on seeded episodes; noise changes their actions."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.envs.experts import ExpertNoise, make_expert
from robopolicy.envs.robosuite_env import RobosuiteEnv


def _run(env: RobosuiteEnv, task: str, seed: int, noise: float = 0.05) -> bool:
    expert = make_expert(task, env, np.random.default_rng(seed), noise=noise)
    obs = env.reset(seed)
    expert.reset(obs)
    for _ in range(env.max_steps):
        obs, _, done, info = env.step(expert.act(obs))
        if info["success"]:
            return True
        if done:
            break
    return False


def test_lift_expert_succeeds(lift_env):
    assert [_run(lift_env, "Lift", s) for s in range(5)] == [True] * 5


@pytest.mark.parametrize("task", ["PickPlaceCan", "Stack"])
def test_other_experts_succeed(task):
    env = RobosuiteEnv(task)
    try:
        assert [_run(env, task, s) for s in range(2)] == [True, True]
    finally:
        env.close()


def test_noise_changes_actions(lift_env):
    def actions(rng_seed: int, noise: ExpertNoise) -> np.ndarray:
        ex = make_expert("Lift", lift_env, rng_seed, noise=noise)
        obs = lift_env.reset(0)
        ex.reset(obs)
        return np.stack([ex.act(obs) for _ in range(3)])

    quiet = actions(0, ExpertNoise())
    np.testing.assert_array_equal(quiet, actions(1, ExpertNoise()))
    noisy = actions(0, ExpertNoise(action=0.1, target=0.01))
    assert not np.allclose(noisy, quiet)
    np.testing.assert_array_equal(noisy, actions(0, ExpertNoise(action=0.1, target=0.01)))
    assert np.all(np.abs(noisy) <= 1.0)


def test_make_expert_errors(lift_env):
    with pytest.raises(ValueError, match="no scripted expert.*NutAssemblySquare"):
        make_expert("NutAssemblySquare", lift_env)
    with pytest.raises(ValueError, match="does not match"):
        make_expert("PickPlaceCan", lift_env)
    with pytest.raises(ValueError, match="noise action"):
        ExpertNoise(action=-1.0)
