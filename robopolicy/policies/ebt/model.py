"""EBT-Policy: an energy-based transformer over action chunks; inference is gradient descent.

Shapes (B batch, To obs steps, H horizon, Da action dim, d token width, N samples, R = B * N)::

    batch["obs"][key] (B, To, ...) env units      batch["action"] (B, H, Da) env units
    obs features (B, To, D) --Linear + learned pos + causal blocks--> obs tokens c (B, To, d)
    candidate y (R, H, Da), normalized action units --energy net(y, c)--> E (R,)
    predict(obs) -> PolicyOutput(actions (B, H, Da) | (B, N, H, Da) env units, info)

One descent step, the same code in training and at inference (notes 2.2)::

    y_hat  = RMSNorm_gamma(stopgrad(y_k))  [+ sigma_k eps, training only]
    y_look = y_hat + mu v_k                              (Nesterov look-ahead)
    E = E_theta(y_look, c);  g = dE/dy_look              (create_graph in training)
    alpha_k = alpha rho exp(E) / tau                     (rho ~ U[1/s, s] in training, 1 at inference)
    v_{k+1} = mu v_k - alpha_k g;  y_{k+1} = y_hat + v_{k+1}

Training: y_0 ~ N(0, I), K = K0 + U{0..R+1} steps, loss = mean_k MSE(y_{k+1}, a*). Inference:
y_0 from the per-row generators, ``num_inference_steps`` clean steps (EBT-2), or the dynamic mode
(per row: step until ||g|| <= grad_tol, then one final step; at least 2, at most ``max_steps``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from robopolicy.data.normalizer import ACTION_KEY, Normalizer
from robopolicy.inference.output import PolicyOutput
from robopolicy.nn.configs import ObsEncoderConfig
from robopolicy.nn.obs_encoders import MultiModalObsEncoder
from robopolicy.policies.ebt.config import (
    CandidateNorm,
    EBTConfig,
    EBTDescentConfig,
    EBTInferenceDefaults,
    EBTInferenceOptions,
    EBTNetworkConfig,
    MemoryMask,
)
from robopolicy.policy import Generators, Policy, register_policy, row_generators
from robopolicy.types import ActionSpec, ObservationSpec


# ---------------------------------------------------------------------- building blocks
def _gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


def sincos_positions(n: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos embedding (n, dim): ``[sin(p w_i), cos(p w_i)]``, ``w_i = 10000^(-2i/dim)``."""
    half = (dim + 1) // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    angle = torch.arange(n, dtype=torch.float64)[:, None] * freq[None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)[:, :dim].float()


