"""SEGA: Self-Evolving Gated Attention (SeedPolicy, arXiv 2603.05117), a recurrent latent state.

A fixed set of ``N`` state tokens ``S`` (dimension ``d``) is carried from one policy call to the
next. Each call takes the observation tokens ``O`` of the current window (``(B, To, D)``,
projected to ``d``) and runs ``depth`` layers of two transformer blocks in parallel, each reading
the previous layer's outputs of both streams::

    state stream   X_s <- X_s + SelfAttn(LN X_s);  X_s <- X_s + CrossAttn(LN X_s -> LN X_o);  X_s <- X_s + MLP(LN X_s)
    obs stream     X_o <- X_o + SelfAttn(LN X_o);  X_o <- X_o + CrossAttn(LN X_o -> LN X_s);  X_o <- X_o + MLP(LN X_o)

with ``X_s = S_{t-1} + P`` at the input (``P``: a learned position embedding of the state
tokens) and ``X_o = O``. A final LayerNorm per stream gives the candidate state ``S^`` and the
enhanced observations ``E`` (what the action expert is conditioned on).

**The gate.** The state stream's cross-attention logits ``A^l`` (``(B, heads, N, To)``, before the
softmax) are averaged over layers, heads and observation tokens, one value per state token::

    g_i = sigmoid(mean_{l,h,j} A^l_{h,i,j})            g: (B, N, 1)
    S_t + P = g * S^ + (1 - g) * (S_{t-1} + P)

and ``P`` is subtracted again, so the carried state never holds it. **At an episode's start**
(``state`` None, or ``reset`` True for a row) the previous state is the learned initial state
``S_0`` and the gate is forced to 1: a full update.

Every parameter (``S_0`` and ``P`` included) is a registered parameter, so the optimizer trains
them and ``save``/``load`` keep them; the reference code leaves them out of the optimizer.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class SegaConfig:
    """SEGA's size (the reference: 60 tokens x 256, depth 6, 8 heads; the CPU presets are smaller)."""

    n_tokens: int = 60
    """N: state tokens."""
    dim: int = 256
    """d: width of the state, of the projected observation tokens and of the enhanced observations."""
    depth: int = 6
    """L: layers of parallel state / observation blocks."""
    n_heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_tokens", "dim", "depth", "n_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"sega.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"sega.dim {self.dim} must be divisible by sega.n_heads {self.n_heads}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"sega.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"sega.dropout must be in [0, 1), got {self.dropout}")


