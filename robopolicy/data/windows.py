"""What training windows a policy needs, declared by its config (:class:`DataWindows`).

A window is anchored at a step ``t`` of an episode of length ``L``: ``t`` is the newest
observation (index ``To-1`` of the chunk-timing diagram). Every field reads frames at offsets
from ``t``, clipped into the episode (edge replication, as diffusion_policy pads)::

    obs key k       frames t + o  for o in obs_offsets[k]     e.g. (-1, 0) for To = 2
    action          frames t + o  for o in action_offsets     e.g. (-1, 0, ..., 14) for To = 2, H = 16
    extra "goal"    frame  t + offset, or the episode's last frame (offset None), or a random
                    future frame in [t + offset, L - 1] (future=True)

Anchors run over ``t in [0, L - 1 - max(action_offsets) + pad_after]`` (``pad_after = Ta - 1``:
the action window may overhang the end by ``Ta - 1`` held actions). For the standard timing
this is exactly diffusion_policy's ``SequenceSampler`` with ``pad_before = To - 1``, ``pad_after
= Ta - 1`` (tested against it).

``sampler`` chooses how the trainer draws windows: ``random`` (a seeded permutation per epoch)
or ``sequential`` (each batch row follows one episode in order, ``stream_stride`` steps per
batch, for recurrent policies such as SeedPolicy; items then carry ``episode_start``).
``stream_chunks = K > 1`` (sequential only): an item is ``K`` consecutive windows of one episode
(``stream_stride`` apart, every field stacked on a new axis 0, ``(K, ...)``), the stream moves
``K * stream_stride`` steps per batch, and ``chunk_valid`` ``(K,)`` marks the windows that are
really in the episode (past its last window the last one is repeated, marked False). A
recurrent policy back-propagates through the ``K`` chunks of an item.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any


class SamplerKind(str, enum.Enum):
    """How the trainer draws windows."""

    RANDOM = "random"
    SEQUENTIAL = "sequential"


@dataclasses.dataclass(frozen=True)
class FrameRef:
    """One extra frame of ``key`` per window: ``offset`` steps after the anchor, or (None) the
    episode's last frame (e.g. a goal taken from the end of the same demonstration).

    ``future=True``: a frame drawn uniformly from ``[anchor + offset, last frame]`` each time the
    window is read (BESO's goals: a random future observation of the same demonstration); the
    last frame when that range is empty. Every future extra of one window shares one draw, so
    the goal's keys (``goal.state``, ``goal.image.front``...) come from the same step. The draw
    uses torch's global generator: seeded by the trainer (and checkpointed with it), and per
    worker by the DataLoader."""

    key: str
    offset: int | None = None
    future: bool = False

    def __post_init__(self) -> None:
        if self.future and self.offset is None:
            raise ValueError(f"FrameRef({self.key!r}, future=True) needs offset: the first step it may draw")

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "offset": self.offset, "future": self.future}


@dataclasses.dataclass(frozen=True)
class DataWindows:
    """The windows a policy trains on; see the module docstring."""

    obs_offsets: Mapping[str, tuple[int, ...]]
    action_offsets: tuple[int, ...]
    action_key: str = "action"
    extras: Mapping[str, FrameRef] = dataclasses.field(default_factory=dict)
    pad_after: int = 0
    sampler: SamplerKind = SamplerKind.RANDOM
    stream_stride: int = 1
    """Sequential sampler: steps between a row's consecutive windows (usually Ta)."""
    stream_chunks: int = 1
    """Sequential sampler: consecutive windows per item (back-propagation through K chunks)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs_offsets", {k: tuple(int(o) for o in v) for k, v in self.obs_offsets.items()})
        object.__setattr__(self, "action_offsets", tuple(int(o) for o in self.action_offsets))
        object.__setattr__(self, "sampler", SamplerKind(self.sampler))
        if not self.obs_offsets:
            raise ValueError("DataWindows.obs_offsets must name at least one observation key")
        for k, offs in self.obs_offsets.items():
            if not offs:
                raise ValueError(f"DataWindows.obs_offsets[{k!r}] is empty")
            if list(offs) != sorted(set(offs)):
                raise ValueError(f"DataWindows.obs_offsets[{k!r}] must be strictly increasing, got {offs}")
        if not self.action_offsets or list(self.action_offsets) != sorted(set(self.action_offsets)):
            raise ValueError(f"DataWindows.action_offsets must be strictly increasing, got {self.action_offsets}")
        if self.pad_after < 0:
            raise ValueError(f"DataWindows.pad_after must be >= 0, got {self.pad_after}")
        if self.stream_stride < 1:
            raise ValueError(f"DataWindows.stream_stride must be >= 1, got {self.stream_stride}")
        if self.stream_chunks < 1:
            raise ValueError(f"DataWindows.stream_chunks must be >= 1, got {self.stream_chunks}")
        if self.stream_chunks > 1 and self.sampler is not SamplerKind.SEQUENTIAL:
            raise ValueError("DataWindows.stream_chunks > 1 needs the sequential sampler")
        clash = set(self.extras) & {"obs", "action", "episode_start", "chunk_valid"}
        if clash:
            raise ValueError(f"DataWindows.extras may not be named {sorted(clash)}")

    @classmethod
    def from_timing(
        cls,
        obs_keys: Sequence[str],
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        *,
        action_key: str = "action",
        obs_stride: int = 1,
        extras: Mapping[str, FrameRef] | None = None,
        sampler: SamplerKind | str = SamplerKind.RANDOM,
        stream_chunks: int = 1,
    ) -> DataWindows:
        """Diffusion Policy's windows: ``To`` obs frames (every ``obs_stride`` steps) ending at the
        anchor, ``H`` actions starting ``To - 1`` steps before it, overhang ``Ta - 1``."""
        if obs_stride < 1:
            raise ValueError(f"obs_stride must be >= 1, got {obs_stride}")
        obs = tuple(range(-(n_obs_steps - 1) * obs_stride, 1, obs_stride))
        return cls(
            obs_offsets=dict.fromkeys(obs_keys, obs),
            action_offsets=tuple(range(-(n_obs_steps - 1), horizon - n_obs_steps + 1)),
            action_key=action_key,
            extras=dict(extras or {}),
            pad_after=max(0, n_action_steps - 1),
            sampler=sampler,
            stream_stride=max(1, n_action_steps),
            stream_chunks=stream_chunks,
        )

    @property
    def keys(self) -> list[str]:
        """Every store field the windows read."""
        out = list(self.obs_offsets)
        for k in [self.action_key, *(f.key for f in self.extras.values())]:
            if k not in out:
                out.append(k)
        return out

    def with_obs_keys(self, obs_keys: Sequence[str]) -> DataWindows:
        """The same timing for other observation keys (the offsets of the first key)."""
        offs = next(iter(self.obs_offsets.values()))
        return dataclasses.replace(self, obs_offsets=dict.fromkeys(obs_keys, offs))

    def to_dict(self) -> dict[str, Any]:
        return {
            "obs_offsets": {k: list(v) for k, v in self.obs_offsets.items()},
            "action_offsets": list(self.action_offsets),
            "action_key": self.action_key,
            "extras": {k: v.to_dict() for k, v in self.extras.items()},
            "pad_after": self.pad_after,
            "sampler": self.sampler.value,
            "stream_stride": self.stream_stride,
            "stream_chunks": self.stream_chunks,
        }
