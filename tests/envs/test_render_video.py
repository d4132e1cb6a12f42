"""Video frames are rendered exactly as robosuite renders its camera observations.

Regression for low-dim suites: their env has no robosuite render context, and the one
``render_frame`` used to create kept MuJoCo's default geom groups, so the robot's collision
meshes (group 0) were drawn over its visual meshes (mean abs difference ~7 gray levels on
an 84x84 agentview frame, 255 at the robot).
"""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.envs.render import apply_fast_render_patch, image_convention, make_current, upright_observation
from robopolicy.envs.robosuite_env import RobosuiteEnv, validate_video_camera

SIZE = 84
CAMERAS = ("agentview", "frontview")


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _drive(env: RobosuiteEnv, seed: int, steps: int) -> None:
    env.reset(seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        env.step(rng.uniform(-1, 1, 7))


def test_lowdim_video_frame_equals_robosuite_camera_obs(lift_env):
    """A low-dim env's video frame == robosuite's own camera observation of the same sim state."""
    import robosuite
    from robosuite.controllers import load_composite_controller_config

    _drive(lift_env, seed=3, steps=5)  # the arm has moved away from its initial pose
    apply_fast_render_patch()
    np.random.seed(0)
    ref = robosuite.make(
        "Lift",
        robots="Panda",
        controller_configs=load_composite_controller_config(controller=None, robot="Panda"),
        has_renderer=False,
        has_offscreen_renderer=True,
        use_camera_obs=True,
        camera_names=list(CAMERAS),
        camera_heights=SIZE,
        camera_widths=SIZE,
        hard_reset=False,
        ignore_done=True,
    )
    try:
        ref.reset()
        ref.sim.set_state_from_flattened(lift_env.env.sim.get_state().flatten())
        ref.sim.forward()
        obs = ref._get_observations(force_update=True)
        convention = image_convention()
        for cam in CAMERAS:
            expected = upright_observation(obs[f"{cam}_image"], convention)
            frame = lift_env.render_frame(cam, size=SIZE)
            assert _diff(frame, expected) < 1.0, cam
    finally:
        make_current(ref)  # robosuite frees its GL objects in the current GL context
        ref.close()


def test_lowdim_frame_equals_image_suite_obs(lift_env):
    """Same seed and actions: the low-dim env's video frames == an image suite's ``image.agentview``."""
    img_env = RobosuiteEnv("Lift", cameras=["agentview"], image_size=SIZE)
    try:
        obs = img_env.reset(5)
        lift_env.reset(5)
        assert _diff(lift_env.render_frame("agentview", size=SIZE), obs["image.agentview"]) < 1.0
        # a large video frame in between (grows the shared offscreen buffer) changes nothing
        assert img_env.render_frame("agentview", size=256).shape == (256, 256, 3)
        rng = np.random.default_rng(1)
        for _ in range(3):
            a = rng.uniform(-1, 1, 7)
            obs, *_ = img_env.step(a)
            lift_env.step(a)
        assert _diff(lift_env.render_frame("agentview", size=SIZE), obs["image.agentview"]) < 1.0
        assert _diff(img_env.render_frame("agentview", size=SIZE), obs["image.agentview"]) < 1.0
        before = lift_env.render_frame("agentview", size=SIZE)
    finally:
        img_env.close()
    # closing one env of the process leaves the other's render context intact
    assert _diff(lift_env.render_frame("agentview", size=SIZE), before) == 0.0


def test_lowdim_context_hides_collision_meshes(lift_env):
    lift_env.render_frame(size=32)
    ctx = lift_env.env.sim._render_context_offscreen
    assert list(ctx.vopt.geomgroup[:2]) == [0, 1]  # as robosuite sets its own contexts


def test_upright_observation_conventions(monkeypatch):
    raw = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(4, 2, 3)  # as read from OpenGL: bottom row first
    np.testing.assert_array_equal(upright_observation(raw, "opengl"), raw[::-1])
    np.testing.assert_array_equal(upright_observation(raw[::-1], "opencv"), raw[::-1])
    from robosuite import macros

    assert image_convention() == macros.IMAGE_CONVENTION
    monkeypatch.setattr(macros, "IMAGE_CONVENTION", "sideways")
    with pytest.raises(ValueError, match="IMAGE_CONVENTION 'sideways'"):
        image_convention()


def test_validate_video_camera():
    assert validate_video_camera("Lift", "frontview") == "frontview"
    with pytest.raises(ValueError, match=r"unknown video camera 'top' for task Lift; valid cameras: agentview, "):
        validate_video_camera("Lift", "top")
    with pytest.raises(ValueError, match="video camera .sideview. for task PickPlaceCan"):  # no sideview there
        validate_video_camera("PickPlaceCan", "sideview")
