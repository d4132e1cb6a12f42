"""Fixed-length windows over episodes, with diffusion_policy's exact padding semantics.

For every episode ``i`` with ``episode_mask[i]`` and length ``L``, the windows start at
``idx in range(-pad_before, L - horizon + pad_after + 1)`` (pads clipped to ``[0, horizon-1]``),
in episode order then start order, as diffusion_policy's ``create_indices``. Window position
``j`` reads buffer step ``clip(start + idx + j, start, start + L - 1)``: positions before the
episode start repeat its first frame, positions after its end repeat its last frame (edge
replication; padded actions are a hold).

``key_first_k={key: k}`` returns only the first ``k`` window positions of that key, shape
``(k, *shape)``, and reads only the frames those positions need (diffusion_policy returns the
full window with NaN after ``k``; the policy reads ``obs[:To]`` either way, and a short array
cannot be misused by accident).

Low-dim fields are read into memory once; images (``image.*`` or any 4-D field) are read per
window from Zarr (one chunk per frame), or held in memory with ``cache_images=True``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from robopolicy.data.store import EpisodeStore
from robopolicy.types import FieldKind, kind_of_key


def create_indices(
    episode_ends: np.ndarray, horizon: int, episode_mask: np.ndarray, pad_before: int = 0, pad_after: int = 0
) -> np.ndarray:
    """(W, 4) int64 rows ``(buffer_start, buffer_end, sample_start, sample_end)``, as diffusion_policy."""
    episode_ends = np.asarray(episode_ends, dtype=np.int64)
    if episode_mask.shape != episode_ends.shape:
        raise ValueError(f"episode_mask shape {episode_mask.shape} != episode_ends shape {episode_ends.shape}")
    pad_before = min(max(pad_before, 0), horizon - 1)
    pad_after = min(max(pad_after, 0), horizon - 1)
    rows = []
    starts = np.concatenate([[0], episode_ends[:-1]])
    for i in np.flatnonzero(episode_mask):
        start, length = int(starts[i]), int(episode_ends[i] - starts[i])
        idx = np.arange(-pad_before, length - horizon + pad_after + 1, dtype=np.int64)
        if len(idx) == 0:
            continue
        buf_start = np.maximum(idx, 0) + start
        buf_end = np.minimum(idx + horizon, length) + start
        samp_start = buf_start - (idx + start)
        samp_end = horizon - ((idx + horizon + start) - buf_end)
        rows.append(np.stack([buf_start, buf_end, samp_start, samp_end], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 4), dtype=np.int64)


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """(E,) bool validation mask: ``round(E*val_ratio)`` random episodes, >=1 val and >=1 train
    when ``E >= 2`` and ``val_ratio > 0``. Same draw as diffusion_policy for the same seed."""
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0:
        return val_mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed=seed)
    val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return val_mask


def downsample_mask(mask: np.ndarray, max_n: int | None, seed: int = 0) -> np.ndarray:
    """Keep at most ``max_n`` of the set episodes of ``mask`` (random, seeded), as diffusion_policy."""
    train_mask = mask.copy()
    if max_n is not None and np.sum(mask) > max_n:
        idxs = np.flatnonzero(mask)
        rng = np.random.default_rng(seed=seed)
        train_mask = np.zeros_like(mask)
        train_mask[idxs[rng.choice(len(idxs), size=max_n, replace=False)]] = True
    return train_mask


def _is_lazy(key: str, arr: object) -> bool:
    return kind_of_key(key) is FieldKind.IMAGE or len(getattr(arr, "shape", ())) >= 4


def _episode_ends(
    data: EpisodeStore | Mapping[str, np.ndarray], keys: Sequence[str], episode_ends: np.ndarray | None
) -> np.ndarray:
    """The episode ends of ``data`` (a store's own, or the given ones for a mapping); KeyError
    naming the fields of ``keys`` that ``data`` lacks."""
    if isinstance(data, EpisodeStore):
        episode_ends, available = data.episode_ends, data.keys()
    elif episode_ends is None:
        raise ValueError("episode_ends is required when data is a mapping of arrays")
    else:
        available = list(data)
    missing = [k for k in keys if k not in available]
    if missing:
        raise KeyError(f"fields {missing} not found (available: {sorted(available)})")
    return np.asarray(episode_ends, dtype=np.int64)


def _hold_fields(
    data: EpisodeStore | Mapping[str, np.ndarray], keys: Sequence[str], episode_ends: np.ndarray, cache_images: bool
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Low-dim fields read into memory once; image fields kept as lazy zarr arrays (unless cached)."""
    n_steps = int(episode_ends[-1]) if len(episode_ends) else 0
    memory: dict[str, np.ndarray] = {}
    lazy: dict[str, object] = {}
    for k in keys:
        arr = data[k]
        if _is_lazy(k, arr) and not cache_images:
            lazy[k] = arr
        else:
            memory[k] = np.asarray(arr[:n_steps])
    return memory, lazy


class SequenceSampler:
    """Windows ``{key: (horizon, *shape)}`` (or ``(k, *shape)`` for ``key_first_k`` keys).

    Args:
        data: an :class:`EpisodeStore`, or a mapping ``key -> (N, *shape)`` array (numpy or
            zarr) together with ``episode_ends``.
        keys: fields to return.
        horizon: window length.
        pad_before / pad_after: how far windows may start before / end after an episode.
        key_first_k: ``{key: k}``: return and read only the first k positions of the window.
        episode_mask: (E,) bool, which episodes to use (default all).
        episode_ends: required when ``data`` is a mapping.
        cache_images: read image fields into memory too.
    """

    def __init__(
        self,
        data: EpisodeStore | Mapping[str, np.ndarray],
        keys: Sequence[str],
        horizon: int,
        pad_before: int = 0,
        pad_after: int = 0,
        key_first_k: Mapping[str, int] | None = None,
        episode_mask: np.ndarray | None = None,
        *,
        episode_ends: np.ndarray | None = None,
        cache_images: bool = False,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.episode_ends = _episode_ends(data, keys, episode_ends)
        if episode_mask is None:
            episode_mask = np.ones(len(self.episode_ends), dtype=bool)
        self.episode_mask = np.asarray(episode_mask, dtype=bool)
        self.keys = list(keys)
        self.horizon = int(horizon)
        self.key_first_k = {k: int(v) for k, v in (key_first_k or {}).items()}
        bad = {k: v for k, v in self.key_first_k.items() if not 1 <= v <= horizon}
        if bad:
            raise ValueError(f"key_first_k values must be in [1, horizon={horizon}], got {bad}")
        self.indices = create_indices(self.episode_ends, self.horizon, self.episode_mask, pad_before, pad_after)
        self._data = data
        self._memory, self._lazy = _hold_fields(data, self.keys, self.episode_ends, cache_images)

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if isinstance(self._data, EpisodeStore):  # re-fetch zarr arrays from the reopened store
            state["_lazy"] = dict.fromkeys(self._lazy)
        return state

    def _lazy_array(self, key: str) -> object:
        arr = self._lazy[key]
        if arr is None:
            arr = self._lazy[key] = self._data[key]
        return arr

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range ({len(self)} windows)")
        buf_start, buf_end, samp_start, _ = (int(x) for x in self.indices[i])
        # window position j -> buffer step, edge-replicated inside [buf_start, buf_end)
        steps = np.clip(np.arange(self.horizon) - samp_start + buf_start, buf_start, buf_end - 1)
        out = {}
        for k in self.keys:
            n = self.key_first_k.get(k, self.horizon)
            s = steps[:n]
            if k in self._memory:
                out[k] = self._memory[k][s]
            else:
                lo, hi = int(s[0]), int(s[-1]) + 1  # contiguous frames, read once each
                out[k] = np.asarray(self._lazy_array(k)[lo:hi])[s - lo]
        return out


class WindowSampler:
    """Windows declared by a :class:`~robopolicy.data.windows.DataWindows` (any offsets per key).

    Item ``i`` is ``{key: (len(offsets), *shape)}`` for each obs key and the action key, plus
    ``{name: (1, *shape)}`` for each extra frame. ``windows`` (W, 2) lists ``(episode, t)`` in
    episode order then anchor order; for the standard timing this is, window for window,
    :class:`SequenceSampler` with ``pad_before = To - 1`` and ``pad_after = Ta - 1``.
    """

    def __init__(
        self,
        data: EpisodeStore | Mapping[str, np.ndarray],
        windows: Any,
        episode_mask: np.ndarray | None = None,
        *,
        episode_ends: np.ndarray | None = None,
        cache_images: bool = False,
    ) -> None:
        self.spec = windows
        self.episode_ends = _episode_ends(data, windows.keys, episode_ends)
        self.episode_starts = np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)
        mask = np.ones(len(self.episode_ends), dtype=bool) if episode_mask is None else np.asarray(episode_mask, bool)
        if mask.shape != self.episode_ends.shape:
            raise ValueError(f"episode_mask shape {mask.shape} != episode_ends shape {self.episode_ends.shape}")
        self.episode_mask = mask
        horizon = windows.action_offsets[-1] - windows.action_offsets[0] + 1
        pad_after = min(windows.pad_after, horizon - 1)  # clipped as diffusion_policy clips its pads
        lengths = self.episode_ends - self.episode_starts
        rows = []
        for e in np.flatnonzero(mask):
            last = int(lengths[e]) - 1 - windows.action_offsets[-1] + pad_after
            if last >= 0:
                t = np.arange(last + 1, dtype=np.int64)
                rows.append(np.stack([np.full_like(t, e), t], axis=1))
        self.windows = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
        self.offsets = {k: np.asarray(v, dtype=np.int64) for k, v in windows.obs_offsets.items()}
        self.offsets[windows.action_key] = np.asarray(windows.action_offsets, dtype=np.int64)
        self._data = data
        self._memory, self._lazy = _hold_fields(data, windows.keys, self.episode_ends, cache_images)

    def __len__(self) -> int:
        return len(self.windows)

    __getstate__ = SequenceSampler.__getstate__
    _lazy_array = SequenceSampler._lazy_array

    def episode_window_ranges(self) -> np.ndarray:
        """(E_used, 2) ``[first, end)`` window indices of each used episode, in window order."""
        if len(self.windows) == 0:
            return np.zeros((0, 2), dtype=np.int64)
        change = np.flatnonzero(np.diff(self.windows[:, 0])) + 1
        starts = np.concatenate([[0], change])
        ends = np.concatenate([change, [len(self.windows)]])
        return np.stack([starts, ends], axis=1)

    def _read(self, key: str, steps: np.ndarray) -> np.ndarray:
        if key in self._memory:
            return self._memory[key][steps]
        lo, hi = int(steps.min()), int(steps.max()) + 1
        if hi - lo <= 4 * len(steps):  # nearby frames: one contiguous read
            return np.asarray(self._lazy_array(key)[lo:hi])[steps - lo]
        return np.stack([np.asarray(self._lazy_array(key)[int(s)]) for s in steps])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range ({len(self)} windows)")
        e, t = (int(x) for x in self.windows[i])
        start, last = int(self.episode_starts[e]), int(self.episode_ends[e]) - 1
        out = {k: self._read(k, np.clip(start + t + offs, start, last)) for k, offs in self.offsets.items()}
        draw = None  # one uniform draw shared by the window's future extras
        for name, ref in self.spec.extras.items():
            if ref.offset is None:
                step = last
            elif ref.future:
                lo = min(max(start + t + ref.offset, start), last)
                if draw is None:
                    draw = float(torch.rand(()))
                step = lo + min(int(draw * (last - lo + 1)), last - lo)
            else:
                step = min(max(start + t + ref.offset, start), last)
            out[name] = self._read(ref.key, np.asarray([step]))
        return out
