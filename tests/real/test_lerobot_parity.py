"""Parity with lerobot itself (the ``real`` env: ``make real-env``, then
``.venv-real/bin/pytest -m real tests/real``; skipped where lerobot is not importable).

A lerobot DiffusionPolicy with random weights is saved by lerobot (policy + processors),
converted by ``import-checkpoint`` and loaded with ``Policy.load``; for the same observations
and the same seed both give the same executed chunk, DDIM-10 and DDPM-100, at batch 1. lerobot
draws its noise from torch's global generator (initial chunk, then DDPM's step noise), ours from
``torch.Generator().manual_seed(seed)`` in the same order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("lerobot")

from robopolicy.checkpoints.lerobot import (  # noqa: E402
    IMAGE_OUTPUT_ACTIVATION_FIELD,
    UnsupportedCheckpointError,
    import_lerobot_checkpoint,
)
from robopolicy.checkpoints.lerobot_reference import LerobotRunner, make_random_checkpoint  # noqa: E402
from robopolicy.nn.configs import ObsEncoderConfig  # noqa: E402
from robopolicy.policy import Policy  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("one_thread")]

LOWDIM = dict(down_dims=(64, 128, 256), horizon=16, n_obs_steps=2, n_action_steps=8)
SAMPLERS = [("ddim", 10), ("ddpm", 100)]
ATOL = 5e-5  # float32 through 10-100 steps; measured ~5e-6 on actions of size ~2


def window(keys_shapes: dict, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = {}
    for key, shape in keys_shapes.items():
        if key.startswith("image."):
            obs[key] = rng.integers(0, 256, (1, 2, *shape), dtype=np.uint8)
        else:
            obs[key] = rng.normal(size=(1, 2, *shape)).astype(np.float32)
    return obs


def both(tmp_path, name: str, **make) -> tuple[LerobotRunner, Policy]:
    src = make_random_checkpoint(tmp_path / f"{name}_lerobot", **make)
    import_lerobot_checkpoint(src, tmp_path / f"{name}_ours")
    return LerobotRunner(src), Policy.load(tmp_path / f"{name}_ours")


def assert_same_chunks(runner: LerobotRunner, ours: Policy, obs: dict, seeds=(0, 1)) -> float:
    lobs = runner.lerobot_obs(obs)
    worst = 0.0
    executed = ours.config.timing.executed
    for sampler, steps in SAMPLERS:
        runner.set_sampler(sampler, steps)
        for seed in seeds:
            theirs = runner.chunk(lobs, seed=seed)
            gen = torch.Generator().manual_seed(seed)
            mine = ours.predict(obs, generator=gen, options={"sampler": sampler, "num_inference_steps": steps})
            got = mine.actions[:, executed]
            assert got.shape == theirs.shape
            torch.testing.assert_close(got, theirs, atol=ATOL, rtol=1e-5, msg=f"{sampler}-{steps} seed {seed}")
            worst = max(worst, float((got - theirs).abs().max()))
    return worst


def test_lowdim_unet_gives_lerobots_chunks(tmp_path):
    runner, ours = both(tmp_path, "lowdim", state_dim=9, env_dim=11, action_dim=7, **LOWDIM)
    obs = window({"state": (9,), "environment_state": (11,)})
    worst = assert_same_chunks(runner, ours, obs)
    print(f"lowdim max abs diff {worst:.3g}")


def test_the_default_sampler_is_lerobots(tmp_path):
    make = dict(state_dim=4, env_dim=5, action_dim=3, seed=3, noise_scheduler_type="DDIM", num_inference_steps=10)
    runner, ours = both(tmp_path, "ddim", **{**LOWDIM, **make})
    assert (ours.config.inference.sampler.value, ours.config.inference.num_inference_steps) == ("ddim", 10)
    obs = window({"state": (4,), "environment_state": (5,)}, seed=1)
    theirs = runner.chunk(runner.lerobot_obs(obs), seed=5)  # as loaded: lerobot's DDIM, 10 steps
    mine = ours.predict(obs, generator=torch.Generator().manual_seed(5)).actions[:, ours.config.timing.executed]
    torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=1e-5)


IMAGES = dict(cameras=("top", "wrist"), image_shape=(3, 64, 64), crop_shape=(56, 56), **LOWDIM)


@pytest.mark.parametrize("separate, env_dim", [(False, 11), (True, None)])
def test_image_unet(tmp_path, separate, env_dim):
    """Two cameras: a shared encoder with an environment state (FiLM columns permuted), or one
    encoder per camera. Refused with the ReLU named while robopolicy's image encoder lacks it."""
    make = dict(state_dim=9, env_dim=env_dim, action_dim=7, use_separate_rgb_encoder_per_camera=separate, seed=1)
    src = make_random_checkpoint(tmp_path / "lerobot", **IMAGES, **make)
    if IMAGE_OUTPUT_ACTIVATION_FIELD not in {f.name for f in dataclasses.fields(ObsEncoderConfig)}:
        with pytest.raises(UnsupportedCheckpointError, match="ReLU after its output Linear"):
            import_lerobot_checkpoint(src, tmp_path / "ours")
        return
    import_lerobot_checkpoint(src, tmp_path / "ours")
    runner, ours = LerobotRunner(src), Policy.load(tmp_path / "ours")
    shapes = {"state": (9,), "image.top": (64, 64, 3), "image.wrist": (64, 64, 3)}
    if env_dim:
        shapes["environment_state"] = (env_dim,)
    worst = assert_same_chunks(runner, ours, window(shapes), seeds=(0,))
    print(f"image (separate={separate}) max abs diff {worst:.3g}")