class Attention(nn.Module):
    """Multi-head attention with qkv bias and QK-norm (RMSNorm over each head's features).

    Self-attention: ``forward(x (B, n, d)) -> (B, n, d)``. Cross-attention: ``memory_kv(memory
    (B, m, d))`` once (keys and values of the memory, reused across descent steps), then
    ``forward(x, kv, mask)``; ``mask (n, m)`` bool, True where token i may read j.
    """

    def __init__(self, d: int, n_heads: int, attn_dropout: float, proj_dropout: float, cross: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d // n_heads
        if cross:
            self.q = nn.Linear(d, d)
            self.kv = nn.Linear(d, 2 * d)
        else:
            self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.proj = nn.Linear(d, d)
        self.attn_dropout = attn_dropout
        self.proj_drop = nn.Dropout(proj_dropout)

    def _heads(self, x: torch.Tensor, parts: int) -> torch.Tensor:
        b, n, _ = x.shape  # (B, n, parts*d) -> (parts, B, heads, n, head_dim)
        return x.view(b, n, parts, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values (B, heads, m, head_dim) of the memory tokens (B, m, d)."""
        k, v = self._heads(self.kv(memory), 2)
        return self.k_norm(k), v

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if kv is None:
            q, k, v = self._heads(self.qkv(x), 3)
            k = self.k_norm(k)
        else:
            q, (k, v) = self._heads(self.q(x), 1)[0], kv
        drop = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(self.q_norm(q), k, v, attn_mask=mask, dropout_p=drop)
        b, _, n, _ = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, -1)))


class Mlp(nn.Sequential):
    """Linear -> tanh-GELU -> Linear, with dropout after each projection."""

    def __init__(self, d_in: int, hidden: int, d_out: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(d_in, hidden), _gelu(), nn.Dropout(dropout), nn.Linear(hidden, d_out))
        if dropout > 0:
            self.append(nn.Dropout(dropout))


class ObsBlock(nn.Module):
    """Pre-norm block: RMSNorm -> causal self-attention -> residual; RMSNorm -> MLP -> residual."""

    def __init__(self, cfg: EBTNetworkConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.RMSNorm(d, eps=1e-6)
        self.attn = Attention(d, cfg.n_heads, cfg.attn_dropout, cfg.proj_dropout, cross=False)
        self.norm2 = nn.RMSNorm(d, eps=1e-6)
        self.mlp = Mlp(d, _hidden(cfg), d, cfg.proj_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class EnergyBlock(nn.Module):
    """RMSNorm -> self-attention over the action tokens (no mask); RMSNorm -> cross-attention to
    the obs tokens; RMSNorm -> MLP; each with a residual."""

    def __init__(self, cfg: EBTNetworkConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.norm1 = nn.RMSNorm(d, eps=1e-6)
        self.self_attn = Attention(d, cfg.n_heads, cfg.attn_dropout, cfg.proj_dropout, cross=False)
        self.norm2 = nn.RMSNorm(d, eps=1e-6)
        self.cross_attn = Attention(d, cfg.n_heads, cfg.attn_dropout, cfg.proj_dropout, cross=True)
        self.norm3 = nn.RMSNorm(d, eps=1e-6)
        self.mlp = Mlp(d, _hidden(cfg), d, cfg.proj_dropout)

    def forward(
        self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), kv, memory_mask)
        return x + self.mlp(self.norm3(x))


def _hidden(cfg: EBTNetworkConfig) -> int:
    return max(1, round(cfg.d_model * cfg.mlp_ratio))


class ObsTemporalEncoder(nn.Module):
    """Per-step features (B, To, D) -> obs tokens (B, To, d): Linear + learned positions, causal
    pre-norm blocks, final RMSNorm."""

    def __init__(self, in_dim: int, n_obs_steps: int, cfg: EBTNetworkConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.inp = nn.Linear(in_dim, d)
        self.pos_emb = nn.Parameter(torch.randn(1, n_obs_steps, d) * 0.02)
        self.blocks = nn.ModuleList(ObsBlock(cfg) for _ in range(cfg.obs_layers))
        self.norm = nn.RMSNorm(d, eps=1e-6)
        causal = torch.ones(n_obs_steps, n_obs_steps, dtype=torch.bool).tril()
        self.register_buffer("mask", causal, persistent=False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.inp(feats) + self.pos_emb
        for block in self.blocks:
            x = block(x, self.mask)
        return self.norm(x)


Memory = tuple[tuple[torch.Tensor, torch.Tensor], ...]
"""Per energy block, the cross-attention keys and values of the obs tokens (``EnergyNet.prepare``)."""


class EnergyNet(nn.Module):
    """``E(y (R, H, Da), memory) -> (R,)``, ``memory = prepare(obs tokens (R, To, d))``: each action
    step embedded by a small MLP plus fixed sin-cos positions over H, energy blocks, final RMSNorm
    -> MLP -> Da outputs per token, and E = the mean over all H x Da outputs."""

    def __init__(self, action_dim: int, horizon: int, n_obs_steps: int, cfg: EBTNetworkConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.embed = nn.Sequential(
            nn.Linear(action_dim, d), nn.LayerNorm(d), _gelu(), nn.Dropout(cfg.proj_dropout), nn.Linear(d, d), _gelu()
        )
        self.register_buffer("pos", sincos_positions(horizon, d)[None], persistent=False)
        self.blocks = nn.ModuleList(EnergyBlock(cfg) for _ in range(cfg.energy_layers))
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.head = Mlp(d, d, action_dim, cfg.proj_dropout)
        mask = None
        if cfg.memory_mask is MemoryMask.TIME_CAUSAL:  # action row t reads obs steps j <= t
            mask = torch.arange(n_obs_steps)[None, :] <= torch.arange(horizon)[:, None]
        self.register_buffer("memory_mask", mask, persistent=False)

    def prepare(self, cond: torch.Tensor) -> Memory:
        """The obs tokens' keys and values for every block: computed once, reused by every step."""
        return tuple(block.cross_attn.memory_kv(cond) for block in self.blocks)

    def forward(self, y: torch.Tensor, memory: Memory) -> torch.Tensor:
        x = self.embed(y) + self.pos
        for block, kv in zip(self.blocks, memory, strict=True):
            x = block(x, kv, self.memory_mask)
        return self.head(self.norm(x)).mean(dim=(1, 2))


class CandidateRMSNorm(nn.Module):
    """``RMSNorm_gamma(y)``: y (R, H, Da) divided by its RMS over each chunk (``chunk``) or each
    action step (``step``), times a learnable gain gamma (Da,) initialised to 1."""

    def __init__(self, action_dim: int, scope: CandidateNorm, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(action_dim))
        self.dims = (1, 2) if scope is CandidateNorm.CHUNK else (2,)
        self.eps = eps

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.rsqrt(y.square().mean(dim=self.dims, keepdim=True) + self.eps) * self.weight


def _init_linear(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases (the reference's init of its transformers)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@contextlib.contextmanager
def twice_differentiable_attention():
    """Attention through the math kernel: the fused CPU / CUDA kernels have no double backward,
    which training (``create_graph=True``) needs."""
    with sdpa_kernel([SDPBackend.MATH]):
        yield


# ---------------------------------------------------------------------- the policy
@register_policy("ebt")
class EBTPolicy(Policy):
    """EBT-Policy: an energy over (obs, action chunk), minimised by a few gradient steps."""

    config_class = EBTConfig
    options_class = EBTInferenceOptions
    config: EBTConfig

    def __init__(self, config: EBTConfig, normalizer: Normalizer | None = None) -> None:
        super().__init__(config, normalizer)
        net = config.network
        self.obs_encoder = MultiModalObsEncoder.from_config(config.obs_spec, config.obs_encoder)
        self.obs_net = ObsTemporalEncoder(self.obs_encoder.out_dim, config.n_obs_steps, net)
        self.energy_net = EnergyNet(config.action_spec.dim, config.horizon, config.n_obs_steps, net)
        self.obs_net.apply(_init_linear)
        self.energy_net.apply(_init_linear)
        d = config.descent
        self.candidate_norm = CandidateRMSNorm(config.action_spec.dim, d.candidate_norm, d.candidate_norm_eps)

    def inference_mode(self) -> Any:
        """Inference is gradient descent on the energy: autograd stays on."""
        return torch.enable_grad()

    # ------------------------------------------------------------------ networks
    def encode_obs(self, obs: Mapping[str, Any], engine: bool = False) -> torch.Tensor:
        """Env-unit obs ``{key: (B, To, ...)}`` -> obs tokens (B, To, d). Exactly To frames per key.
        ``engine``: run the cameras' encoders through the inference engine (inference only)."""
        self.config.obs_spec.validate_batch(obs, self.config.n_obs_steps)
        feats = self.obs_encoder(self.normalize_obs(obs), run=self.module_engine if engine else None)
        return self.obs_net(feats)

    @torch.no_grad()
    def energy(self, obs: Mapping[str, Any], action: Any) -> torch.Tensor:
        """E of env-unit chunks ``action`` (B, H, Da) given ``obs`` -> (B,): the energy of the
        RMS-normalised candidate, as ``predict`` reports for its output (``info["energy"]``)."""
        self.check_obs(obs)
        with torch.inference_mode(False):
            y = self.normalizer.normalize(ACTION_KEY, self.check_action(action))
            cond = self.encode_obs(obs)
            if cond.shape[0] != y.shape[0]:
                raise ValueError(f"obs batch size {cond.shape[0]} != action batch size {y.shape[0]}")
            return self.energy_net(self.candidate_norm(y), self.energy_net.prepare(cond))

    def _step_size(self, energy: torch.Tensor, rho: torch.Tensor | None) -> torch.Tensor:
        """``alpha rho exp(E) / tau`` per row, (R, 1, 1) (E clamped first if ``energy_clamp``)."""
        d = self.config.descent
        if d.energy_clamp is not None:
            energy = energy.clamp(max=d.energy_clamp)
        alpha = d.step_size * torch.exp(energy) / d.temperature
        if rho is not None:
            alpha = alpha * rho
        return alpha[:, None, None]

    def _step(
        self,
        y: torch.Tensor,
        v: torch.Tensor,
        memory: Memory,
        *,
        sigma: float,
        rho: torch.Tensor | None,
        create_graph: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One descent step (module docstring) -> ``(y_next, v_next, E, g)``, E (R,) and g (R, H, Da).

        ``create_graph`` (training): the loss differentiates through g (second order), alpha_k and
        gamma into the weights. Otherwise only the look-ahead candidate requires grad: no graph
        reaches the weights and every output is detached."""
        d = self.config.descent
        with torch.set_grad_enabled(create_graph):
            y_hat = self.candidate_norm(y.detach())
            if sigma > 0:
                y_hat = y_hat + sigma * torch.randn_like(y_hat)
            if d.detach_velocity or not create_graph:
                v = v.detach()
            look = y_hat + d.momentum * v
        if not create_graph:
            look = look.detach()
        if not look.requires_grad:
            look.requires_grad_(True)
        with torch.enable_grad():
            energy = self.energy_net(look, memory)
            (grad,) = torch.autograd.grad(energy.sum(), look, create_graph=create_graph)
        if not create_graph:
            energy = energy.detach()
        with torch.set_grad_enabled(create_graph):
            v_next = d.momentum * v - self._step_size(energy, rho) * grad
            return y_hat + v_next, v_next, energy, grad

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over K descent steps of MSE(y_{k+1}, a*) from y_0 ~ N(0, I) (notes 2.3).

        In train mode with grad enabled: ``create_graph=True`` and a differentiable loss. In eval
        mode (validation), or when the caller is under ``no_grad`` / ``inference_mode``: the same
        randomised descent (as the reference validates) without a second-order graph, and a
        detached loss. Metrics: ``loss``, ``mse_first`` / ``mse_final`` (after the first / last
        step), ``energy_initial`` / ``energy_final`` (mean E at the first / last step), ``descent_steps``."""
        for key in ("obs", "action"):
            if key not in batch:
                raise KeyError(f"batch is missing {key!r}")
        graph = self.training and torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        d = self.config.descent
        with torch.inference_mode(False), torch.enable_grad():
            target = self.normalizer.normalize(ACTION_KEY, self.check_action(batch["action"]))
            with torch.set_grad_enabled(graph):
                cond = self.encode_obs(batch["obs"])
                memory = self.energy_net.prepare(cond)
            if cond.shape[0] != target.shape[0]:
                raise ValueError(f"obs batch size {cond.shape[0]} != action batch size {target.shape[0]}")
            num_steps = d.train_steps + int(torch.randint(0, d.random_extra_steps + 2, ()))
            y = torch.randn_like(target)
            v = torch.zeros_like(target)
            mses, energies = [], []
            with twice_differentiable_attention() if graph else contextlib.nullcontext():
                for k in range(num_steps):
                    rho = None
                    if d.step_size_scale != 1.0:
                        rho = torch.rand(target.shape[0], device=target.device)
                        rho = 1.0 / d.step_size_scale + rho * (d.step_size_scale - 1.0 / d.step_size_scale)
                    sigma = d.langevin_sigma(k, num_steps)
                    y, v, energy, _ = self._step(y, v, memory, sigma=sigma, rho=rho, create_graph=graph)
                    mses.append(F.mse_loss(y, target))
                    energies.append(energy)
            loss = torch.stack(mses).mean()
        metrics = {
            "loss": float(loss.detach()),
            "mse_first": float(mses[0].detach()),
            "mse_final": float(mses[-1].detach()),
            "energy_initial": float(energies[0].detach().mean()),
            "energy_final": float(energies[-1].detach().mean()),
            "descent_steps": float(num_steps),
        }
        return (loss if graph else loss.detach()), metrics

    # ------------------------------------------------------------------ inference
    def _predict(
        self,
        obs: Mapping[str, Any],
        *,
        env_ids: list[int],
        generator: Generators,
        num_samples: int,
        options: EBTInferenceOptions,
    ) -> PolicyOutput:
        """Chunks in env units (B, H, Da), or (B, N, H, Da), and the descent's extras in ``info``:

        * ``energy`` (B,) / (B, N): E of the returned chunk (``EBTPolicy.energy``; one more forward);
        * ``energies`` (B, S+1) / (B, N, S+1): E at each step's look-ahead point, then the final E
          at index ``steps``; S is the most steps any row took, later entries of a row are NaN;
        * ``steps`` (B,) / (B, N) int64: descent steps taken; ``grad_norm``: ||g|| of the last step;
        * ``nfe`` (B,) int64: network evaluations, summed over samples: 2 per step (a forward and a
          backward through the energy net) plus 1 for the final energy.

        Row b's initial candidate comes only from ``generator[b]`` (a list) and rows never interact
        (in dynamic mode a row that stopped stays as it is), so a batch equals single calls.
        """
        cfg = self.config.inference
        dynamic = cfg.dynamic if options.dynamic is None else bool(options.dynamic)
        if dynamic:
            cap = options.max_steps or cfg.max_steps
            tol = cfg.grad_tol if options.grad_tol is None else float(options.grad_tol)
        else:
            cap, tol = options.num_inference_steps or cfg.num_inference_steps, -math.inf
        with torch.inference_mode(False):
            with torch.no_grad():
                cond = self.encode_obs(obs, engine=True)
                b, n = cond.shape[0], num_samples
                memory = self.energy_net.prepare(cond.repeat_interleave(n, dim=0) if n > 1 else cond)
            y = self.initial_noise(options.noise, row_generators(generator, b, n), b, n)
            y, info = self._descend(y, memory, cap, tol)
            actions = self.snap_discrete(self.normalizer.unnormalize(ACTION_KEY, y))
        nfe = (2 * info["steps"] + 1).view(b, n).sum(dim=1)
        if n > 1:
            actions = actions.view(b, n, *actions.shape[1:])
            info = {k: v.view(b, n, *v.shape[1:]) for k, v in info.items()}
        return PolicyOutput(actions, {**info, "nfe": nfe})

    def _descend(
        self, y: torch.Tensor, memory: Memory, cap: int, tol: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clean descent of every row from ``y`` (R, H, Da): at most ``cap`` steps; a row whose
        gradient norm falls to ``tol`` or below takes one final step and stops (-inf: never, i.e.
        exactly ``cap`` steps). Only the rows still moving are evaluated."""
        rows, dev = y.shape[0], y.device
        v = torch.zeros_like(y)
        steps = torch.zeros(rows, dtype=torch.int64, device=dev)
        energies = torch.full((rows, cap + 1), math.nan, device=dev)
        grad_norm = torch.full((rows,), math.nan, device=dev)
        final = torch.zeros(rows, dtype=torch.bool, device=dev)
        active = torch.ones(rows, dtype=torch.bool, device=dev)
        for k in range(cap):
            idx = None if bool(active.all()) else active.nonzero()[:, 0]
            if idx is not None and idx.numel() == 0:
                break
            if idx is None:
                y_k, v_k, e_k, g_k = self._step(y, v, memory, sigma=0.0, rho=None, create_graph=False)
            else:
                sub = tuple((keys[idx], values[idx]) for keys, values in memory)
                y_k, v_k, e_k, g_k = self._step(y[idx], v[idx], sub, sigma=0.0, rho=None, create_graph=False)
            norm_k = g_k.flatten(1).norm(dim=1)
            at = slice(None) if idx is None else idx
            y[at], v[at], energies[at, k], grad_norm[at] = y_k, v_k, e_k, norm_k
            steps[at] += 1
            done = final[at] | (steps[at] >= cap)  # a row in its final step, or at the cap, stops
            final[at] |= norm_k <= tol
            active[at] = ~done
        with torch.no_grad():
            final_energy = self.energy_net(self.candidate_norm(y), memory)
        energies[torch.arange(rows, device=dev), steps] = final_energy
        energies = energies[:, : int(steps.max()) + 1]
        return y, {"energy": final_energy, "energies": energies, "steps": steps, "grad_norm": grad_norm}

    # ------------------------------------------------------------------ training helpers
    def optim_groups(self, weight_decay: float, obs_encoder_weight_decay: float = 1e-6) -> list[dict]:
        """AdamW groups: decay on the transformers' Linear weights; none on norms, biases, the
        learned obs positions and the candidate gain; the obs encoder (cameras) its own group."""
        decay, no_decay, encoder = [], [], []
        linear_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("obs_encoder."):
                encoder.append(p)
            elif id(p) in linear_weights:
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if encoder:
            groups.append({"params": encoder, "weight_decay": obs_encoder_weight_decay})
        return groups

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny_configs(cls, obs_spec: ObservationSpec, action_spec: ActionSpec) -> dict[str, EBTConfig]:
        """Very small configs (fixed 2-step and dynamic inference) for contract tests; seconds on CPU."""
        common = dict(
            obs_spec=obs_spec,
            action_spec=action_spec,
            horizon=8,
            n_obs_steps=2,
            n_action_steps=4,
            network=EBTNetworkConfig(d_model=16, n_heads=2, obs_layers=1, energy_layers=1, attn_dropout=0.0),
            obs_encoder=ObsEncoderConfig.tiny(obs_spec),
            descent=EBTDescentConfig(step_size=100.0, train_steps=2, random_extra_steps=1),
        )
        return {
            "paper": EBTConfig(inference=EBTInferenceDefaults(num_inference_steps=2), **common),
            "dynamic": EBTConfig(inference=EBTInferenceDefaults(dynamic=True, max_steps=6, grad_tol=0.05), **common),
        }
