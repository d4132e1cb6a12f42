"""BESO's score transformer (DiffusionGPT), for action chunks.

One causal minGPT-style stack (pre-LN, GELU MLP of 4 d) over the token sequence::

    [sigma] [g_1 .. g_G] [s_1 .. s_To] [a_1 .. a_H]        length 1 + G + To + H

* ``sigma``: ``Linear(1 -> d)`` of c_noise = ln(sigma) / 4 (no position);
* goals and observations share one ``Linear(D -> d)`` (D the per-step feature size), actions
  have their own ``Linear(Da -> d)``;
* a learned position table: goal k at position k, observation i and action i share position
  ``G + i`` (action i is the chunk's step i, the first one aligned with the oldest observation);
* causal attention: action j sees sigma, the goals, every observation and the actions before it;
* a final LayerNorm, then ``Linear(d -> Da)`` at the action tokens: F of shape (B, H, Da).

BESO interleaves ``s_i, a_i`` pairs and predicts one action per observation (single-step
control). Here a chunk of H actions follows all To observations: every observation precedes
the decision, so every action may see all of them (see ``robopolicy/policies/beso/README.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalBlock(nn.Module):
    """minGPT block: ``x + attn(ln1(x))``, ``x + mlp(ln2(x))``; causal multi-head self-attention
    (``scaled_dot_product_attention``; exports to ONNX), MLP 4 d with GELU, dropout on the
    attention weights and on both residual branches."""

    def __init__(self, d_model: int, n_head: int, p_drop: float, causal: bool = True) -> None:
        super().__init__()
        self.n_head, self.p_drop, self.causal = n_head, p_drop, causal
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(p_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        p = self.p_drop if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class ScoreGPT(nn.Module):
    """F_theta(x_in (B, H, Da), c_noise (B,), cond (B, G + To, D)) -> (B, H, Da)."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        horizon: int,
        n_obs_steps: int,
        n_goal: int = 1,
        n_layer: int = 4,
        n_head: int = 4,
        d_model: int = 128,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.05,
        causal: bool = True,
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.horizon, self.n_obs_steps, self.n_goal = horizon, n_obs_steps, n_goal
        self.sigma_emb = nn.Linear(1, d_model)
        self.cond_emb = nn.Linear(cond_dim, d_model)
        self.action_emb = nn.Linear(action_dim, d_model)
        self.pos_emb = nn.Parameter(torch.zeros(1, n_goal + max(n_obs_steps, horizon), d_model))
        self.drop = nn.Dropout(p_drop_emb)
        self.blocks = nn.ModuleList(CausalBlock(d_model, n_head, p_drop_attn, causal) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, action_dim)
        pos = torch.cat([torch.arange(n_goal), n_goal + torch.arange(n_obs_steps), n_goal + torch.arange(horizon)])
        self.register_buffer("positions", pos, persistent=False)
        self.apply(self._init)
        nn.init.normal_(self.pos_emb, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        c = torch.as_tensor(c_noise, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(b, 1)
        sig = self.sigma_emb(c)[:, None]  # (B, 1, d)
        body = torch.cat([self.cond_emb(cond), self.action_emb(x)], dim=1)  # (B, G + To + H, d)
        body = body + self.pos_emb[:, self.positions]
        h = self.drop(torch.cat([sig, body], dim=1))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h[:, -self.horizon :]))

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups as minGPT: decay Linear weights only (not biases, norms, embeddings)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            is_linear_weight = name.endswith("weight") and p.ndim == 2 and "norm" not in name
            (decay if is_linear_weight else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
