"""SeedPolicy (arXiv 2603.05117): Diffusion Policy whose condition comes through SEGA.

Per call, the ``To`` observation frames are encoded as in Diffusion Policy (``(B, To, D)``), then
SEGA (:mod:`robopolicy.nn.sega`) updates a recurrent state of ``N`` tokens from them and returns
the *enhanced* observation tokens ``(B, To, d)``: the backbone's condition. The U-Net flattens
them into its global condition, the transformer takes them as condition tokens, as for
Diffusion Policy's own features.

**Inference.** One state per environment (``env_ids``), advanced once per policy call (once per
chunk), cleared by :meth:`SeedPolicy.reset`. A row whose environment has no state (its first
call, or after a reset) starts from the learned initial state with the gate at 1. The denoiser
view is *stateful*: ``view.encode(obs, env_ids)`` advances those environments' states, so RTI and
RTC (which pass the env ids) run on it; without env ids every row starts fresh and nothing is
stored.

**Training.** Windows come as sequential streams (``SeedConfig.data_windows``): row ``j`` of
consecutive batches holds consecutive chunks of one episode. The state of each row is carried to
the next batch, detached, and reset at an episode's start and every ``reset_interval`` chunks.
With ``bptt_chunks = K`` (default 1, the reference's truncated back-propagation of one chunk) a
row holds K consecutive chunks and the loss back-propagates through the state across them; with
K = 1 the state's write path (the state stream's last layer, the gate) gets no gradient. The carry is part of the training checkpoint
(:meth:`training_carry`), so a resumed run continues bit-exactly. Validation (eval mode) and
random windows carry nothing: every row starts fresh. All SEGA parameters, the learned initial
state included, are in the optimizer (the reference code leaves them out).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from robopolicy.nn.sega import SEGA
from robopolicy.policies.diffusion.model import DiffusionPolicy
from robopolicy.policies.seed.config import SeedConfig
from robopolicy.policy import register_policy
from robopolicy.types import ActionSpec, ObservationSpec


@register_policy("seed")
class SeedPolicy(DiffusionPolicy):
    """Diffusion Policy + SEGA (module docstring)."""

    config_class = SeedConfig
    config: SeedConfig
    stateful = True

    def _build_condition(self, feature_dim: int) -> int:
        self.sega = SEGA(feature_dim, self.config.sega)
        self._env_state: dict[int, torch.Tensor] = {}
        self._carry: dict[str, torch.Tensor] = {}
        self.last_gate: torch.Tensor | None = None
        """(B, N, 1) gate of the latest call (inspection and tests)."""
        return self.sega.out_dim

    # ------------------------------------------------------------------ inference
    def reset(self, env_ids=None) -> None:
        """Forget the state of ``env_ids`` (all if None): their next call starts an episode."""
        if env_ids is None:
            self._env_state.clear()
        else:
            for e in env_ids:
                self._env_state.pop(int(e), None)

    def state_of(self, env_id: int) -> torch.Tensor | None:
        """The carried state (N, d) of an environment, None before its first call."""
        return self._env_state.get(int(env_id))

    def condition(self, obs: Mapping[str, Any], env_ids: list[int] | None = None, engine: bool = False) -> torch.Tensor:
        feats = self.encode_obs(obs, engine=engine)
        if env_ids is None:  # no environments named: a fresh start, nothing kept
            enhanced, _, gate = self.sega(feats)
            self.last_gate = gate
            return enhanced
        if len(env_ids) != feats.shape[0]:
            raise ValueError(f"{len(env_ids)} env_ids for a batch of {feats.shape[0]}")
        if len(set(env_ids)) != len(env_ids):
            raise ValueError(f"env_ids must be distinct within a call (each has one state), got {env_ids}")
        d = self.config.sega
        prev = [self._env_state.get(int(e)) for e in env_ids]
        fresh = torch.tensor([p is None for p in prev], device=feats.device)
        state = torch.stack(
            [p if p is not None else torch.zeros(d.n_tokens, d.dim, device=feats.device) for p in prev]
        ).to(feats.dtype)
        enhanced, new, gate = self.sega(feats, state, fresh)
        for i, e in enumerate(env_ids):
            self._env_state[int(e)] = new[i].detach()
        self.last_gate = gate
        return enhanced

    def _predict(self, obs, *, env_ids, generator, num_samples, options):
        out = super()._predict(obs, env_ids=env_ids, generator=generator, num_samples=num_samples, options=options)
        if self.last_gate is not None:
            out.info["gate_mean"] = self.last_gate.detach().mean(dim=(1, 2)).cpu()
        return out

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Diffusion Policy's loss. A batch of ``K``-chunk items (``chunk_valid`` (B, K), every
        field (B, K, ...): ``bptt_chunks > 1``) is flattened to B*K rows, one backbone pass, the
        chunks past an episode's end left out of the loss; the state runs through the K chunks
        of each row with its gradient (:meth:`train_condition`)."""
        valid = batch.get("chunk_valid")
        if valid is None:
            return super().compute_loss(batch)
        valid = torch.as_tensor(valid, device=self.device).to(torch.bool)
        if valid.ndim != 2:
            raise ValueError(f"chunk_valid must be (B, K), got shape {tuple(valid.shape)}")
        b, k = valid.shape
        obs = {key: self._flat_chunks(key, v, b, k) for key, v in batch["obs"].items()}
        flat = {
            "obs": obs,
            "action": self._flat_chunks("action", batch["action"], b, k),
            "row_valid": valid.reshape(b * k),
            "chunks": k,
        }
        if batch.get("episode_start") is not None:
            flat["episode_start"] = batch["episode_start"]
        return super().compute_loss(flat)

    @staticmethod
    def _flat_chunks(key: str, v: Any, b: int, k: int) -> Any:
        if tuple(v.shape[:2]) != (b, k):
            raise ValueError(
                f"batch[{key!r}] must lead with (B, K) = ({b}, {k}) like chunk_valid, got {tuple(v.shape)}"
            )
        return v.reshape(b * k, *v.shape[2:])

    def train_condition(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """The condition of a training batch. Rows of ``chunks`` consecutive windows (row-major,
        B*K) run the state through their chunks with its gradient; in training mode, with
        ``episode_start`` (sequential streams), the state is carried detached to the next batch
        and reset at episode starts and every ``reset_interval`` chunks. Random windows and
        validation start every row fresh."""
        feats = self.encode_obs(batch["obs"])
        k = int(batch.get("chunks", 1))
        b = feats.shape[0] // k
        start = batch.get("episode_start")
        carried = start is not None and self.training
        if not carried and k == 1:  # random windows or validation: no history
            enhanced, _, gate = self.sega(feats)
            self.last_gate = gate
            return enhanced
        feats = feats.reshape(b, k, *feats.shape[1:])
        state, age = None, torch.zeros(b, dtype=torch.int64, device=feats.device)
        first = torch.ones(b, dtype=torch.bool, device=feats.device)
        if carried:
            first = torch.as_tensor(start, device=feats.device).reshape(b).to(torch.bool)
            carry = self._carry
            if carry and carry["state"].shape[0] == b:
                state = carry["state"].to(feats.device)
                age = carry["age"].to(feats.device) + 1
            else:  # the first batch (or a changed batch size): every row starts fresh
                first = torch.ones_like(first)
        outs = []
        for j in range(k):
            if j:
                age = age + 1
            reset = (first if j == 0 else torch.zeros_like(first)) | (age >= self.config.reset_interval)
            age = torch.where(reset, torch.zeros_like(age), age)
            enhanced, state, gate = self.sega(feats[:, j], state, reset)
            outs.append(enhanced)
        if carried:
            self._carry = {"state": state.detach(), "age": age}
        self.last_gate = gate
        return torch.stack(outs, dim=1).reshape(b * k, *outs[0].shape[1:])

    def training_carry(self) -> dict[str, torch.Tensor]:
        return dict(self._carry)

    def load_training_carry(self, carry: Mapping[str, torch.Tensor]) -> None:
        self._carry = {k: v.to(self.device) for k, v in carry.items()} if carry else {}

    def optim_groups(self, weight_decay: float, obs_encoder_weight_decay: float = 1e-6) -> list[dict]:
        """Diffusion Policy's groups plus every SEGA parameter (initial state and position
        embedding included): the backbone's weight decay for its matrices, none for the rest."""
        groups = super().optim_groups(weight_decay, obs_encoder_weight_decay)
        decay, no_decay = [], []
        for name, p in self.sega.named_parameters():
            (decay if p.ndim >= 2 and name.endswith("weight") else no_decay).append(p)
        groups.append({"params": decay, "weight_decay": weight_decay})
        groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny_configs(cls, obs_spec: ObservationSpec, action_spec: ActionSpec) -> dict[str, SeedConfig]:
        """Very small configs (both backbones) for contract tests."""
        from robopolicy.nn.sega import SegaConfig

        sega = SegaConfig(n_tokens=4, dim=16, depth=1, n_heads=2)
        return {
            name: SeedConfig(
                **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, sega=sega, reset_interval=4
            )
            for name, cfg in DiffusionPolicy.tiny_configs(obs_spec, action_spec).items()
        }


__all__ = ["SeedPolicy"]
