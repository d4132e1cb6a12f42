"""LiftCue, the memory task: the cue is observable for the first CUE_STEPS steps only, after
that nothing in the observation (images included) tells the cues apart, and success depends on
the cue; the scripted expert solves both sides; suites, demo generation and the eval workers
accept the task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from robopolicy.envs.experts import make_expert
from robopolicy.envs.lift_cue import CUE_SLICE, CUE_STEPS, OBJECT_DIM, ZONE_RADIUS, ZONES, cue_side
from robopolicy.envs.robosuite_env import RobosuiteEnv

ROOT = Path(__file__).resolve().parents[2]
SEED_LEFT, SEED_RIGHT = 1, 0  # seeds whose drawn cue is left / right


@pytest.fixture(scope="module")
def cue_env():
    env = RobosuiteEnv("LiftCue", cameras=("agentview",), image_size=84)
    yield env
    env.env.forced_cue = None
    env.close()


def _rollout(env: RobosuiteEnv, seed: int, actions: np.ndarray, cue: int | None = None) -> list[dict]:
    env.env.forced_cue = cue
    try:
        obs = [env.reset(seed)]
        obs += [env.step(a)[0] for a in actions]
    finally:
        env.env.forced_cue = None
    return obs


def test_cue_is_observed_for_the_first_steps_only_and_shapes_stay_fixed(cue_env):
    shapes = cue_env.observation_shapes()
    assert shapes["object"][0] == (OBJECT_DIM,) and shapes["state"][0] == (9 + OBJECT_DIM,)
    for seed, side in ((SEED_LEFT, 0), (SEED_RIGHT, 1)):
        obs = _rollout(cue_env, seed, np.zeros((CUE_STEPS + 3, 7)))
        assert [cue_side(o) for o in obs] == [side] * CUE_STEPS + [None] * 4
        for o in obs:
            assert o["object"].shape == (OBJECT_DIM,) and o["state"].shape == (9 + OBJECT_DIM,)
            np.testing.assert_array_equal(o["state"][9:], o["object"])
    drawn = []
    for seed in range(20):
        cue_env.reset(seed)
        drawn.append(cue_env.env.cue_side)
    assert 0 < sum(drawn) < 20  # both cues occur


def test_after_the_cue_hides_the_observation_holds_no_cue_information(cue_env):
    """The memory check: one initial state, the two cues, the same actions. While the cue shows,
    the observations differ (low-dim cue slot and the agentview image); from step CUE_STEPS on
    every observation key, the camera image included, is bit-identical for both cues."""
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, (CUE_STEPS + 8, 7))
    left = _rollout(cue_env, 3, actions, cue=0)
    right = _rollout(cue_env, 3, actions, cue=1)
    for t, (a, b) in enumerate(zip(left, right)):
        assert set(a) == set(b)
        if t < CUE_STEPS:
            assert not np.array_equal(a["object"], b["object"])
            assert not np.array_equal(a["image.agentview"], b["image.agentview"])
            mask = np.ones(OBJECT_DIM, bool)
            mask[CUE_SLICE] = False  # everything but the cue slot is the same
            np.testing.assert_array_equal(a["object"][mask], b["object"][mask])
        else:
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k} at t={t}")


def _place_cube(env: RobosuiteEnv, xy: np.ndarray, z: float = 0.821) -> None:
    raw = env.env
    raw.sim.data.set_joint_qpos(raw.cube.joints[0], np.array([xy[0], xy[1], z, 1.0, 0.0, 0.0, 0.0]))
    raw.sim.forward()


def test_success_is_the_cube_resting_in_the_cued_zone(cue_env):
    for cue in (0, 1):
        _rollout(cue_env, 5, np.zeros((0, 7)), cue=cue)
        cue_env.env.cue_side = cue  # forced_cue applies at reset; keep it for the checks
        _place_cube(cue_env, ZONES[cue])
        assert cue_env.is_success() and cue_env.outcome() == {"placed": "cued"}
        _place_cube(cue_env, ZONES[1 - cue])
        assert not cue_env.is_success()  # the other zone
        assert cue_env.outcome() == {"placed": "other"}  # what a policy that forgot the cue does
        _place_cube(cue_env, ZONES[cue] + [ZONE_RADIUS + 0.01, 0.0])
        assert not cue_env.is_success()  # beside the zone
        _place_cube(cue_env, ZONES[cue], z=0.9)
        assert not cue_env.is_success()  # above it, not resting
        assert cue_env.outcome() == {"placed": "none"}
        _place_cube(cue_env, np.zeros(2))
        assert not cue_env.is_success()  # where it starts


@pytest.mark.parametrize("seed,side", [(SEED_LEFT, 0), (SEED_RIGHT, 1)])
def test_expert_puts_the_cube_in_the_cued_zone(cue_env, seed, side):
    expert = make_expert("LiftCue", cue_env, np.random.default_rng(seed), noise=0.05)
    obs = cue_env.reset(seed)
    expert.reset(obs)
    for _ in range(cue_env.max_steps):
        obs, _, done, info = cue_env.step(expert.act(obs))
        if info["success"] or done:
            break
    assert info["success"] and cue_env.t > CUE_STEPS
    cube = obs["object"][:3]
    assert np.linalg.norm(cube[:2] - ZONES[side]) < ZONE_RADIUS
    assert cue_side(obs) is None


def test_expert_acts_the_same_for_both_cues_until_the_carry(cue_env):
    """Demos hold no cue in the robot's state while the cue shows and long after: from one
    initial state the expert's actions for the two cues are identical until it carries the cube
    (step ~37), so a policy cannot learn to park the cue in the arm's pose."""
    actions = {}
    for cue in (0, 1):
        cue_env.env.forced_cue = cue
        try:
            expert = make_expert("LiftCue", cue_env, np.random.default_rng(1), noise=0.05)
            obs = cue_env.reset(1)
            expert.reset(obs)
            acts, phases = [], []
            for _ in range(45):
                acts.append(expert.act(obs))
                phases.append(expert.phase)
                obs = cue_env.step(acts[-1])[0]
        finally:
            cue_env.env.forced_cue = None
        actions[cue] = np.stack(acts)
    differ = np.flatnonzero(np.any(actions[0] != actions[1], axis=1))
    assert len(differ) and differ[0] >= 3 * CUE_STEPS and phases[differ[0]] == "carry"


