"""Conditional 1-D U-Net over action chunks with FiLM conditioning (Diffusion Policy's CNN).

Shapes::

    x            (B, H, Da)    noisy action chunk (H = horizon)
    timesteps    (B,) or ()    diffusion step (float allowed: the embedding is sinusoidal)
    global_cond  (B, G)        flattened observation features (G = To * D)
    output       (B, H, Da)

Every residual block gets ``cond = [step_embedding(t), global_cond]`` and turns it into a
per-channel scale and bias (FiLM). The horizon must be a multiple of
``2 ** (len(down_dims) - 1)`` (one stride-2 downsample between consecutive levels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

from robopolicy.nn.embeddings import SinusoidalPosEmb, broadcast_timesteps


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish; keeps the length (``padding = k // 2``)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int = 8) -> None:
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class FiLMResBlock1d(nn.Module):
    """Two conv blocks with a FiLM (scale, bias) from ``cond`` between them, plus a residual.

    ``x``: (B, C_in, T), ``cond``: (B, cond_dim) -> (B, C_out, T).
    """

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        scale, bias = rearrange(self.film(cond), "b (two c) -> two b c 1", two=2)
        h = self.block2(scale * h + bias)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """FiLM-conditioned temporal U-Net: ``forward(x, timesteps, global_cond) -> eps_hat``."""

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 256,
    ) -> None:
        super().__init__()
        dims = [int(d) for d in down_dims]
        if not dims:
            raise ValueError("down_dims must name at least one level")
        bad = [d for d in dims if d % n_groups]
        if bad:
            raise ValueError(f"down_dims {bad} are not multiples of n_groups={n_groups}")
        dsed = diffusion_step_embed_dim
        self.step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, 4 * dsed), nn.Mish(), nn.Linear(4 * dsed, dsed)
        )
        cond_dim = dsed + global_cond_dim

        def res(c_in: int, c_out: int) -> FiLMResBlock1d:
            return FiLMResBlock1d(c_in, c_out, cond_dim, kernel_size, n_groups)

        levels = list(zip([input_dim] + dims[:-1], dims))
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(levels):
            last = i == len(levels) - 1
            down = nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1)
            self.down.append(nn.ModuleList([res(c_in, c_out), res(c_out, c_out), down]))
        self.mid = nn.ModuleList([res(dims[-1], dims[-1]), res(dims[-1], dims[-1])])
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(levels[1:]):
            up = nn.ConvTranspose1d(c_in, c_in, 4, stride=2, padding=1)
            self.up.append(nn.ModuleList([res(2 * c_out, c_in), res(c_in, c_in), up]))
        self.head = nn.Sequential(
            Conv1dBlock(dims[0], dims[0], kernel_size, n_groups), nn.Conv1d(dims[0], input_dim, 1)
        )
        self.min_horizon_multiple = 2 ** (len(dims) - 1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, global_cond: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.min_horizon_multiple:
            raise ValueError(f"horizon must be a multiple of {self.min_horizon_multiple}, got {x.shape[1]}")
        t = broadcast_timesteps(timesteps, x.shape[0], x.device)
        cond = torch.cat([self.step_encoder(t), global_cond.reshape(x.shape[0], -1)], dim=-1)
        h = rearrange(x, "b t d -> b d t")
        skips = []
        for block1, block2, down in self.down:
            h = block2(block1(h, cond), cond)
            skips.append(h)  # the shallowest skip is unused, as in Diffusion Policy
            h = down(h)
        for block in self.mid:
            h = block(h, cond)
        for block1, block2, up in self.up:
            h = block2(block1(torch.cat([h, skips.pop()], dim=1), cond), cond)
            h = up(h)
        return rearrange(self.head(h), "b d t -> b t d")
