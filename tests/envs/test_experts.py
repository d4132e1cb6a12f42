"""Scripted experts succeed on seeded episodes; noise changes their actions."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.envs import experts
from robopolicy.envs.experts import PLACE_SPOTS, ExpertNoise, make_expert
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


def test_square_expert_fits_the_nut_on_its_peg():
    """NutAssemblySquare: the nut ends around the peg, squared to it, on seeds whose handles point
    away from (0), across (1) and at (6) the robot, each needing a different grasp and turn."""
    env = RobosuiteEnv("NutAssemblySquare")
    try:
        raw = env.env
        nut, peg = raw.obj_body_id["SquareNut"], raw.peg1_body_id
        for seed in (0, 1, 6):
            assert _run(env, "NutAssemblySquare", seed), f"seed {seed}"
            pos = raw.sim.data.body_xpos[nut]
            # centred on the peg and 8 cm below its top: around it
            assert np.linalg.norm(pos[:2] - raw.sim.data.body_xpos[peg][:2]) < 0.01 and pos[2] < 0.87
            w, z = raw.sim.data.body_xquat[nut][[0, 3]]  # the nut turns about z only
            assert abs(experts._wrap(2 * np.arctan2(z, w), np.pi / 2)) < 0.1
    finally:
        env.close()


def test_square_yaws_turn_the_nut_square_within_the_wrist_range():
    lo, hi = experts.SQUARE_YAW_RANGE
    for psi in np.linspace(-np.pi, np.pi, 73):
        grasp, place = experts._square_yaws(psi, finger_yaw=-np.pi / 2)
        assert abs(experts._wrap(grasp - np.pi / 2 - psi - np.pi / 2, np.pi)) < 1e-9  # fingers across the handle
        handle = psi + place - grasp
        assert abs(experts._wrap(handle, np.pi / 2)) < 1e-9  # nut square to the peg
        assert lo <= grasp <= hi and lo <= place <= hi
        assert abs(experts._wrap(handle, 2 * np.pi)) > 1.0  # the handle never points away from the robot


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


def test_place4_puts_the_cube_down_on_the_spot_it_drew(lift_env):
    """Lift/place4: each demo ends with the cube resting 12 cm from its start, on one of the four
    spots; the episode's expert rng picks the spot, so seeds cover several outcomes."""
    spots = []
    for seed in range(6):
        ex = make_expert("Lift", lift_env, np.random.default_rng(seed), noise=0.05, variant="place4")
        obs = lift_env.reset(seed)
        start = np.asarray(obs["object"][:3], dtype=np.float64)
        ex.reset(obs)
        placed = False
        for _ in range(lift_env.max_steps):
            obs, _, done, info = lift_env.step(ex.act(obs))
            if ex.succeeded(info):
                placed = True
                break
            if done:
                break
        assert placed, f"seed {seed}: the cube was not placed (phase {ex.phase})"
        offset = np.asarray(obs["object"][:2]) - start[:2]
        k = int(np.argmin(np.linalg.norm(PLACE_SPOTS - offset, axis=1)))
        assert np.linalg.norm(PLACE_SPOTS[k] - offset) < 0.03 and abs(obs["object"][2] - start[2]) < 0.02
        assert ex.phase in ("retreat", "done")  # released
        spots.append(k)
    assert len(set(spots)) >= 3


def test_make_expert_errors(lift_env, monkeypatch):
    monkeypatch.delitem(experts.EXPERTS, "Stack")
    with pytest.raises(ValueError, match="no scripted expert for task 'Stack'"):
        make_expert("Stack", lift_env)
    with pytest.raises(ValueError, match="does not match"):
        make_expert("PickPlaceCan", lift_env)
    with pytest.raises(ValueError, match="noise action"):
        ExpertNoise(action=-1.0)
    with pytest.raises(ValueError, match="no expert variant 'place9' for task 'Lift'; its variants: \\['place4'\\]"):
        make_expert("Lift", lift_env, variant="place9")
