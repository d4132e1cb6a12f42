"""Diffusion Policy: DDPM-trained noise prediction over action chunks, U-Net or transformer.

Shapes (B batch, To obs steps, H horizon, Da action dim, N samples, D obs feature per step)::

    batch["obs"][key]  (B, To, ...) env units       batch["action"]  (B, H, Da) env units
    obs features       (B, To, D)                    U-Net cond: (B, To * D); transformer: To tokens
    predict(obs).actions -> (B, H, Da) or (B, N, H, Da) env units

Training uses diffusers' DDPM scheduler (noise schedule, ``add_noise``, v targets). Every
sampler (``ddpm`` ancestral, ``ddim``, ``euler``, ``heun``, ``dpmpp_2m``) runs on
:meth:`DiffusionPolicy.denoiser_view` through ``sample_chunk``; DDPM and DDIM there equal
diffusers' schedulers for the same noise (tested), so RTI, GPC and the controller see exactly
what the policy samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from robopolicy.data.normalizer import Normalizer
from robopolicy.diffusion.samplers import STOCHASTIC, InferenceDefaults, ddpm_step_noise, sample_chunk
from robopolicy.diffusion.schedulers import make_ddpm
from robopolicy.diffusion.view import PredictionType, VPDenoiserView, repeat_cond
from robopolicy.inference.engine import GraphedSampler
from robopolicy.inference.output import PolicyOutput
from robopolicy.nn.configs import BackboneConfig, ObsEncoderConfig, TransformerConfig, UnetConfig
from robopolicy.nn.obs_encoders import MultiModalObsEncoder
from robopolicy.nn.transformer import TransformerForDiffusion
from robopolicy.nn.unet1d import ConditionalUnet1D
from robopolicy.policies.diffusion.config import DiffusionConfig, DiffusionInferenceOptions, Sampler
from robopolicy.policy import Generators, Policy, register_policy, row_generators
from robopolicy.types import ActionSpec, ObservationSpec


class FlatCondUnet1D(ConditionalUnet1D):
    """U-Net taking per-step obs tokens (B, To, D) and flattening them to a global cond."""

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(x, timesteps, rearrange(cond, "b t d -> b (t d)"))


BackboneBuilder = Callable[[DiffusionConfig, int], nn.Module]
BACKBONES: dict[type[BackboneConfig], BackboneBuilder] = {}
"""Diffusion Policy's builder of each backbone config type (a kind of ``robopolicy.nn.configs``)."""


def register_backbone(config_type: type[BackboneConfig]) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """``@register_backbone(UnetConfig)`` on ``build(config, obs_feature_dim) -> module``; the
    module is called as ``module(x (B, H, Da), t (B,), cond (B, To, D)) -> (B, H, Da)``."""

    def wrap(fn: BackboneBuilder) -> BackboneBuilder:
        BACKBONES[config_type] = fn
        return fn

    return wrap


@register_backbone(UnetConfig)
def _build_unet(cfg: DiffusionConfig, feat: int) -> nn.Module:
    b: UnetConfig = cfg.backbone
    return FlatCondUnet1D(
        cfg.action_spec.dim, feat * cfg.n_obs_steps, b.down_dims, b.kernel_size, b.n_groups, b.diffusion_step_embed_dim
    )


@register_backbone(TransformerConfig)
def _build_transformer(cfg: DiffusionConfig, feat: int) -> nn.Module:
    b: TransformerConfig = cfg.backbone
    return TransformerForDiffusion(
        cfg.action_spec.dim,
        feat,
        cfg.horizon,
        cfg.n_obs_steps,
        b.n_layer,
        b.n_head,
        b.n_emb,
        b.p_drop_emb,
        b.p_drop_attn,
        b.causal_attn,
        b.token_time,
    )


