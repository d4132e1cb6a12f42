"""Optimizer and learning-rate schedule: AdamW + linear warm-up + cosine decay to 0.

The schedule is diffusers' ``get_cosine_schedule_with_warmup`` (the one diffusion_policy
uses), stepped once per optimizer step::

    lr(s) = lr * s / warmup                                  s < warmup
    lr(s) = lr * 0.5 * (1 + cos(pi * (s - warmup) / (total - warmup)))   otherwise
"""

from __future__ import annotations

import math

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import nn

from robopolicy.train.config import TrainConfig


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """The multiplier of the peak LR at ``step`` (reference formula, used by the tests)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the policy's ``optim_groups(weight_decay)`` if it has one, else all params."""
    if hasattr(model, "optim_groups"):
        groups = model.optim_groups(config.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if not any(len(list(g["params"])) for g in groups):
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine over ``config.num_steps`` optimizer steps."""
    return get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.num_steps)
