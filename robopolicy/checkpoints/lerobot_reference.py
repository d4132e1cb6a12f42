"""lerobot's own DiffusionPolicy, run the way lerobot runs it: the reference that a converted
checkpoint is checked and timed against. Needs lerobot (its own environment: ``make real-env``);
the parity test (``tests/real``) and ``benchmarks/bench_lerobot.py`` use it.

* :func:`make_random_checkpoint`: a DiffusionPolicy with seeded random weights and made-up
  stats, saved by lerobot's ``save_pretrained`` with its pre- and post-processor.
* :class:`LerobotRunner`: loads such a directory with lerobot's ``from_pretrained`` and
  ``make_pre_post_processors`` and returns a chunk for an observation window: each frame goes
  through the preprocessor and lerobot's observation queues (as ``select_action`` does), then
  ``predict_action_chunk`` and the postprocessor. Its noise (the initial chunk and DDPM's step
  noise) comes from torch's global generator, which lerobot's sampling loop draws from; seeding
  it with ``s`` gives the draws of robopolicy's ``generator=torch.Generator().manual_seed(s)``
  at batch 1, in the same order (initial chunk, then one draw per step but the last).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopolicy.data.importers.lerobot import lerobot_key_to_field

OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"
OBS_IMAGES = "observation.images"


def lerobot_available() -> bool:
    return importlib.util.find_spec("lerobot") is not None


def make_random_checkpoint(
    out: str | Path,
    *,
    state_dim: int = 9,
    env_dim: int | None = 11,
    action_dim: int = 7,
    cameras: Sequence[str] = (),
    image_shape: tuple[int, int, int] = (3, 84, 84),
    seed: int = 0,
    **config: Any,
) -> Path:
    """Save a lerobot DiffusionPolicy with random weights (``torch.manual_seed(seed)``) to ``out``.

    ``cameras`` are names (``observation.images.<name>``); ``config`` overrides lerobot's
    DiffusionConfig fields (``down_dims``, ``noise_scheduler_type``...). The stats are drawn from
    ``seed`` too (ranges around the data, images per channel)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    rng = np.random.default_rng(seed)
    inputs = {OBS_STATE: PolicyFeature(FeatureType.STATE, (state_dim,))}
    stats = {OBS_STATE: _lowdim_stats(rng, state_dim), "action": _lowdim_stats(rng, action_dim)}
    if env_dim is not None:
        inputs[OBS_ENV_STATE] = PolicyFeature(FeatureType.ENV, (env_dim,))
        stats[OBS_ENV_STATE] = _lowdim_stats(rng, env_dim)
    for cam in cameras:
        inputs[f"{OBS_IMAGES}.{cam}"] = PolicyFeature(FeatureType.VISUAL, tuple(image_shape))
        stats[f"{OBS_IMAGES}.{cam}"] = _image_stats(rng, image_shape[0])
    cfg = DiffusionConfig(
        input_features=inputs,
        output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
        device="cpu",
        push_to_hub=False,
        **config,
    )
    torch.manual_seed(seed)
    policy = DiffusionPolicy(cfg)
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    out = Path(out)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


def _lowdim_stats(rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
    lo = rng.uniform(-2.0, 0.0, n)
    hi = lo + rng.uniform(0.5, 3.0, n)
    mean = lo + (hi - lo) * rng.uniform(0.3, 0.7, n)
    std = (hi - lo) * rng.uniform(0.1, 0.3, n)
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in dict(min=lo, max=hi, mean=mean, std=std).items()}


def _image_stats(rng: np.random.Generator, c: int) -> dict[str, torch.Tensor]:
    mean = rng.uniform(0.3, 0.6, (c, 1, 1))
    std = rng.uniform(0.15, 0.3, (c, 1, 1))
    lo, hi = np.zeros((c, 1, 1)), np.ones((c, 1, 1))
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in dict(min=lo, max=hi, mean=mean, std=std).items()}


class LerobotRunner:
    """A lerobot checkpoint directory loaded by lerobot, with a sampler chosen per call."""

    def __init__(self, path: str | Path) -> None:
        from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
        from lerobot.policies.factory import make_pre_post_processors

        self.path = Path(path)
        self.policy = DiffusionPolicy.from_pretrained(str(self.path)).to("cpu").eval()
        self.config = self.policy.config
        self.pre, self.post = make_pre_post_processors(self.config, pretrained_path=str(self.path))
        self.image_keys = list(self.config.image_features)
        self.keys = {k: lerobot_key_to_field(k) for k in self.config.input_features}

    def set_sampler(self, sampler: str, steps: int) -> None:
        """``ddpm`` or ``ddim`` with ``steps`` steps, built by lerobot's own scheduler factory."""
        from lerobot.policies.diffusion.modeling_diffusion import _make_noise_scheduler

        c = self.config
        self.policy.diffusion.noise_scheduler = _make_noise_scheduler(
            sampler.upper(),
            num_train_timesteps=c.num_train_timesteps,
            beta_start=c.beta_start,
            beta_end=c.beta_end,
            beta_schedule=c.beta_schedule,
            clip_sample=c.clip_sample,
            clip_sample_range=c.clip_sample_range,
            prediction_type=c.prediction_type,
        )
        self.policy.diffusion.num_inference_steps = int(steps)

    def lerobot_obs(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """robopolicy's window ``{key: (B, To, ...)}`` (images uint8 HWC) -> lerobot's keys and
        layout (images float CHW in [0, 1])."""
        out = {}
        for lr_key in self.config.input_features:
            x = torch.as_tensor(np.asarray(obs[self.keys[lr_key]]))
            if lr_key in self.image_keys:
                x = x.float().div(255.0).movedim(-1, -3)
            out[lr_key] = x.float().contiguous()
        return out

    @torch.no_grad()
    def chunk(self, lobs: Mapping[str, torch.Tensor], seed: int | None = None) -> torch.Tensor:
        """lerobot's executed chunk (B, Ta, Da) in env units for a window in lerobot's layout."""
        if seed is not None:
            torch.manual_seed(seed)
        self.policy.reset()
        from lerobot.policies.utils import populate_queues

        to = self.config.n_obs_steps
        for t in range(to):
            frame = self.pre({k: v[:, t] for k, v in lobs.items()})
            frame = {k: v for k, v in frame.items() if k in self.config.input_features}  # as select_action
            if self.image_keys:
                frame[OBS_IMAGES] = torch.stack([frame[k] for k in self.image_keys], dim=-4)
            populate_queues(self.policy._queues, frame)
        return self.post(self.policy.predict_action_chunk(frame))