@register_policy("diffusion")
class DiffusionPolicy(Policy):
    """Diffusion Policy with a U-Net or transformer backbone (``config.backbone.kind``)."""

    config_class = DiffusionConfig
    options_class = DiffusionInferenceOptions
    config: DiffusionConfig

    def __init__(self, config: DiffusionConfig, normalizer: Normalizer | None = None) -> None:
        super().__init__(config, normalizer)
        self.obs_encoder = MultiModalObsEncoder.from_config(config.obs_spec, config.obs_encoder)
        build = BACKBONES.get(type(config.backbone))
        if build is None:
            built = sorted(t.kind for t in BACKBONES)
            raise ValueError(
                f"Diffusion Policy has no builder for backbone kind {config.backbone.kind!r} (it builds {built})"
            )
        self.model = build(config, self._build_condition(self.obs_encoder.out_dim))
        self.noise_scheduler = make_ddpm(config.noise)

    stateful = False
    """True for a subclass whose condition carries per-environment state (its view is stateful)."""

    def _build_condition(self, feature_dim: int) -> int:
        """Build what turns per-step obs features into the backbone's condition tokens; returns
        their width. Diffusion Policy uses the features as they are (SeedPolicy adds SEGA)."""
        return feature_dim

    def condition(self, obs: Mapping[str, Any], env_ids: list[int] | None = None, engine: bool = False) -> torch.Tensor:
        """The backbone's condition (B, To, D') for env-unit obs, at inference (the view's
        ``encode``). ``env_ids``: the rows' environments, for a stateful condition."""
        return self.encode_obs(obs, engine=engine)

    def train_condition(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The condition of a training batch (``compute_loss``)."""
        return self.encode_obs(batch["obs"])

    # ------------------------------------------------------------------ encoding
    def encode_obs(self, obs: Mapping[str, Any], engine: bool = False) -> torch.Tensor:
        """Env-unit obs ``{key: (B, To, ...)}`` -> per-step features (B, To, D).

        Exactly To frames per key (training windows and the view's ``encode`` too): more are
        refused rather than trimmed, since which ones the caller meant is ambiguous. ``engine``:
        run the cameras' encoders through the inference engine (inference only, never the loss)."""
        self.config.obs_spec.validate_batch(obs, self.config.n_obs_steps)
        return self.obs_encoder(self.normalize_obs(obs), run=self.module_engine if engine else None)

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        for key in ("obs", "action"):
            if key not in batch:
                raise KeyError(f"batch is missing {key!r}")
        action = self.normalizer.normalize("action", self.check_action(batch["action"]))
        cond = self.train_condition(batch)
        if cond.shape[0] != action.shape[0]:
            raise ValueError(f"obs batch size {cond.shape[0]} != action batch size {action.shape[0]}")
        noise = torch.randn_like(action)
        t = torch.randint(0, self.config.noise.num_train_timesteps, (action.shape[0],), device=action.device)
        noisy = self.noise_scheduler.add_noise(action, noise, t)
        prefix = self._delay_prefix(action.shape[0], action.device)
        if prefix is None:
            pred = self.model(noisy, t, cond)
        else:  # training-time action conditioning: the prefix clean, at timestep 0, out of the loss
            clean = self.noise_scheduler.alphas_cumprod[0].to(action.device).sqrt() * action
            noisy = torch.where(prefix[..., None], clean, noisy)
            pred = self.model(noisy, torch.where(prefix, 0, t[:, None]), cond)
        ptype = self.config.noise.prediction_type
        if ptype is PredictionType.EPSILON:
            target = noise
        elif ptype is PredictionType.SAMPLE:
            target = action
        else:
            target = self.noise_scheduler.get_velocity(action, noise, t)
        row_valid = batch.get("row_valid")  # (B,) bool: rows in the loss (e.g. chunks past an episode's end out)
        if prefix is None and row_valid is None:
            loss = F.mse_loss(pred, target)
            return loss, {"loss": float(loss.detach())}
        keep = torch.ones_like(pred)
        if prefix is not None:
            keep = keep * (~prefix)[..., None].to(pred.dtype)
        if row_valid is not None:
            keep = keep * torch.as_tensor(row_valid, device=pred.device).reshape(-1, 1, 1).to(pred.dtype)
        loss = (F.mse_loss(pred, target, reduction="none") * keep).sum() / keep.sum().clamp_min(1.0)
        info = {"loss": float(loss.detach())}
        if prefix is not None:
            info["prefix_frac"] = float(prefix.float().mean())
        return loss, info

    def _delay_prefix(self, b: int, device: torch.device) -> torch.Tensor | None:
        """(B, H) bool: the clean prefix of each row (``train_max_delay``), None when off."""
        dmax = self.config.train_max_delay
        if dmax <= 0:
            return None
        d = torch.randint(0, dmax + 1, (b, 1), device=device)
        pos = torch.arange(self.config.horizon, device=device)[None, :] - (self.config.n_obs_steps - 1)
        return (pos >= 0) & (pos < d)

    # ------------------------------------------------------------------ inference
    def denoiser_view(self) -> VPDenoiserView:
        """The contract view (built once, stateless): encode / denoise / sigmas / from_action / to_action."""
        view = self.__dict__.get("_view")
        if view is None:
            view = VPDenoiserView(
                self._engine_step,
                self._engine_encode,
                self.unnormalize_action,
                (self.config.horizon, self.config.action_spec.dim),
                self.config.noise,
                from_action_fn=lambda a: self.normalizer.normalize("action", a),
                snap_fn=self.snap_discrete,
                token_sigma=self.config.train_max_delay > 0,
                stateful=self.stateful,
            )
            self.__dict__["_view"] = view
        return view

    def _engine_encode(self, obs: Mapping[str, Any], env_ids: list[int] | None = None) -> Any:
        """The view's ``encode``: the condition, prepared by the network's inference engine (its
        per-chunk work, e.g. the U-Net's FiLM of the condition, is done here once)."""
        engine = self.network_engine(self.model)
        self.__dict__["_step_engine"] = engine
        return engine.prepare(self.condition(obs, env_ids, engine=True))

    def _engine_step(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any) -> torch.Tensor:
        """The view's network call: the engine that prepared ``cond``."""
        engine = self.__dict__.get("_step_engine") or self.network_engine(self.model)
        return engine(x, t, cond)

    def unnormalize_action(self, x0: torch.Tensor) -> torch.Tensor:
        """Normalized (..., Da) -> env units (affine; no snapping)."""
        return self.normalizer.unnormalize("action", x0)

    @property
    def x0_clip(self) -> float | None:
        """Clamp of each x0 estimate (Diffusion Policy's ``clip_sample``), for every sampler."""
        return 1.0 if self.config.noise.clip_sample else None

    def _predict(
        self,
        obs: Mapping[str, Any],
        *,
        env_ids: list[int],
        generator: Generators,
        num_samples: int,
        options: DiffusionInferenceOptions,
    ) -> PolicyOutput:
        """Chunks in env units through the denoiser view: (B, H, Da), or (B, N, H, Da).

        ``options.noise``: initial standard normal noise (B, N, H, Da) or (B, H, Da). Without it
        row b's noise is drawn sample by sample from ``generator`` (one, or a list of B: then row
        b uses only ``generator[b]``, initial and DDPM step noise alike, so a batch equals single
        calls with the same seeds). Every sampler, DDPM and DDIM included, runs on the view.
        """
        cfg = self.config
        method = Sampler(options.sampler if options.sampler is not None else cfg.inference.sampler)
        steps = int(options.num_inference_steps or cfg.inference.num_inference_steps)
        view = self.denoiser_view()
        cond = view.encode(obs, env_ids=env_ids)
        b, n = cond.shape[0], num_samples
        gens = row_generators(generator, b, n)
        x = self.initial_noise(options.noise, gens, b, n)
        cond = repeat_cond(cond, n)
        if self.engine_config.cuda_graph and x.is_cuda and torch.is_tensor(cond):
            x0 = self._graphed_chunk(view, cond, x, method, steps, gens)
        else:
            x0 = sample_chunk(
                view, cond, noise=x, method=method.value, steps=steps, generator=gens, x0_clip=self.x0_clip
            )
        actions = view.to_action(x0, snap=True)
        nfe = 2 * steps - 1 if method is Sampler.HEUN else steps
        if n > 1:
            actions = rearrange(actions, "(b n) h d -> b n h d", b=b)
        return PolicyOutput(actions, {"nfe": torch.full((b,), n * nfe, dtype=torch.int64)})

    def _graphed_chunk(
        self, view: VPDenoiserView, cond: torch.Tensor, noise: torch.Tensor, method: Sampler, steps: int, gens
    ) -> torch.Tensor:
        """``sample_chunk`` replayed from a CUDA graph (``engine.cuda_graph``); DDPM's step noise
        (and Euler ancestral's) is drawn ahead from the same generators in the same order, so the
        chunk is the same."""
        inputs = {"cond": cond, "noise": noise}
        if method in STOCHASTIC:
            inputs["step_noise"] = ddpm_step_noise(view.sigmas(steps), tuple(noise.shape), gens, noise.device)

        def run(cond: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor | None = None) -> torch.Tensor:
            return sample_chunk(
                view, cond, noise=noise, method=method.value, steps=steps, x0_clip=self.x0_clip, step_noise=step_noise
            )

        graphs = self.__dict__.setdefault("_graphs", GraphedSampler())
        engine = self.network_engine(self.model)
        key = (id(engine), tuple(cond.shape), tuple(noise.shape), method.value, steps)
        return graphs.run(key, run, inputs)

    def optim_groups(self, weight_decay: float, obs_encoder_weight_decay: float = 1e-6) -> list[dict]:
        """AdamW parameter groups as in DP: the transformer decays only Linear / attention
        weights; the U-Net decays everything; the obs encoder is its own group."""
        if isinstance(self.model, TransformerForDiffusion):
            groups = self.model.optim_groups(weight_decay)
        else:
            groups = [{"params": list(self.model.parameters()), "weight_decay": weight_decay}]
        enc = list(self.obs_encoder.parameters())
        if enc:
            groups.append({"params": enc, "weight_decay": obs_encoder_weight_decay})
        return groups

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny_configs(cls, obs_spec: ObservationSpec, action_spec: ActionSpec) -> dict[str, DiffusionConfig]:
        """Very small configs (both backbones) for contract tests; seconds on CPU."""
        common = dict(
            obs_spec=obs_spec,
            action_spec=action_spec,
            horizon=8,
            n_obs_steps=2,
            n_action_steps=4,
            obs_encoder=ObsEncoderConfig.tiny(obs_spec),
            inference=InferenceDefaults(Sampler.DDIM, num_inference_steps=4),
        )
        return {
            "unet": DiffusionConfig(
                backbone=UnetConfig(down_dims=(16, 32), kernel_size=3, diffusion_step_embed_dim=16), **common
            ),
            "transformer": DiffusionConfig(
                backbone=TransformerConfig(n_layer=1, n_head=2, n_emb=16, p_drop_attn=0.0), **common
            ),
        }
