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


def default_action_spec(dim: int) -> ActionSpec:
    """An unbounded spec for stores that carry none (limits only matter to the safety filter)."""
    return ActionSpec(names=tuple(f"a{i}" for i in range(dim)), low=(-float("inf"),) * dim, high=(float("inf"),) * dim)


def timing_fields(policy_cls: type, fields: dict[str, Any]) -> dict[str, int]:
    """horizon / n_obs_steps / n_action_steps from the policy fields, else the config defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(policy_cls.config_class)}
    return {k: int(fields.get(k, defaults[k])) for k in ("horizon", "n_obs_steps", "n_action_steps")}


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


def build_datasets(store: Any, config: TrainConfig, timing: dict[str, int]) -> tuple[Dataset, Dataset | None]:
    """Train (and validation, if ``val_ratio > 0``) ``EpisodeDataset``s over ``store``."""
    from robopolicy.data.dataset import EpisodeDataset

    kw = dict(
        obs_keys=list(config.obs_keys),
        **timing,
        val_ratio=config.val_ratio,
        seed=config.seed,
        action_key=config.action_key,
    )
    if config.cache_images:
        kw["cache_images"] = True
    train = EpisodeDataset(store, split="train", **kw)
    val = EpisodeDataset(store, split="val", **kw) if config.val_ratio > 0 else None
    if val is not None and len(val) == 0:
        val = None
    return train, val


def specs_from_data(dataset: Dataset, obs_keys: tuple[str, ...], action_spec: ActionSpec | None) -> tuple:
    """``(ObservationSpec, ActionSpec)`` from one sample's shapes and the store's action spec."""
    sample = dataset[0]
    fields = []
    for key in obs_keys:
        if key not in sample["obs"]:
            raise KeyError(f"the dataset has no observation field {key!r} (has {sorted(sample['obs'])})")
        fields.append(FieldSpec(key, tuple(sample["obs"][key].shape[1:]), kind_of_key(key)))
    dim = int(sample["action"].shape[-1])
    if action_spec is None:
        warnings.warn("the store has no action spec; using an unbounded default", stacklevel=2)
        action_spec = default_action_spec(dim)
    elif action_spec.dim != dim:
        raise ValueError(f"store action spec has {action_spec.dim} dims but its actions have {dim}")
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
