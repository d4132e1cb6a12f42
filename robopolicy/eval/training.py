"""Periodic evaluation during training, as a callback the trainer receives.

The trainer never imports :mod:`robopolicy.eval` (nor the reverse): the CLI / run layer
builds ``eval_fn(policy, step, out_dir) -> report`` here from a typed :class:`EvalConfig`
and hands it to :class:`robopolicy.train.trainer.Trainer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robopolicy.policy import Policy


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What a periodic evaluation runs."""

    suite: str
    """A ``sim/*.yaml`` suite."""
    episodes: int = 20
    workers: int = 2
    videos: int = 1
    """Episodes recorded as mp4 per evaluation."""
    policy_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Inference options passed to the policy (e.g. ``{"num_inference_steps": 10}``)."""

    def __post_init__(self) -> None:
        if not self.suite:
            raise ValueError("EvalConfig.suite must name a sim/*.yaml suite")
        for name in ("episodes", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_train_config(cls, config: Any) -> EvalConfig:
        """From a train config's ``eval_*`` fields (duck-typed: no import of the training code)."""
        return cls(
            suite=config.eval_suite,
            episodes=config.eval_episodes,
            workers=config.eval_workers,
            policy_kwargs=dict(config.eval_policy_kwargs),
        )


def make_eval_fn(config: EvalConfig | Any) -> Callable[[Policy, int, Path], dict[str, Any]]:
    """``eval_fn(policy, step, out_dir) -> report`` rolling ``config``'s suite out.

    ``config`` is an :class:`EvalConfig` or a train config (its ``eval_*`` fields are used).
    """
    from robopolicy.envs.availability import require_sim

    cfg = config if isinstance(config, EvalConfig) else EvalConfig.from_train_config(config)
    require_sim("evaluation during training (eval_every > 0)")

    def run(policy: Policy, step: int, out: Path) -> dict[str, Any]:
        from robopolicy.eval.runner import evaluate

        return evaluate(
            policy,
            cfg.suite,
            episodes=cfg.episodes,
            workers=cfg.workers,
            out=out,
            n_videos=cfg.videos,
            progress=False,
            policy_kwargs=dict(cfg.policy_kwargs),
        )

    return run