class Attention(nn.Module):
    """Multi-head attention of ``q_in`` (B, Nq, d) over ``kv_in`` (B, Nk, d); returns the output
    and the pre-softmax logits (B, heads, Nq, Nk)."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, nq, d = q_in.shape
        h, dh = self.n_heads, self.head_dim
        q = self.q(q_in).view(b, nq, h, dh).transpose(1, 2)
        k, v = self.kv(kv_in).view(b, kv_in.shape[1], 2, h, dh).permute(2, 0, 3, 1, 4)
        logits = (q @ k.transpose(-2, -1)) / math.sqrt(dh)
        att = self.drop(logits.softmax(dim=-1))
        out = (att @ v).transpose(1, 2).reshape(b, nq, d)
        return self.out(out), logits


class SegaBlock(nn.Module):
    """Pre-LN self-attention, cross-attention to the other stream, MLP (module docstring)."""

    def __init__(self, cfg: SegaConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm_self, self.self_attn = nn.LayerNorm(d), Attention(d, cfg.n_heads, cfg.dropout)
        self.norm_q, self.norm_mem = nn.LayerNorm(d), nn.LayerNorm(d)
        self.cross_attn = Attention(d, cfg.n_heads, cfg.dropout)
        self.norm_mlp = nn.LayerNorm(d)
        hidden = int(round(d * cfg.mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.norm_self(x)
        x = x + self.self_attn(y, y)[0]
        out, logits = self.cross_attn(self.norm_q(x), self.norm_mem(memory))
        x = x + out
        x = x + self.mlp(self.norm_mlp(x))
        return x, logits


class SEGA(nn.Module):
    """The recurrent state module: ``forward(obs_tokens, state, reset) -> (enhanced, state, gate)``.

    Args of ``forward``:
        obs_tokens: (B, To, in_dim) observation features of the current window.
        state: (B, N, d) the previous state, or None (every row starts an episode).
        reset: (B,) bool, rows that start an episode (their previous state is ``S_0``, gate 1).

    Returns ``enhanced`` (B, To, d), the new ``state`` (B, N, d) and the ``gate`` (B, N, 1).
    """

    def __init__(self, in_dim: int, cfg: SegaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.initial_state = nn.Parameter(torch.randn(1, cfg.n_tokens, d) * 0.02)
        self.state_pos = nn.Parameter(torch.zeros(1, cfg.n_tokens, d))
        self.obs_proj = nn.Sequential(nn.Linear(in_dim, d), nn.LayerNorm(d))
        self.state_blocks = nn.ModuleList(SegaBlock(cfg) for _ in range(cfg.depth))
        self.obs_blocks = nn.ModuleList(SegaBlock(cfg) for _ in range(cfg.depth))
        self.norm_state, self.norm_obs = nn.LayerNorm(d), nn.LayerNorm(d)

    @property
    def out_dim(self) -> int:
        return self.cfg.dim

    def forward(
        self, obs_tokens: torch.Tensor, state: torch.Tensor | None = None, reset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b = obs_tokens.shape[0]
        s0 = self.initial_state.expand(b, -1, -1)
        if state is None:
            prev, fresh = s0, torch.ones(b, dtype=torch.bool, device=obs_tokens.device)
        else:
            if state.shape != s0.shape:
                raise ValueError(f"SEGA state must be {tuple(s0.shape)}, got {tuple(state.shape)}")
            fresh = (
                torch.zeros(b, dtype=torch.bool, device=obs_tokens.device)
                if reset is None
                else reset.to(device=obs_tokens.device, dtype=torch.bool)
            )
            prev = torch.where(fresh[:, None, None], s0, state.to(s0.dtype))
        pos = self.state_pos
        xs, xo = prev + pos, self.obs_proj(obs_tokens)
        logit_sum = torch.zeros(b, self.cfg.n_tokens, device=obs_tokens.device, dtype=xs.dtype)
        for sb, ob in zip(self.state_blocks, self.obs_blocks):
            new_s, logits = sb(xs, xo)  # both streams read the previous layer's outputs
            new_o, _ = ob(xo, xs)
            xs, xo = new_s, new_o
            logit_sum = logit_sum + logits.mean(dim=(1, 3))  # mean over heads and obs tokens
        cand, enhanced = self.norm_state(xs), self.norm_obs(xo)
        gate = torch.sigmoid(logit_sum / self.cfg.depth)[..., None]
        gate = torch.where(fresh[:, None, None], torch.ones_like(gate), gate)
        new_state = gate * cand + (1 - gate) * (prev + pos) - pos
        return enhanced, new_state, gate


__all__ = ["SEGA", "Attention", "SegaBlock", "SegaConfig"]


def _check() -> None:  # pragma: no cover  (a quick shape check when run as a script)
    m = SEGA(12, SegaConfig(n_tokens=4, dim=16, depth=2, n_heads=2))
    e, s, g = m(torch.randn(3, 2, 12))
    assert e.shape == (3, 2, 16) and s.shape == (3, 4, 16) and bool((g == 1).all())
    e, s2, g = m(torch.randn(3, 2, 12), s, torch.tensor([True, False, False]))
    assert bool((g[0] == 1).all()) and F.mse_loss(s2, s) > 0


if __name__ == "__main__":  # pragma: no cover
    _check()
