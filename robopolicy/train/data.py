"""Training data plumbing: datasets from a store, specs from the data, a resumable sampler.

The order of samples is a pure function of ``(seed, epoch)``: :class:`ResumableSampler` draws
one permutation per epoch from its own ``torch.Generator`` and remembers the generator state
at the start of the epoch, so a checkpoint can resume mid-epoch at the exact next sample.
Each of ``world`` processes takes every ``world``-th index of the same permutation.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from robopolicy.data.windows import DataWindows, SamplerKind
from robopolicy.policy import PolicyConfig
from robopolicy.train.config import TrainConfig
from robopolicy.types import ActionSpec, FieldSpec, ObservationSpec, kind_of_key


class ResumableSampler(Sampler[int]):
    """Seeded random order over ``n`` samples; ``state_dict(consumed)`` resumes mid-epoch."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if n < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.rank, self.world = n, rank, world
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch_state = self.generator.get_state()
        self._skip = 0

    def __len__(self) -> int:
        return len(range(self.rank, self.n - self._skip, self.world))

    def __iter__(self) -> Iterator[int]:
        self._epoch_state = self.generator.get_state()
        perm = torch.randperm(self.n, generator=self.generator)
        skip, self._skip = self._skip, 0
        return iter(perm[skip:][self.rank :: self.world].tolist())

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """State to restart this epoch after ``consumed`` samples (summed over processes)."""
        return {"epoch_state": self._epoch_state.clone(), "consumed": int(consumed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["epoch_state"])
        self._skip = int(state["consumed"])


class SequentialStreamSampler(Sampler[int]):
    """Batch rows that follow episodes in order (recurrent policies, e.g. SeedPolicy).

    ``batch_size`` streams per process (``world`` processes: ``batch_size * world`` streams in
    all). Each epoch draws a seeded permutation of the episodes; a stream takes the next episode
    when its current one ends and walks it ``stride`` windows at a time from its first window,
    so row j of consecutive batches holds consecutive chunks of one episode (``episode_start``
    marks a switch). The epoch ends when a stream needs an episode and none is left (no
    partial batch). ``state_dict(consumed)`` resumes mid-epoch exactly, as :class:`ResumableSampler`.
    """

    def __init__(
        self, episode_ranges: Any, stride: int, batch_size: int, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        import numpy as np

        self.ranges = np.asarray(episode_ranges, dtype=np.int64).reshape(-1, 2)
        if len(self.ranges) < batch_size * world:
            raise ValueError(
                f"a sequential sampler needs at least one episode per stream: {len(self.ranges)} episodes for "
                f"{batch_size * world} streams (batch_size x processes); lower batch_size or add episodes"
            )
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride, self.batch_size, self.rank, self.world = int(stride), int(batch_size), rank, world
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch_state = self.generator.get_state()
        self._skip_steps = 0

    def _epoch_steps(self, perm: list[int]) -> list[list[int]]:
        """Window indices of every batch step of one epoch, for all streams."""
        n_streams = self.batch_size * self.world
        queue = iter(perm)
        streams: list[list[int]] = []
        for _ in range(n_streams):
            e = next(queue)
            streams.append(list(range(int(self.ranges[e, 0]), int(self.ranges[e, 1]), self.stride)))
        steps = []
        while True:
            for j in range(n_streams):
                if not streams[j]:
                    e = next(queue, None)
                    if e is None:
                        return steps
                    streams[j] = list(range(int(self.ranges[e, 0]), int(self.ranges[e, 1]), self.stride))
            steps.append([streams[j].pop(0) for j in range(n_streams)])

    def _mine(self, step: list[int]) -> list[int]:
        return step[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        g = torch.Generator()
        g.set_state(self.generator.get_state())
        steps = self._epoch_steps(torch.randperm(len(self.ranges), generator=g).tolist())
        return max(0, len(steps) - self._skip_steps) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        self._epoch_state = self.generator.get_state()
        steps = self._epoch_steps(torch.randperm(len(self.ranges), generator=self.generator).tolist())
        skip, self._skip_steps = self._skip_steps, 0
        return iter([i for step in steps[skip:] for i in self._mine(step)])

    def state_dict(self, consumed: int) -> dict[str, Any]:
        """State to restart this epoch after ``consumed`` samples (summed over processes)."""
        return {"epoch_state": self._epoch_state.clone(), "consumed": int(consumed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["epoch_state"])
        self._skip_steps = int(state["consumed"]) // (self.batch_size * self.world)


def make_train_sampler(dataset: Dataset, config: TrainConfig, rank: int = 0, world: int = 1) -> Sampler[int]:
    """The sampler the policy's data windows ask for: random windows or sequential streams."""
    windows = getattr(dataset, "windows", None)
    if windows is not None and windows.sampler is SamplerKind.SEQUENTIAL:
        ranges = dataset.sampler.episode_window_ranges()
        stride = windows.stream_stride * windows.stream_chunks  # an item holds stream_chunks windows
        return SequentialStreamSampler(ranges, stride, config.batch_size, config.seed, rank, world)
    return ResumableSampler(len(dataset), config.seed, rank, world)


def default_action_spec(dim: int) -> ActionSpec:
    """An unbounded spec for stores that carry none (limits only matter to the safety filter)."""
    return ActionSpec(names=tuple(f"a{i}" for i in range(dim)), low=(-float("inf"),) * dim, high=(float("inf"),) * dim)


def open_store(data: Any) -> Any:
    """An ``EpisodeStore`` from a path (or the store itself)."""
    if not isinstance(data, (str, bytes)) and not hasattr(data, "__fspath__"):
        return data
    from robopolicy.data.store import EpisodeStore

    return EpisodeStore.open(data)


def check_finite(store: Any, keys: list[str], block: int = 1 << 16) -> None:
    """ValueError naming the field, episode and step of the first non-finite value among ``keys``.

    Reads the float fields in blocks of ``block`` steps; images (uint8) cannot hold one. Run
    before training, so that bad data is refused up front and not found as a NaN loss later.
    """
    import numpy as np

    ends = np.asarray(store.episode_ends)
    for key in keys:
        if key not in store:
            continue  # the dataset names a missing key with the valid ones
        z = store[key]
        if np.dtype(z.dtype).kind not in "fc":
            continue
        n = int(ends[-1]) if len(ends) else 0
        for start in range(0, n, block):
            x = np.asarray(z[start : min(n, start + block)])
            bad = ~np.isfinite(x.reshape(len(x), -1))
            if bad.any():
                rows = np.flatnonzero(bad.any(axis=1))
                step = start + int(rows[0])
                ep = int(np.searchsorted(ends, step, side="right"))
                ep_start = int(ends[ep - 1]) if ep > 0 else 0
                value = x.reshape(len(x), -1)[rows[0]][bad[rows[0]]][0]
                raise ValueError(
                    f"store {getattr(store, 'path', '')}: field {key!r} has a non-finite value ({value}) at step {step} "
                    f"(episode {ep}, step {step - ep_start} of it); {int(bad.sum())} such values in steps "
                    f"{start}..{start + len(x) - 1} -- fix or drop the episode before training"
                )


def build_datasets(store: Any, config: TrainConfig, windows: DataWindows) -> tuple[Dataset, Dataset | None]:
    """Train (and validation, if ``val_ratio > 0``) ``EpisodeDataset``s of the policy's ``windows``
    over ``store`` (the action field is the train config's ``action_key``)."""
    from robopolicy.data.dataset import EpisodeDataset

    windows = dataclasses.replace(windows, action_key=config.action_key)
    kw = dict(windows=windows, val_ratio=config.val_ratio, seed=config.seed, cache_images=config.cache_images)
    train = EpisodeDataset(store, split="train", **kw)
    if len(train) == 0:
        raise ValueError(f"store {getattr(store, 'path', '')} gives no training windows (episodes too short?)")
    val = EpisodeDataset(store, split="val", **kw) if config.val_ratio > 0 else None
    if val is not None and len(val) == 0:
        val = None
    return train, val


def specs_from_store(store: Any, config: TrainConfig) -> tuple[ObservationSpec, ActionSpec]:
    """``(ObservationSpec, ActionSpec)`` from the store's field shapes and its action spec."""
    fields = []
    available = store.keys()
    for key in config.obs_keys:
        if key not in available:
            raise KeyError(f"the store has no observation field {key!r} (has {sorted(available)})")
        fields.append(FieldSpec(key, tuple(store[key].shape[1:]), kind_of_key(key)))
    if config.action_key not in available:
        raise KeyError(f"the store has no action field {config.action_key!r} (has {sorted(available)})")
    dim = int(store[config.action_key].shape[-1])
    action_spec = getattr(store, "action_spec", None)
    if action_spec is None:
        warnings.warn("the store has no action spec; using an unbounded default", stacklevel=2)
        action_spec = default_action_spec(dim)
    elif action_spec.dim != dim:
        raise ValueError(f"store action spec has {action_spec.dim} dims but its {config.action_key!r} has {dim}")
    return ObservationSpec(tuple(fields)), action_spec


def build_policy_config(policy_cls: type, fields: dict[str, Any], obs_spec, action_spec) -> PolicyConfig:
    """The policy's typed config: its own fields plus the data-derived specs."""
    from robopolicy.config import from_dict

    return from_dict(policy_cls.config_class, {**fields, "obs_spec": obs_spec, "action_spec": action_spec})


def make_loader(
    dataset: Dataset, sampler: Sampler, batch_size: int, num_workers: int, seed: int, drop_last: bool = True
) -> DataLoader:
    """A DataLoader that never touches the global torch RNG (its base seed has its own generator)."""
    if drop_last and len(dataset) < batch_size:
        drop_last = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed + 1),
        pin_memory=torch.cuda.is_available(),
    )
