"""Torch dataset of training windows from an :class:`EpisodeStore`.

One item (numpy; the default DataLoader collate turns it into tensors with a batch dim)::

    {"obs": {key: (To, *shape)},      # low-dim as stored, images uint8 (To, H, W, C)
     "action": (H, Da) float32}

Windows follow diffusion_policy: ``pad_before = To-1``, ``pad_after = Ta-1``, edge replication;
only the first ``To`` obs frames are read. The split is by episode (:func:`get_val_mask`).
Works with DataLoader workers: the store is reopened by path in each process that unpickles it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch.utils.data

from robopolicy.data.sampler import SequenceSampler, get_val_mask
from robopolicy.data.store import EpisodeStore
from robopolicy.types import ChunkTiming, FieldKind, kind_of_key


class EpisodeDataset(torch.utils.data.Dataset):
    """Windows of ``obs_keys`` (first ``n_obs_steps`` frames) and ``action`` (``horizon`` steps).

    Args:
        store: an :class:`EpisodeStore` or the path of one.
        obs_keys: observation fields to return.
        horizon / n_obs_steps / n_action_steps: H, To, Ta (``To-1+Ta <= H``).
        val_ratio / seed: episode split, as diffusion_policy's ``get_val_mask``.
        split: ``"train"`` or ``"val"``.
        action_key: the action field.
        cache_images: hold image fields in memory (fast, needs RAM).
    """

    def __init__(
        self,
        store: EpisodeStore | str | os.PathLike,
        obs_keys: Sequence[str],
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        val_ratio: float = 0.0,
        seed: int = 42,
        split: str = "train",
        action_key: str = "action",
        cache_images: bool = False,
    ) -> None:
        self.timing = ChunkTiming(horizon, n_obs_steps, n_action_steps)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 <= val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
        self.store = store if isinstance(store, EpisodeStore) else EpisodeStore.open(store, mode="r")
        available = self.store.keys()
        for k in [*obs_keys, action_key]:
            if k not in available:
                what = "action key" if k == action_key else "observation key"
                raise KeyError(f"{what} {k!r} not in store {self.store.path} (available fields: {available})")
        if not obs_keys:
            raise ValueError("obs_keys must name at least one field")
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        self.split = split
        val_mask = get_val_mask(self.store.n_episodes, val_ratio, seed)
        self.episode_mask = val_mask if split == "val" else ~val_mask
        self.sampler = SequenceSampler(
            self.store,
            keys=[*self.obs_keys, action_key],
            horizon=horizon,
            pad_before=n_obs_steps - 1,
            pad_after=n_action_steps - 1,
            key_first_k=dict.fromkeys(self.obs_keys, n_obs_steps),
            episode_mask=self.episode_mask,
            cache_images=cache_images,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict:
        w = self.sampler[i]
        return {
            "obs": {k: w[k] for k in self.obs_keys},
            "action": np.asarray(w[self.action_key], dtype=np.float32),
        }

    def fields_for_normalizer(self) -> dict[str, np.ndarray]:
        """``{key: (N, *shape)}`` of the low-dim obs keys and the action over the whole store
        (train and val episodes, as diffusion_policy fits its normalizer)."""
        n = self.store.n_steps
        keys = [k for k in self.obs_keys if kind_of_key(k) is FieldKind.LOW_DIM and self.store[k].ndim < 4]
        out = {k: np.asarray(self.store[k][:n]) for k in keys}
        out[self.action_key] = np.asarray(self.store[self.action_key][:n], dtype=np.float32)
        return out

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({str(self.store.path)!r}, split={self.split!r}, episodes={int(self.episode_mask.sum())}, "
            f"windows={len(self)}, obs_keys={self.obs_keys})"
        )
