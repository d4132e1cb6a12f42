"""RobosuiteEnv: observation keys/shapes, seeding, action validation, cameras, success."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from robopolicy.envs.robosuite_env import TASKS, RobosuiteEnv, validate_cameras
from robopolicy.types import osc_pose_action_spec


def _check_obs(env: RobosuiteEnv, obs: dict) -> None:
    shapes = env.observation_shapes()
    assert set(obs) == set(shapes)
    for key, (shape, dtype) in shapes.items():
        assert obs[key].shape == shape, key
        assert obs[key].dtype == dtype, key


def test_obs_keys_shapes_dtypes(lift_env):
    obs = lift_env.reset(0)
    _check_obs(lift_env, obs)
    assert obs["state"].shape == (19,)
    expected = np.concatenate([obs["eef_pos"], obs["eef_quat"], obs["gripper_qpos"], obs["object"]])
    np.testing.assert_array_equal(obs["state"], expected)
    obs, reward, done, info = lift_env.step(np.zeros(7))
    _check_obs(lift_env, obs)
    assert isinstance(reward, float) and done is False
    assert info["success"] is False and lift_env.is_success() is False
    assert lift_env.action_spec == osc_pose_action_spec()


@pytest.mark.parametrize("task", ["PickPlaceCan", "NutAssemblySquare", "Stack"])
def test_other_tasks_obs_shapes(task):
    env = RobosuiteEnv(task)
    try:
        _check_obs(env, env.reset(0))
        assert env.max_steps == TASKS[task].max_steps
    finally:
        env.close()


def test_reset_reproducible_by_seed(lift_env):
    a = lift_env.reset(7)
    rng = np.random.default_rng(0)
    for _ in range(5):
        lift_env.step(rng.uniform(-1, 1, 7))
    lift_env.reset(8)
    b = lift_env.reset(7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    c = lift_env.reset(8)
    assert not np.allclose(a["object"], c["object"])


def test_reset_reproducible_across_processes(lift_env):
    code = (
        "from robopolicy.envs.robosuite_env import RobosuiteEnv\n"
        "import numpy as np, sys\n"
        "np.save(sys.stdout.buffer, RobosuiteEnv('Lift').reset(11)['state'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout
    import io

    other = np.load(io.BytesIO(out))
    np.testing.assert_array_equal(other, lift_env.reset(11)["state"])


def test_action_validation(lift_env):
    lift_env.reset(0)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        lift_env.step(np.zeros(6))
    with pytest.raises(ValueError, match="finite"):
        lift_env.step(np.array([0, 0, np.nan, 0, 0, 0, 1.0]))
    a = lift_env.validate_action(np.array([2.0, -3.0, 0.1, 0, 0, 0, 0.2]))
    np.testing.assert_allclose(a, [1.0, -1.0, 0.1, 0, 0, 0, 1.0])
    assert lift_env.validate_action(np.array([0, 0, 0, 0, 0, 0, -0.3]))[6] == -1.0


def test_done_at_max_steps():
    env = RobosuiteEnv("Lift", max_steps=3)
    try:
        env.reset(0)
        dones = [env.step(np.zeros(7))[2] for _ in range(3)]
        assert dones == [False, False, True]
        assert env.reset(0) and env.t == 0
    finally:
        env.close()


def test_unknown_task_and_camera():
    with pytest.raises(ValueError, match=r"unknown task 'Nope'.*Lift"):
        RobosuiteEnv("Nope")
    with pytest.raises(ValueError, match=r"unknown camera 'eye'.*agentview"):
        validate_cameras("Lift", ["eye"])
    with pytest.raises(ValueError, match="sequence"):
        validate_cameras("Lift", "agentview")


def test_camera_obs_upright():
    env = RobosuiteEnv("Lift", cameras=["agentview", "robot0_eye_in_hand"], image_size=32)
    try:
        obs = env.reset(0)
        _check_obs(env, obs)
        img = obs["image.agentview"]
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        # agentview looks across the white table: bright at the bottom, robot/floor on top
        assert img[-8:].mean() > img[:8].mean() + 20
        frame = env.render_frame("agentview", size=64)
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        assert frame[-16:].mean() > frame[:16].mean() + 20
        obs, *_ = env.step(np.zeros(7))
        assert obs["image.agentview"].shape == (32, 32, 3)
        with pytest.raises(ValueError, match="unknown camera"):
            env.render_frame("nope")
    finally:
        env.close()


def test_render_frame_without_cameras(lift_env):
    lift_env.reset(0)
    frame = lift_env.render_frame(size=48)
    assert frame.shape == (48, 48, 3) and frame.mean() > 10
