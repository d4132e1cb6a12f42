"""Transformer denoiser over action tokens with cross-attention to time + observation tokens.

Shapes::

    x          (B, H, Da)      noisy action chunk, one token per step
    timesteps  (B,) or ()      diffusion step (float allowed); (B, H) per token with ``token_time``
    cond       (B, To, D)      per-step observation features
    output     (B, H, Da)

Memory = ``[time token, obs token 1 .. obs token To]`` (plus learned position embeddings),
mixed by a small MLP. The trunk is a pre-LN ``nn.TransformerDecoder``. With ``causal_attn``,
action token t attends to action tokens <= t, to the time token, and to obs token j iff t >= j.

Per-token noise levels (``token_time``, training-time action conditioning, Black et al. arXiv
2512.05964): each action token also gets ``Linear(sinusoid(t_i))`` added to its embedding, so a
chunk can mix clean tokens (the executed prefix, t = 0) with noisy ones. The memory's time token
then carries the largest t of the row (the noisy postfix's level); with one t for the whole row
the network is an ordinary DP-T plus one learned per-token time term.
"""

from __future__ import annotations

import torch
from torch import nn

from robopolicy.nn.embeddings import SinusoidalPosEmb, broadcast_timesteps


class TransformerForDiffusion(nn.Module):
    """Decoder-only-over-actions transformer: ``forward(x, timesteps, cond) -> eps_hat``."""

    def __init__(
        self,
        input_dim: int,
        cond_dim: int,
        horizon: int,
        n_obs_steps: int,
        n_layer: int = 8,
        n_head: int = 4,
        n_emb: int = 256,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.3,
        causal_attn: bool = True,
        token_time: bool = False,
    ) -> None:
        super().__init__()
        if n_emb % n_head:
            raise ValueError(f"n_emb ({n_emb}) must be a multiple of n_head ({n_head})")
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, horizon, n_emb))
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.token_time = bool(token_time)
        self.token_time_emb = (
            nn.Sequential(SinusoidalPosEmb(n_emb), nn.Linear(n_emb, n_emb)) if self.token_time else None
        )
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb)
        self.cond_pos_emb = nn.Parameter(torch.zeros(1, 1 + n_obs_steps, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.cond_encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
        layer = nn.TransformerDecoderLayer(
            d_model=n_emb,
            nhead=n_head,
            dim_feedforward=4 * n_emb,
            dropout=p_drop_attn,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers=n_layer)
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, input_dim)
        if causal_attn:
            t = torch.arange(horizon)[:, None]
            self.register_buffer("tgt_mask", _additive(t >= torch.arange(horizon)[None, :]), persistent=False)
            s = torch.arange(1 + n_obs_steps)[None, :]
            self.register_buffer("memory_mask", _additive(t >= s - 1), persistent=False)  # s=0 is the time token
        else:
            self.tgt_mask = None
            self.memory_mask = None
        self.apply(_init_weights)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.cond_pos_emb, std=0.02)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        b, h, _ = x.shape
        if h != self.horizon or cond.shape[1] != self.n_obs_steps:
            raise ValueError(
                f"expected horizon {self.horizon} and {self.n_obs_steps} obs steps, "
                f"got x {tuple(x.shape)} and cond {tuple(cond.shape)}"
            )
        tokens = self.input_emb(x) + self.pos_emb
        if torch.is_tensor(timesteps) and timesteps.ndim == 2:
            if not self.token_time:
                raise ValueError(
                    "per-token timesteps (B, H) need a transformer built with token_time=True "
                    "(trained with training-time action conditioning)"
                )
            if tuple(timesteps.shape) != (b, h):
                raise ValueError(f"per-token timesteps must have shape {(b, h)}, got {tuple(timesteps.shape)}")
            t_tok = timesteps.to(device=x.device, dtype=torch.float32)
            t = t_tok.amax(dim=1)
        else:
            t = broadcast_timesteps(timesteps, b, x.device)
            t_tok = t[:, None].expand(b, h) if self.token_time else None
        if self.token_time_emb is not None:
            tokens = tokens + self.token_time_emb(t_tok.reshape(-1)).reshape(b, h, -1)  # type: ignore[union-attr]
        tokens = self.drop(tokens)
        memory = torch.cat([self.time_emb(t)[:, None], self.cond_obs_emb(cond)], dim=1)
        memory = self.cond_encoder(self.drop(memory + self.cond_pos_emb))
        # is-causal stated, not detected: torch's detection compares the mask on the device and
        # reads the result back (a host sync, which also breaks CUDA graph capture)
        out = self.decoder(
            tokens,
            memory,
            tgt_mask=self.tgt_mask,
            memory_mask=self.memory_mask,
            tgt_is_causal=self.tgt_mask is not None,
            memory_is_causal=False,
        )
        return self.head(self.ln_f(out))

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on Linear / attention projection weights only; none on biases,
        LayerNorm and the position embeddings."""
        decay: set[str] = set()
        for mname, module in self.named_modules():
            for pname, _ in module.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                if pname.endswith("weight") and isinstance(module, (nn.Linear, nn.MultiheadAttention)):
                    decay.add(full)
        params = dict(self.named_parameters())
        return [
            {"params": [params[n] for n in sorted(decay)], "weight_decay": weight_decay},
            {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
        ]


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean 'may attend' matrix -> additive float mask (0 where allowed, -inf elsewhere)."""
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.MultiheadAttention):
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if getattr(module, name, None) is not None:
                nn.init.normal_(getattr(module, name), mean=0.0, std=0.02)
        for name in ("in_proj_bias", "bias_k", "bias_v"):
            if getattr(module, name, None) is not None:
                nn.init.zeros_(getattr(module, name))
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
