"""BESO: score-based EDM diffusion over action chunks, goal-conditioned with classifier-free guidance.

Shapes (B batch, To obs steps, H horizon, Da action dim, D obs feature per step, G = 1 goal)::

    batch["obs"][key] (B, To, ...)   batch["goal.<key>"] (B, 1, ...)   batch["action"] (B, H, Da)
    cond tokens       (B, G + To, D): [goal or the learned null goal, obs_1 .. obs_To]
    predict(obs).actions -> (B, H, Da), or (B, N, H, Da); obs may carry "goal.<key>" (B, 1, ...)

Training (EDM, variance exploding on the normalized chunk a): sigma from the truncated
log-logistic density, x = a + sigma n, loss ``|F(c_in x, c_noise, cond) - (a - c_skip x) / c_out|^2``
averaged over every element. Each sample's goal is replaced by the learned null goal with
probability ``goal.mask_prob`` (classifier-free guidance training).

Inference: the native EDM denoiser view (:class:`~robopolicy.diffusion.view.EDMDenoiserView`),
any shared sampler (default: 3 steps of the first-order DPM-Solver), guidance
``D = D_u + w (D_c - D_u)`` with both passes batched into one network call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from robopolicy.data.normalizer import Normalizer
from robopolicy.diffusion.samplers import SamplerMethod, sample_chunk
from robopolicy.diffusion.view import EDMDenoiserView, repeat_cond
from robopolicy.inference.output import PolicyOutput
from robopolicy.nn.configs import ObsEncoderConfig
from robopolicy.nn.obs_encoders import MultiModalObsEncoder
from robopolicy.nn.score_gpt import ScoreGPT
from robopolicy.policies.beso.config import (
    GOAL_PREFIX,
    BesoConfig,
    BesoInferenceDefaults,
    BesoInferenceOptions,
    EDMConfig,
    ScoreNetConfig,
)
from robopolicy.policy import Generators, Policy, register_policy, row_generators
from robopolicy.types import ActionSpec, ObservationSpec


def sample_log_logistic(
    n: int, loc: float, scale: float, sigma_min: float, sigma_max: float, device: Any = "cpu"
) -> torch.Tensor:
    """(n,) sigmas with ln(sigma) ~ Logistic(loc, scale) truncated to [sigma_min, sigma_max]
    (inverse CDF of a uniform drawn between the CDF values of the bounds)."""

    def cdf(s: float) -> float:
        return 1.0 / (1.0 + math.exp(-(math.log(s) - loc) / scale))

    lo, hi = cdf(sigma_min), cdf(sigma_max)
    u = torch.rand(n, device=device, dtype=torch.float64) * (hi - lo) + lo
    return (loc + scale * torch.logit(u)).exp().clamp(sigma_min, sigma_max)


@register_policy("beso")
class BesoPolicy(Policy):
    """BESO (score-based diffusion, goal-conditioned, guidance) on the shared chunk interface."""

    config_class = BesoConfig
    options_class = BesoInferenceOptions
    config: BesoConfig

    def __init__(self, config: BesoConfig, normalizer: Normalizer | None = None) -> None:
        super().__init__(config, normalizer)
        self.obs_encoder = MultiModalObsEncoder.from_config(config.obs_spec, config.obs_encoder)
        d = self.obs_encoder.out_dim
        self.n_goal = 1 if config.goal.enabled else 0
        n = config.net
        self.model = ScoreGPT(
            config.action_spec.dim,
            d,
            config.horizon,
            config.n_obs_steps,
            self.n_goal,
            n.n_layer,
            n.n_head,
            n.d_model,
            n.p_drop_emb,
            n.p_drop_attn,
            n.causal,
        )
        self.null_goal = nn.Parameter(torch.zeros(self.n_goal, d))
        """Stands for "no goal" (classifier-free guidance's unconditional pass)."""

    # ------------------------------------------------------------------ encoding
    def goal_obs(self, obs: Mapping[str, Any]) -> dict[str, Any] | None:
        """The goal frames ``{key: (B, 1, ...)}`` read from ``obs["goal.<key>"]``; None when the
        input has none (goal-free). A partial goal, a goal of the wrong shape or a non-finite
        goal is refused, naming the key."""
        if not self.n_goal:
            return None
        names = self.config.goal_keys
        present = [k for k in names if k in obs]
        if not present:
            return None
        missing = [k for k in names if k not in obs]
        if missing:
            raise KeyError(f"the goal is incomplete: it has {present} but not {missing} (a goal needs every key)")
        goal = {k[len(GOAL_PREFIX) :]: obs[k] for k in names}
        spec = self.config.obs_spec
        try:
            spec.validate_batch(goal, 1)
            for f in spec.fields:
                self._check_obs_values(f.key, f.kind, goal[f.key])
        except (KeyError, ValueError) as e:
            raise type(e)(f"goal: {e.args[0] if e.args else e}") from None
        return goal

    def encode_cond(self, obs: Mapping[str, Any], goal_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cond tokens (B, G + To, D): the goal's features (or the null goal) then the obs's.
        ``goal_mask`` (B,) bool: True rows use the null goal (guidance dropout, unconditional)."""
        self.config.obs_spec.validate_batch(obs, self.config.n_obs_steps)
        feats = self.obs_encoder(self.normalize_obs(obs))
        if not self.n_goal:
            return feats
        b = feats.shape[0]
        null = self.null_goal[None].expand(b, -1, -1)
        goal = self.goal_obs(obs)
        if goal is None:
            return torch.cat([null, feats], dim=1)
        g = self.obs_encoder(self.normalize_obs(goal))
        if goal_mask is not None:
            g = torch.where(goal_mask.reshape(b, 1, 1), null, g)
        return torch.cat([g, feats], dim=1)

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        for key in ("obs", "action"):
            if key not in batch:
                raise KeyError(f"batch is missing {key!r}")
        action = self.normalizer.normalize("action", self.check_action(batch["action"]))
        b = action.shape[0]
        obs = dict(batch["obs"])
        for k in self.config.goal_keys:
            if k in batch:
                obs[k] = batch[k]
        mask = None
        if self.n_goal and self.training and self.config.goal.mask_prob > 0:
            mask = torch.rand(b, device=action.device) < self.config.goal.mask_prob
        cond = self.encode_cond(obs, mask)
        if cond.shape[0] != b:
            raise ValueError(f"obs batch size {cond.shape[0]} != action batch size {b}")
        e = self.config.edm
        sigma = sample_log_logistic(b, e.loc, e.density_scale, e.sigma_min, e.sigma_max, action.device)
        view = self.denoiser_view()
        c_skip, c_out, c_in, c_noise = (c.to(action.dtype) for c in view.precondition(sigma))
        col = lambda v: v.reshape(b, 1, 1)  # noqa: E731
        x = action + col(sigma.to(action.dtype)) * torch.randn_like(action)
        out = self.model(x * col(c_in), c_noise, cond)
        target = (action - col(c_skip) * x) / col(c_out)
        loss = F.mse_loss(out, target)
        return loss, {"loss": float(loss.detach())}

    # ------------------------------------------------------------------ inference
    def denoiser_view(self) -> EDMDenoiserView:
        """The native EDM view (built once): encode / denoise / sigmas / from_action / to_action."""
        view = self.__dict__.get("_view")
        if view is None:
            e = self.config.edm
            view = EDMDenoiserView(
                self._engine_step,
                self._engine_encode,
                lambda x: self.normalizer.unnormalize("action", x),
                (self.config.horizon, self.config.action_spec.dim),
                sigma_data=e.sigma_data,
                sigma_min=e.sigma_min,
                sigma_max=e.sigma_max,
                schedule=e.schedule,
                rho=e.rho,
                from_action_fn=lambda a: self.normalizer.normalize("action", a),
                snap_fn=self.snap_discrete,
            )
            self.__dict__["_view"] = view
        return view

    def _engine_encode(self, obs: Mapping[str, Any], guidance_weight: float | None = None) -> dict[str, torch.Tensor]:
        """The view's cond: ``{"cond": tokens}``, plus ``"uncond"`` tokens and per-row ``"weight"``
        (B,) when a goal is given and the guidance weight is neither 0 nor 1."""
        w = self.config.inference.guidance_weight if guidance_weight is None else float(guidance_weight)
        has_goal = self.goal_obs(obs) is not None
        if has_goal and w == 0.0:  # the goal-free policy: drop the goal
            obs = {k: v for k, v in obs.items() if not k.startswith(GOAL_PREFIX)}
        tokens = self.encode_cond(obs)
        out = {"cond": tokens}
        if has_goal and w not in (0.0, 1.0):
            out["uncond"] = torch.cat(
                [self.null_goal[None].expand(tokens.shape[0], -1, -1), tokens[:, self.n_goal :]], 1
            )
            out["weight"] = torch.full((tokens.shape[0],), w, device=tokens.device)
        return out

    def _engine_step(
        self, x: torch.Tensor, c_noise: torch.Tensor | float, cond: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        """F with guidance: the conditional and unconditional passes run as one batch of 2B."""
        engine = self.network_engine(self.model)
        if "uncond" not in cond:
            return engine(x, c_noise, cond["cond"])
        b = x.shape[0]
        c2 = torch.cat([c_noise, c_noise]) if torch.is_tensor(c_noise) and c_noise.ndim else c_noise
        out = engine(torch.cat([x, x]), c2, torch.cat([cond["cond"], cond["uncond"]]))
        f_c, f_u = out[:b], out[b:]
        return f_u + cond["weight"].to(out.dtype).reshape(b, *([1] * (x.ndim - 1))) * (f_c - f_u)

    @property
    def x0_clip(self) -> float | None:
        """RTI and the controller clamp their results as the policy does (none during sampling)."""
        return None

    def _predict(
        self,
        obs: Mapping[str, Any],
        *,
        env_ids: list[int],
        generator: Generators,
        num_samples: int,
        options: BesoInferenceOptions,
    ) -> PolicyOutput:
        """Chunks in env units through the view; ``obs["goal.<key>"]`` (B, 1, ...) conditions on a goal."""
        cfg = self.config
        method = SamplerMethod(options.sampler if options.sampler is not None else cfg.inference.sampler)
        steps = int(options.num_inference_steps or cfg.inference.num_inference_steps)
        view = self.denoiser_view()
        cond = self._engine_encode(obs, options.guidance_weight)
        b, n = cond["cond"].shape[0], num_samples
        gens = row_generators(generator, b, n)
        noise = self.initial_noise(options.noise, gens, b, n)
        cond = repeat_cond(cond, n)
        x0 = sample_chunk(view, cond, noise=noise, method=method.value, steps=steps, generator=gens)
        if cfg.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        actions = view.to_action(x0, snap=True)
        calls = 2 * steps - 1 if method is SamplerMethod.HEUN else steps
        nfe = calls * (2 if "uncond" in cond else 1)
        if n > 1:
            actions = rearrange(actions, "(b n) h d -> b n h d", b=b)
        return PolicyOutput(actions, {"nfe": torch.full((b,), n * nfe, dtype=torch.int64)})

    def optim_groups(self, weight_decay: float, obs_encoder_weight_decay: float = 1e-6) -> list[dict]:
        """AdamW groups: the transformer as minGPT (decay Linear weights only), the null goal
        undecayed, the obs encoder its own group."""
        groups = self.model.optim_groups(weight_decay)
        groups.append({"params": [self.null_goal], "weight_decay": 0.0})
        enc = list(self.obs_encoder.parameters())
        if enc:
            groups.append({"params": enc, "weight_decay": obs_encoder_weight_decay})
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny_configs(cls, obs_spec: ObservationSpec, action_spec: ActionSpec) -> dict[str, BesoConfig]:
        """Very small configs for contract tests (seconds on CPU)."""
        common = dict(
            obs_spec=obs_spec,
            action_spec=action_spec,
            horizon=8,
            n_obs_steps=2,
            n_action_steps=4,
            net=ScoreNetConfig(d_model=16, n_layer=1, n_head=2, p_drop_attn=0.0),
            obs_encoder=ObsEncoderConfig.tiny(obs_spec),
            edm=EDMConfig(),
            inference=BesoInferenceDefaults(num_inference_steps=3),
        )
        return {"default": BesoConfig(**common)}
