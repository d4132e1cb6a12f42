"""A trivial registered policy used only as a test fixture (never a product feature).

It predicts ``tanh(W obs_last) + noise_scale * noise``: small, stochastic (so seeding and
batch-vs-single contracts are meaningful) and trainable (so trainer tests can see the loss fall).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from robopolicy.policy import Policy, PolicyConfig, batch_randn, register_policy
from robopolicy.types import ActionSpec, ObservationSpec


@dataclasses.dataclass(frozen=True)
class FixtureLinearConfig(PolicyConfig):
    noise_scale: float = 0.1
    """std of the sampling noise in normalized action units."""


@register_policy("fixture_linear")
class FixtureLinearPolicy(Policy):
    config_class = FixtureLinearConfig

    def __init__(self, config: FixtureLinearConfig, normalizer=None) -> None:
        super().__init__(config, normalizer)
        d_in = sum(int(torch.tensor(f.shape).prod()) for f in config.obs_spec.low_dim)
        self.head = nn.Linear(d_in * config.n_obs_steps, config.horizon * config.action_spec.dim)

    @classmethod
    def tiny_configs(cls, obs_spec: ObservationSpec, action_spec: ActionSpec) -> dict[str, FixtureLinearConfig]:
        return {"default": FixtureLinearConfig(obs_spec, action_spec, horizon=8, n_obs_steps=2, n_action_steps=4)}

    def _features(self, obs) -> torch.Tensor:
        n = self.normalize_obs(obs)
        return torch.cat([n[f.key].flatten(1) for f in self.config.obs_spec.low_dim], dim=-1)

    def compute_loss(self, batch):
        x = self._features(batch["obs"])
        target = self.normalizer.normalize("action", self.check_action(batch["action"]))
        pred = torch.tanh(self.head(x)).view_as(target)
        loss = nn.functional.mse_loss(pred, target)
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def predict_action_chunk(self, obs, *, num_samples=1, generator=None):
        c = self.config
        x = self._features(obs)
        b = x.shape[0]
        mean = torch.tanh(self.head(x)).view(b, 1, c.horizon, c.action_spec.dim)
        noise = batch_randn((b, num_samples, c.horizon, c.action_spec.dim), generator, self.device)
        a = self.snap_discrete(self.normalizer.unnormalize("action", mean + c.noise_scale * noise))
        return a[:, 0] if num_samples == 1 else a
