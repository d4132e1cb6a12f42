"""Small embedding layers shared by the denoisers."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a (possibly fractional) diffusion step.

    ``t``: (B,) or scalar -> (B, dim). Half the channels are ``sin``, half ``cos``, with
    frequencies spaced geometrically from 1 to 1/10000.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"sinusoidal embedding dim must be an even number >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t).float().reshape(-1)
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / (half - 1)))
        args = t[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


def broadcast_timesteps(t: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    """Turn a scalar / (1,) / (B,) timestep into a float tensor of shape (B,)."""
    t = torch.as_tensor(t, device=device, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"timesteps must be a scalar or have {batch} entries, got {t.numel()}")
    return t
