"""SeedPolicy in the common trainer: sequential streams, the recurrent carry across batches and
checkpoints (resume stays bit-exact), and a run that evaluates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from policy_fixture import make_store, tiny_config, train_losses

from robopolicy.policy import Policy
from robopolicy.train.data import SequentialStreamSampler, open_store
from robopolicy.train.run import build_policy
from robopolicy.train.trainer import Trainer

POLICY = {
    "horizon": 8,
    "n_obs_steps": 2,
    "n_action_steps": 4,
    "backbone": {"kind": "unet", "down_dims": [16, 32], "kernel_size": 3, "diffusion_step_embed_dim": 16},
    "sega": {"n_tokens": 4, "dim": 16, "depth": 1, "n_heads": 2},
    "reset_interval": 3,
    "inference": {"sampler": "ddim", "num_inference_steps": 4},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("seed") / "toy.zarr", n_episodes=8, length=20)


def config(**kw):
    base = dict(policy_name="seed", policy=POLICY, batch_size=3, val_ratio=0.0, log_every=1, warmup_steps=2)
    return tiny_config(**{**base, **kw})


def test_seed_trains_on_streams_and_carries_its_state(store, tmp_path):
    cfg = config(num_steps=6)
    policy, train_set, _ = build_policy(cfg, open_store(str(store)))
    init = policy.sega.initial_state.detach().clone()
    trainer = Trainer(cfg, policy, train_set, tmp_path / "run", progress=False)
    assert isinstance(trainer.sampler, SequentialStreamSampler)
    trainer.fit()
    assert not torch.equal(policy.sega.initial_state, init)  # the learned initial state is trained
    carry = policy.training_carry()
    assert carry["state"].shape == (3, 4, 16) and carry["age"].shape == (3,)
    # 20-step episodes, Ta = 4: 5 chunks per episode; with reset_interval 3 no row is older than 2
    assert int(carry["age"].max()) <= 2
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_6" / "train_state" / "state.pt", weights_only=True)
    torch.testing.assert_close(state["policy_carry"]["state"], carry["state"].cpu(), rtol=0, atol=0)
    loaded = Policy.load(tmp_path / "run" / "latest")
    deployed = trainer.deploy_policy.sega.initial_state
    torch.testing.assert_close(loaded.sega.initial_state, deployed, rtol=0, atol=0)


@pytest.mark.parametrize("bptt_chunks", [1, 2])
def test_seed_resume_is_exact_with_the_carry(store, tmp_path, bptt_chunks):
    cfg = config(num_steps=9, checkpoint_every=4, policy={**POLICY, "bptt_chunks": bptt_chunks})
    s = open_store(str(store))
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(cfg, *build_policy(cfg, s)[:2], full, progress=False).fit()
    Trainer(cfg, *build_policy(cfg, s)[:2], part, progress=False).fit(stop_at=5)
    Trainer(cfg, *build_policy(cfg, s)[:2], part, progress=False).fit(resume=True)
    a, b = train_losses(full), train_losses(part)
    assert [a[k] for k in range(1, 10)] == [b[k] for k in range(1, 10)]  # bit-exact
    wa = Policy.load(full / "latest").state_dict()
    wb = Policy.load(part / "latest").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_k_chunk_streams_advance_k_chunks_per_batch(store, tmp_path):
    cfg = config(num_steps=4, policy={**POLICY, "bptt_chunks": 2, "reset_interval": 40})
    policy, train_set, _ = build_policy(cfg, open_store(str(store)))
    trainer = Trainer(cfg, policy, train_set, tmp_path / "run", progress=False)
    assert trainer.sampler.stride == 2 * 4  # K chunks of Ta = 4 steps per batch
    trainer.fit()
    # 20-step episodes hold 5 chunks: batches of 2 chunks end an episode within 3 batches, so no
    # row can be older than 4 chunks (0-based age) however the streams fell
    age = policy.training_carry()["age"]
    assert age.shape == (3,) and int(age.max()) <= 4 and int(age.min()) >= 1
    assert train_losses(tmp_path / "run")[4] > 0


def test_resume_without_the_carry_would_differ(store, tmp_path):
    """The check above can fail: dropping the carry on resume changes the losses after it."""
    cfg = config(num_steps=9, checkpoint_every=4)
    s = open_store(str(store))
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(cfg, *build_policy(cfg, s)[:2], full, progress=False).fit()
    Trainer(cfg, *build_policy(cfg, s)[:2], part, progress=False).fit(stop_at=5)
    policy, train_set, _ = build_policy(cfg, s)
    policy.load_training_carry = lambda carry: None  # a trainer that forgot the carry
    Trainer(cfg, policy, train_set, part, progress=False).fit(resume=True)
    a, b = train_losses(full), train_losses(part)
    assert [a[k] for k in range(1, 5)] == [b[k] for k in range(1, 5)]
    assert any(a[k] != b[k] for k in range(5, 10))
    assert np.isfinite(list(b.values())).all()


def test_seed_runs_unchanged_in_the_evaluation_runner_and_the_controller(store, tmp_path):
    from robopolicy.control.controller import ENV_ID, Controller, ControllerConfig
    from robopolicy.control.drivers import make_driver
    from robopolicy.eval import evaluate

    run = tmp_path / "run"
    cfg = config(num_steps=2, checkpoint_every=2)
    Trainer(cfg, *build_policy(cfg, open_store(str(store)))[:2], run, progress=False).fit()
    suite = tmp_path / "lift.yaml"
    suite.write_text("task: Lift\nmax_steps: 8\n")
    report = evaluate(run, suite, episodes=2, workers=1, n_videos=0, progress=False)
    assert report["episodes"] == 2 and all(e["length"] == 8 for e in report["per_episode"])
    for strategy in ("replace", "rtc"):
        policy = Policy.load(run / "latest")
        arm = make_driver("mock", seed=0)
        # 10 Hz: a chunk deadline this test meets on a loaded 2-core machine too (it checks wiring, not speed)
        result = Controller(policy, arm, ControllerConfig(hz=10, max_ticks=20, strategy=strategy, seed=0)).run()
        assert result.end_reason == "max_ticks" and not result.faults, (strategy, result.faults)
        assert policy.state_of(ENV_ID) is not None  # one state, carried across the run's chunks
