"""Typed training configuration: one frozen dataclass filled from ``configs/train/*.yaml``.

A train YAML holds the trainer fields plus the policy's own fields (``policy_preset``: a
``configs/policies/*.yaml`` file, merged under the inline ``policy: {...}`` mapping part by part,
so ``policy.backbone.down_dims=[32,64]`` changes that field alone; a part whose ``kind`` changes
is replaced whole). The policy's ``obs_spec`` / ``action_spec`` are never written by hand: they
come from the dataset.
Every unknown key is a ``ValueError`` naming it; ``dotted.key=value`` overrides apply first.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from robopolicy.config import apply_overrides, from_dict, load_yaml, merge_dicts, resolve_path, to_dict

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("no", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class EMAConfig:
    """diffusion_policy's EMA: ``decay = clamp(1 - (1 + step/inv_gamma)^-power, 0, max_value)``."""

    enabled: bool = True
    """Keep an exponential moving average of the weights; it is what checkpoints deploy."""
    power: float = 0.75
    """Warm-up exponent: 0.75 reaches 0.999 at ~10k steps, 2/3 at ~1M (diffusion_policy: 0.75)."""
    inv_gamma: float = 1.0
    """Inverse multiplicative factor of the step in the warm-up formula."""
    max_value: float = 0.9999
    """Upper bound of the decay."""

    def __post_init__(self) -> None:
        if self.power <= 0:
            raise ValueError(f"ema.power must be > 0, got {self.power}")
        if self.inv_gamma <= 0:
            raise ValueError(f"ema.inv_gamma must be > 0, got {self.inv_gamma}")
        if not 0.0 <= self.max_value < 1.0:
            raise ValueError(f"ema.max_value must be in [0, 1), got {self.max_value}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything the trainer needs besides the data path and the run directory."""

    policy_name: str = "diffusion"
    """Registered policy name (``robopolicy.policy.get_policy_class``)."""
    policy_preset: str | None = None
    """Path to a ``configs/policies/*.yaml`` file of policy-specific fields (relative paths are
    tried against the working directory, then the repository root)."""
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Inline policy-specific fields; they override the preset's, part by part."""
    obs_keys: tuple[str, ...] = ("state",)
    """Store fields the policy reads, in order (e.g. ``["eef_pos", "image.agentview"]``)."""
    action_key: str = "action"
    """Store field holding the actions."""
    cache_images: bool = False
    """Decode image fields once into RAM (fast epochs; needs the memory)."""
    batch_size: int = 256
    """Samples per optimizer step (per process)."""
    num_steps: int = 5000
    """Optimizer steps to train for (the cosine schedule reaches 0 here)."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 1e-6
    """AdamW weight decay (a policy's ``optim_groups`` may split it further)."""
    betas: tuple[float, float] = (0.95, 0.999)
    """AdamW betas (diffusion_policy CNN: 0.95, 0.999; transformer: 0.9, 0.95)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 500
    """Linear warm-up steps before the cosine decay."""
    grad_clip_norm: float | None = 1.0
    """Clip the global gradient norm to this value (None or 0: no clipping)."""
    ema: EMAConfig = dataclasses.field(default_factory=EMAConfig)
    """EMA of the weights (see :class:`EMAConfig`)."""
    val_ratio: float = 0.02
    """Fraction of episodes held out for the validation loss."""
    val_batches: int = 4
    """Validation batches evaluated at every checkpoint (0: no validation loss)."""
    seed: int = 42
    """Seeds the model init, the data order and the noise RNG."""
    num_workers: int = 0
    """DataLoader worker processes."""
    checkpoint_every: int = 1000
    """Save a checkpoint every N steps (and always at the end)."""
    keep_checkpoints: int = 3
    """How many step checkpoints to keep on disk (the best one is always kept)."""
    eval_every: int = 0
    """Run simulation rollouts every N steps (0: off). The final step is always evaluated if > 0."""
    eval_suite: str | None = None
    """Benchmark suite YAML (``sim/*.yaml``) for periodic evaluation."""
    eval_episodes: int = 20
    """Episodes per periodic evaluation."""
    eval_workers: int = 2
    """Simulator worker processes for periodic evaluation."""
    eval_policy_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Extra kwargs for ``predict_action_chunk`` during evaluation (e.g. ``num_inference_steps``)."""
    log_every: int = 50
    """Write metrics every N steps."""
    device: str = "auto"
    """``auto`` (CUDA if present), ``cpu`` or ``cuda``."""
    mixed_precision: str = "no"
    """``no``, ``bf16`` or ``fp16`` (GPU; handled by accelerate)."""
    num_threads: int | None = None
    """torch CPU threads (None: leave torch's default)."""
    time_limit_minutes: float | None = None
    """End this session after this much training time: the step finishes, a checkpoint is saved
    and ``--resume`` continues the same run (the LR schedule still spans ``num_steps``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs_keys", tuple(self.obs_keys))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if not self.obs_keys:
            raise ValueError("obs_keys must name at least one store field")
        for name in ("batch_size", "num_steps", "checkpoint_every", "log_every", "eval_episodes", "eval_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "num_workers", "val_batches", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.time_limit_minutes is not None and self.time_limit_minutes <= 0:
            raise ValueError(f"time_limit_minutes must be > 0, got {self.time_limit_minutes}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        if not 0.0 <= self.val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in [0, 1), got {self.val_ratio}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if self.eval_every > 0 and not self.eval_suite:
            raise ValueError("eval_every > 0 needs eval_suite (a sim/*.yaml file)")

    def policy_fields(self) -> dict[str, Any]:
        """The policy-specific fields: the preset file's, overridden by the inline ``policy`` (nested
        parts merge key by key; a part whose ``kind`` changes is replaced whole)."""
        fields: dict[str, Any] = {}
        if self.policy_preset:
            preset = load_yaml(resolve_path(self.policy_preset))
            name = preset.pop("policy", self.policy_name)  # a preset may name its policy
            if name != self.policy_name:
                raise ValueError(f"{self.policy_preset} is a preset for policy {name!r}, not {self.policy_name!r}")
            fields.update(preset)
        fields = merge_dicts(fields, self.policy)
        for reserved in ("obs_spec", "action_spec"):
            if reserved in fields:
                raise ValueError(f"policy fields must not set {reserved!r}: it is built from the dataset")
        return fields

    def to_dict(self) -> dict[str, Any]:
        return {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}


def load_train_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a train YAML (or start from the defaults), apply ``dotted.key=value`` overrides."""
    data = load_yaml(resolve_path(path)) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    return from_dict(TrainConfig, data)


def save_train_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config (policy preset already merged in) as YAML."""
    data = config.to_dict()
    data["policy"] = config.policy_fields()
    data["policy_preset"] = None
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
