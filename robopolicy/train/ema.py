"""Exponential moving average of a model's weights, as in diffusion_policy's ``EMAModel``.

``decay(n) = clamp(1 - (1 + k/inv_gamma)^-power, 0, max_value)`` with ``k = n - 1`` for the
n-th update (n counted from 0), and 0 while ``k <= 0``: the first updates copy the weights.
Floating-point parameters that require grad are averaged; every other parameter and every
buffer (BatchNorm statistics, integer counters, frozen weights) is copied, never averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from robopolicy.train.config import EMAConfig


def ema_decay(update: int, power: float = 0.75, inv_gamma: float = 1.0, max_value: float = 0.9999) -> float:
    """Decay used by the ``update``-th call (0-based), diffusion_policy's schedule."""
    step = update - 1
    if step <= 0:
        return 0.0
    value = 1.0 - (1.0 + step / inv_gamma) ** -power
    return float(min(max(value, 0.0), max_value))


class EMA:
    """Holds ``averaged``: a deep copy of the model updated by :meth:`update` after each step."""

    def __init__(self, model: nn.Module, config: EMAConfig) -> None:
        self.config = config
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0
        self.decay = 0.0
        src = dict(model.named_parameters())
        self._avg_names = [
            n for n, p in src.items() if p.requires_grad and p.is_floating_point() and not _in_batchnorm(model, n)
        ]
        self._copy_names = [n for n in src if n not in set(self._avg_names)]

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Blend ``model``'s weights into the average; returns the decay used."""
        c = self.config
        d = ema_decay(self.updates, c.power, c.inv_gamma, c.max_value)
        src, avg = dict(model.named_parameters()), dict(self.averaged.named_parameters())
        if self._avg_names:  # avg = d * avg + (1 - d) * src, one fused kernel per dtype/device
            targets = [avg[n] for n in self._avg_names]
            torch._foreach_mul_(targets, d)
            torch._foreach_add_(targets, [src[n].detach() for n in self._avg_names], alpha=1.0 - d)
        for n in self._copy_names:
            avg[n].copy_(src[n].detach())
        src_buf = dict(model.named_buffers())
        for name, b_avg in self.averaged.named_buffers():
            b_avg.copy_(src_buf[name])
        self.updates += 1
        self.decay = d
        return d

    def state_dict(self) -> dict[str, int | float]:
        """Counters only; the averaged weights are saved as the deployable policy."""
        return {"updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, int | float]) -> None:
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])


def _in_batchnorm(model: nn.Module, param_name: str) -> bool:
    owner = model.get_submodule(param_name.rpartition(".")[0]) if "." in param_name else model
    return isinstance(owner, nn.modules.batchnorm._BatchNorm)
