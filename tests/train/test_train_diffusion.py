"""The trainer and evaluator with the real DiffusionPolicy (tiny U-Net): exact resume, eval."""

from __future__ import annotations

from pathlib import Path

import pytest
from policy_fixture import make_store, tiny_config, train_losses

from robopolicy.train.data import open_store
from robopolicy.train.run import build_policy
from robopolicy.train.trainer import Trainer

pytest.importorskip("robopolicy.policies.diffusion")

POLICY = {
    "horizon": 8,
    "n_obs_steps": 2,
    "n_action_steps": 4,
    "backbone": {"kind": "unet", "down_dims": [16, 32], "kernel_size": 3, "diffusion_step_embed_dim": 16},
    "inference": {"sampler": "ddim", "num_inference_steps": 4},
}


def _trainer(cfg, store, run_dir) -> Trainer:
    policy, train_set, val_set = build_policy(cfg, open_store(str(store)))
    return Trainer(cfg, policy, train_set, run_dir, val_set=val_set, progress=False)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("dp") / "toy.zarr", n_episodes=4)


def test_diffusion_resume_is_exact(store, tmp_path):
    cfg = tiny_config(policy_name="diffusion", policy=POLICY, num_steps=4, checkpoint_every=2, log_every=1)
    _trainer(cfg, store, tmp_path / "full").fit()
    _trainer(cfg, store, tmp_path / "part").fit(stop_at=2)
    _trainer(cfg, store, tmp_path / "part").fit(resume=True)
    full, part = train_losses(tmp_path / "full"), train_losses(tmp_path / "part")
    assert part[3] == full[3] and part[4] == full[4]


def test_diffusion_checkpoint_evaluates_with_sampler_override(store, tmp_path):
    from robopolicy.eval import evaluate

    run = tmp_path / "run"
    _trainer(tiny_config(policy_name="diffusion", policy=POLICY, num_steps=2, checkpoint_every=2), store, run).fit()
    suite = tmp_path / "lift.yaml"
    suite.write_text("task: Lift\nmax_steps: 8\n")
    report = evaluate(
        run,
        suite,
        episodes=1,
        workers=1,
        n_videos=0,
        progress=False,
        policy_kwargs={"sampler": "ddim", "num_inference_steps": 2},
    )
    assert report["episodes"] == 1 and report["per_episode"][0]["length"] == 8
    assert report["settings"]["inference"]["policy"] == {"sampler": "ddim", "num_inference_steps": 2}
