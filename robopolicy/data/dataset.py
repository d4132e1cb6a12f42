"""Torch dataset of training windows from an :class:`EpisodeStore`.

One item (numpy; the default DataLoader collate turns it into tensors with a batch dim)::

    {"obs": {key: (To, *shape)},      # low-dim as stored, images uint8 (To, H, W, C)
     "action": (H, Da) float32}       # + extra frames and "episode_start", if declared

The windows are the policy config's :class:`~robopolicy.data.windows.DataWindows`; the default
(obs keys + H/To/Ta) follows diffusion_policy: ``pad_before = To-1``, ``pad_after = Ta-1``, edge
replication, only the obs frames needed are read. The split is by episode (:func:`get_val_mask`).
Works with DataLoader workers: the store is reopened by path in each process that unpickles it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import torch.utils.data

from robopolicy.data.sampler import WindowSampler, get_val_mask
from robopolicy.data.store import EpisodeStore
from robopolicy.data.windows import DataWindows, SamplerKind
from robopolicy.types import ChunkTiming, FieldKind, kind_of_key


class EpisodeDataset(torch.utils.data.Dataset):
    """Training windows of a store, as a policy's :class:`~robopolicy.data.windows.DataWindows` declares.

    Args:
        store: an :class:`EpisodeStore` or the path of one.
        obs_keys / horizon / n_obs_steps / n_action_steps / action_key: the standard
            (diffusion_policy) windows, used when ``windows`` is not given.
        windows: the declaration (obs frames and offsets, action window, extra frames, sampler kind).
        val_ratio / seed: episode split, as diffusion_policy's ``get_val_mask``.
        split: ``"train"`` or ``"val"``.
        cache_images: hold image fields in memory (fast, needs RAM).

    An item is ``{"obs": {key: (len(offsets), ...)}, "action": (H, Da) float32}``, plus
    ``{name: (1, ...)}`` per extra frame and, for a sequential sampler, ``"episode_start"``
    (True on an episode's first window).
    """

    def __init__(
        self,
        store: EpisodeStore | str | os.PathLike,
        obs_keys: Sequence[str] | None = None,
        horizon: int | None = None,
        n_obs_steps: int | None = None,
        n_action_steps: int | None = None,
        val_ratio: float = 0.0,
        seed: int = 42,
        split: str = "train",
        action_key: str = "action",
        cache_images: bool = False,
        windows: DataWindows | None = None,
    ) -> None:
        if windows is None:
            if obs_keys is None or horizon is None or n_obs_steps is None or n_action_steps is None:
                raise ValueError("EpisodeDataset needs windows=DataWindows(...) or obs_keys + horizon/To/Ta")
            self.timing = ChunkTiming(horizon, n_obs_steps, n_action_steps)
            if not obs_keys:
                raise ValueError("obs_keys must name at least one field")
            windows = DataWindows.from_timing(obs_keys, horizon, n_obs_steps, n_action_steps, action_key=action_key)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 <= val_ratio < 1.0:
            raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
        self.store = store if isinstance(store, EpisodeStore) else EpisodeStore.open(store, mode="r")
        available = self.store.keys()
        for k in windows.keys:
            if k not in available:
                what = "action key" if k == windows.action_key else "observation key"
                raise KeyError(f"{what} {k!r} not in store {self.store.path} (available fields: {available})")
        self.windows = windows
        self.obs_keys = list(windows.obs_offsets)
        self.action_key = windows.action_key
        self.split = split
        val_mask = get_val_mask(self.store.n_episodes, val_ratio, seed)
        self.episode_mask = val_mask if split == "val" else ~val_mask
        self.sampler = WindowSampler(self.store, windows, self.episode_mask, cache_images=cache_images)
        self._sequential = windows.sampler is SamplerKind.SEQUENTIAL

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict:
        k = self.windows.stream_chunks if self._sequential else 1
        if k == 1:
            item = self._window(i)
        else:  # K consecutive windows of one episode, stacked; past its end the last is repeated
            n = len(self.sampler)
            i = i + n if i < 0 else i
            if not 0 <= i < n:
                raise IndexError(f"window {i} out of range ({n} windows)")
            last = int(self._last_window[i])
            idx = [i + j * self.windows.stream_stride for j in range(k)]
            parts = [self._window(min(j, last)) for j in idx]
            item = {
                "obs": {key: np.stack([p["obs"][key] for p in parts]) for key in self.obs_keys},
                "action": np.stack([p["action"] for p in parts]),
            }
            for name in self.windows.extras:
                item[name] = np.stack([p[name] for p in parts])
            item["chunk_valid"] = np.asarray([j <= last for j in idx], dtype=bool)
        if self._sequential:
            item["episode_start"] = bool(self.sampler.windows[i, 1] == 0)
        return item

    def _window(self, i: int) -> dict:
        w = self.sampler[i]
        item = {
            "obs": {k: w[k] for k in self.obs_keys},
            "action": np.asarray(w[self.action_key], dtype=np.float32),
        }
        for name in self.windows.extras:
            item[name] = w[name]
        return item

    @functools.cached_property
    def _last_window(self) -> np.ndarray:
        """(W,) index of the last window of each window's episode."""
        out = np.empty(len(self.sampler), dtype=np.int64)
        for first, end in self.sampler.episode_window_ranges():
            out[first:end] = end - 1
        return out

    def fields_for_normalizer(self) -> dict[str, np.ndarray]:
        """``{key: (N, *shape)}`` of the low-dim obs keys and ``"action"`` (read from the action
        key, whatever its store name) over the whole store (train and val episodes, as
        diffusion_policy fits its normalizer)."""
        n = self.store.n_steps
        keys = [k for k in self.obs_keys if kind_of_key(k) is FieldKind.LOW_DIM and self.store[k].ndim < 4]
        out = {k: np.asarray(self.store[k][:n]) for k in keys}
        out["action"] = np.asarray(self.store[self.action_key][:n], dtype=np.float32)
        return out

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({str(self.store.path)!r}, split={self.split!r}, episodes={int(self.episode_mask.sum())}, "
            f"windows={len(self)}, obs_keys={self.obs_keys}, sampler={self.windows.sampler.value})"
        )
