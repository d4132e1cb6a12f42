"""Tiny stores and train configs for the trainer and eval tests (policy: tests/fixture_policy.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from robopolicy.types import osc_pose_action_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `tests.`
from tests.fixture_policy import MLPConfig, MLPPolicy  # noqa: E402,F401  (registers "test_mlp")

STATE_DIM = 19


def make_store(path: Path, n_episodes: int = 6, length: int = 30, seed: int = 0, spec: bool = True) -> Path:
    """A store with ``state`` (L, 19) and ``action`` (L, 7) = a fixed function of the state."""
    from robopolicy.data.store import EpisodeStore

    rng = np.random.default_rng(seed)
    w = np.random.default_rng(123).normal(size=(STATE_DIM, 7)) / math.sqrt(STATE_DIM)
    store = EpisodeStore.create(path, action_spec=osc_pose_action_spec() if spec else None, control_rate=20.0)
    for _ in range(n_episodes):
        state = np.cumsum(rng.normal(scale=0.1, size=(length, STATE_DIM)), axis=0).astype(np.float32)
        action = np.tanh(state @ w).astype(np.float32)
        action[:, 6] = np.where(action[:, 6] > 0, 1.0, -1.0)
        store.add_episode({"state": state, "action": action})
    store.close()
    return path


def tiny_config(**overrides):
    """A TrainConfig for the fixture policy: small batches, no EMA warm-up surprises."""
    from robopolicy.train.config import TrainConfig

    base = dict(
        policy_name="test_mlp",
        policy={"horizon": 8, "n_obs_steps": 2, "n_action_steps": 4, "hidden": 32},
        obs_keys=("state",),
        batch_size=16,
        num_steps=40,
        lr=3e-3,
        warmup_steps=5,
        checkpoint_every=20,
        log_every=5,
        val_ratio=0.2,
        val_batches=2,
        num_workers=0,
        device="cpu",
        seed=7,
    )
    base.update(overrides)
    return TrainConfig(**base)


def train_losses(run_dir: Path) -> dict[int, float]:
    """``{step: loss}`` of the training rows of a run's ``metrics.jsonl``."""
    import json

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}
