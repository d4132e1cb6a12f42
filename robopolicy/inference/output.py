"""What one inference call returns: the actions and whatever else a policy has beside them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch


@dataclasses.dataclass
class PolicyOutput:
    """``actions``: env units, (B, H, Da), or (B, N, H, Da) with ``num_samples = N > 1``.

    ``info`` holds extras by name, each a tensor with the batch as its first dim or a plain
    number: ``nfe`` (network evaluations), ``energy`` (EBT), ``value`` (V-GPS, video policies),
    ``sample_index`` (the chosen one of N samples), ``warm`` (RTI). Never side channels.
    """

    actions: torch.Tensor
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.actions, torch.Tensor):
            raise TypeError(f"PolicyOutput.actions must be a tensor, got {type(self.actions).__name__}")
        self.info = dict(self.info)

    def rows(self, index: Any) -> PolicyOutput:
        """The output of a subset of batch rows (info tensors with a batch dim are indexed too)."""
        b = self.actions.shape[0]
        info = {
            k: v[index] if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == b else v for k, v in self.info.items()
        }
        return PolicyOutput(self.actions[index], info)
