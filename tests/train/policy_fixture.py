"""Test-only policy ("test_mlp") and tiny stores for the trainer and eval tests.

Registered here, never in the package. The MLP maps the flattened normalized low-dim obs
(plus a little input noise from the global torch RNG, so that exact resume must restore it)
to a normalized action chunk.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robopolicy.policy import Policy, PolicyConfig, get_policy_class, register_policy
from robopolicy.types import osc_pose_action_spec


@dataclasses.dataclass(frozen=True)
class MLPConfig(PolicyConfig):
    """Tiny MLP policy config."""

    hidden: int = 64
    """Hidden width."""
    input_noise: float = 0.01
    """Std of noise added to the inputs in training (draws from the global torch RNG)."""


def _register() -> type[Policy]:
    try:
        return get_policy_class("test_mlp")
    except KeyError:
        pass

    @register_policy("test_mlp")
    class MLPPolicy(Policy):
        config_class = MLPConfig

        def __init__(self, config: MLPConfig, normalizer=None) -> None:
            super().__init__(config, normalizer)
            d_in = config.n_obs_steps * sum(math.prod(f.shape) for f in config.obs_spec.low_dim)
            self.net = nn.Sequential(
                nn.Linear(d_in, config.hidden),
                nn.Mish(),
                nn.Linear(config.hidden, config.horizon * config.action_spec.dim),
            )

        def _features(self, obs) -> torch.Tensor:
            x = self.normalize_obs(obs)
            return torch.cat([x[f.key].flatten(1) for f in self.config.obs_spec.low_dim], dim=-1)

        def compute_loss(self, batch):
            x = self._features(batch["obs"])
            x = x + self.config.input_noise * torch.randn_like(x)
            target = self.normalizer.normalize("action", self.check_action(batch["action"]))
            pred = self.net(x).view(target.shape)
            loss = nn.functional.mse_loss(pred, target)
            return loss, {"mse": float(loss.detach())}

        @torch.no_grad()
        def predict_action_chunk(self, obs, *, num_samples=1, generator=None, num_inference_steps=None):
            x = self._features(obs)
            c = self.config
            pred = self.net(x).view(x.shape[0], c.horizon, c.action_spec.dim)
            return self.normalizer.unnormalize("action", pred)

    return MLPPolicy


MLPPolicy = _register()

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
