"""The one test-only policy ("test_mlp"), registered here and never in the package.

An MLP maps the flattened normalized low-dim obs to a normalized action chunk. It is small and
trainable (trainer tests watch the loss fall). Its training draws input noise from the global torch RNG,
so exact resume must restore that RNG. Sampling adds ``noise_scale`` noise through
``batch_randn``, so the contract's seeding and batch-vs-single checks mean something.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from robopolicy.policy import Policy, PolicyConfig, batch_randn, register_policy
from robopolicy.types import ActionSpec, ObservationSpec


@dataclasses.dataclass(frozen=True)
class MLPConfig(PolicyConfig):
    """Tiny MLP policy config."""

    hidden: int = 64
    """Hidden width."""
    input_noise: float = 0.01
    """Std of noise added to the inputs in training (draws from the global torch RNG)."""
    noise_scale: float = 0.0
    """Std of the sampling noise in normalized action units (0: deterministic predictions)."""


@register_policy("test_mlp")
class MLPPolicy(Policy):
    config_class = MLPConfig

    def __init__(self, config: MLPConfig, normalizer=None) -> None:
        super().__init__(config, normalizer)
        d_in = config.n_obs_steps * sum(math.prod(f.shape) for f in config.obs_spec.low_dim)
        self.net = nn.Sequential(
            nn.Linear(d_in, config.hidden), nn.Mish(), nn.Linear(config.hidden, config.horizon * config.action_spec.dim)
        )

    @classmethod
    def tiny_configs(cls, obs_spec: ObservationSpec, action_spec: ActionSpec) -> dict[str, MLPConfig]:
        cfg = MLPConfig(obs_spec, action_spec, horizon=8, n_obs_steps=2, n_action_steps=4, hidden=16, noise_scale=0.1)
        return {"default": cfg}

    def _features(self, obs) -> torch.Tensor:
        x = self.normalize_obs(obs)
        return torch.cat([x[f.key].flatten(1) for f in self.config.obs_spec.low_dim], dim=-1)

    def compute_loss(self, batch):
        x = self._features(batch["obs"])
        x = x + self.config.input_noise * torch.randn_like(x)
        target = self.normalizer.normalize("action", self.check_action(batch["action"]))
        loss = nn.functional.mse_loss(self.net(x).view(target.shape), target)
        return loss, {"loss": float(loss.detach())}

    def _predict(self, obs, *, env_ids, generator, num_samples, options):
        c = self.config
        x = self._features(obs)
        mean = self.net(x).view(x.shape[0], 1, c.horizon, c.action_spec.dim)
        noise = batch_randn((x.shape[0], num_samples, c.horizon, c.action_spec.dim), generator, self.device)
        a = self.snap_discrete(self.normalizer.unnormalize("action", mean + c.noise_scale * noise))
        return a[:, 0] if num_samples == 1 else a