def test_suites_load():
    from robopolicy.eval.suite import load_suite

    low, img = load_suite(ROOT / "sim/lift_cue_lowdim.yaml"), load_suite(ROOT / "sim/lift_cue_image.yaml")
    assert low.task == img.task == "LiftCue" and low.cameras == () and "agentview" in img.cameras
    assert low.max_steps >= 200


def test_generated_demos_and_eval_workers(tmp_path):
    """``demos generate`` stores LiftCue demos with the 12-D object (cue in the first frames
    only); a spawn eval worker (a fresh process) builds the task and replays a demo to success."""
    from robopolicy.cli import main
    from robopolicy.data.store import EpisodeStore
    from robopolicy.eval.vec_env import SubprocVecEnv

    out = tmp_path / "cue.zarr"
    assert main(["demos", "generate", "--task", "LiftCue", "--episodes", "1", "--out", str(out), "--seed", "1"]) == 0
    store = EpisodeStore.open(out)
    ep = store.episode(0, ["object", "action"])
    assert ep["object"].shape[1] == OBJECT_DIM
    assert [cue_side({"object": o}) for o in ep["object"][: CUE_STEPS + 1]] == [0] * CUE_STEPS + [None]
    assert not ep["object"][CUE_STEPS:, CUE_SLICE].any()
    with SubprocVecEnv(1, {"task": "LiftCue", "max_steps": 250}) as vec:
        assert vec.observation_shapes["object"][0] == (OBJECT_DIM,)
        (first,) = vec.call([(0, "reset", (1, None))])
        np.testing.assert_allclose(first["object"], ep["object"][0], atol=1e-6)
        (rep,) = vec.call([(0, "run", ep["action"])])
    assert rep["success"] and rep["outcome"] == {"placed": "cued"}  # an eval report counts outcomes
