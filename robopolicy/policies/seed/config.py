"""Typed config of SeedPolicy: Diffusion Policy's, plus ``sega``, ``reset_interval`` and ``bptt_chunks``.

A preset (``configs/policies/seed_*.yaml``) names ``policy: seed`` and has Diffusion Policy's
parts (``backbone``, ``obs_encoder``, ``noise``, ``inference``) and::

    sega: {n_tokens: 60, dim: 256, depth: 6, n_heads: 8, mlp_ratio: 4.0, dropout: 0.0}
    reset_interval: 40
    bptt_chunks: 1

Training draws windows with the sequential stream sampler: each batch row follows one episode in
order, ``Ta`` steps per batch, so the state a row carries is that episode's.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from robopolicy.data.windows import DataWindows, SamplerKind
from robopolicy.nn.sega import SegaConfig
from robopolicy.policies.diffusion.config import DiffusionConfig


@dataclasses.dataclass(frozen=True)
class SeedConfig(DiffusionConfig):
    """SeedPolicy (Diffusion Policy + SEGA)."""

    preset_name: ClassVar[str] = "seed"
    parts: ClassVar[dict[str, type]] = {**DiffusionConfig.parts, "sega": SegaConfig}

    sega: SegaConfig = dataclasses.field(default_factory=SegaConfig)
    """The recurrent state module's size."""
    reset_interval: int = 40
    """Training: a batch row's state is reset to the learned initial state after this many chunks
    (and at every episode start), bounding back-propagated history and exposing the model to
    fresh starts. The reference uses 40 chunks of Ta = 6 steps."""
    bptt_chunks: int = 1
    """Training: chunks a batch row holds and back-propagates through (K). With the reference's 1
    the loss of a chunk depends on the carried (detached) state but not on the state it writes,
    so the state stream's last layer and the gate get no gradient: what is written is never
    trained. With K > 1 the loss of chunk k reaches the writes of chunks < k of the same row. A
    step then costs K chunks per row (``batch_size`` rows, ``batch_size * K`` samples)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reset_interval < 1:
            raise ValueError(f"reset_interval must be >= 1, got {self.reset_interval}")
        if self.bptt_chunks < 1:
            raise ValueError(f"bptt_chunks must be >= 1, got {self.bptt_chunks}")
        if self.train_max_delay:
            raise ValueError("SeedPolicy does not support train_max_delay (its condition is recurrent)")

    def data_windows(self) -> DataWindows:
        """Diffusion Policy's windows, drawn as sequential streams with stride Ta, ``bptt_chunks``
        consecutive windows per item."""
        return DataWindows.from_timing(
            self.obs_spec.keys,
            self.horizon,
            self.n_obs_steps,
            self.n_action_steps,
            sampler=SamplerKind.SEQUENTIAL,
            stream_chunks=self.bptt_chunks,
        )
