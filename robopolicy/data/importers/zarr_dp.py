"""diffusion_policy Zarr (``ReplayBuffer``) -> episode store.

The source is a Zarr v2 directory or ``.zarr.zip`` with ``data/<key>`` and ``meta/episode_ends``
(:meth:`EpisodeStore.open` also reads such a store in place, read-only or appending).
Importing copies episode by episode into a new (v3 by default) store with robopolicy's chunks
and attributes. Image-like arrays, (N, H, W, C) with C in {1, 3, 4}, become ``image.<name>``
(``<name>_image`` -> ``image.<name>``) and uint8: float images in 0..255 (PushT's ``img``) are
rounded, float images in 0..1 scaled by 255. Other arrays keep their name and dtype.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore
from robopolicy.types import IMAGE_PREFIX, ActionSpec


def dp_key_to_field(key: str, shape: tuple[int, ...]) -> str:
    """Store field name of a diffusion_policy array ``key`` of shape (N, ...)."""
    if key.startswith(IMAGE_PREFIX):
        return key
    if len(shape) == 4 and shape[-1] in (1, 3, 4):
        return IMAGE_PREFIX + (key[: -len("_image")] if key.endswith("_image") else key)
    return key


def _to_uint8(a: np.ndarray, scale01: bool) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float32) * (255.0 if scale01 else 1.0)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def import_diffusion_policy_zarr(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    zarr_format: int = 3,
    control_rate: float | None = None,
    action_spec: ActionSpec | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EpisodeStore:
    """Copy a diffusion_policy store into a new store at ``dst`` (images -> ``image.*`` uint8)."""
    src = Path(src)
    with EpisodeStore.open(src, mode="r") as s:
        if s.n_episodes == 0:
            raise ValueError(f"{src} has no episodes")
        names = {k: dp_key_to_field(k, s[k].shape) for k in s.keys()}
        clash = [v for v in names.values() if list(names.values()).count(v) > 1]
        if clash:
            raise ValueError(f"{src}: fields {sorted(set(clash))} collide after renaming images")
        scale01 = {}
        for k, f in names.items():  # decide the float image range once, from the first episode
            if f.startswith(IMAGE_PREFIX) and s[k].dtype != np.uint8:
                first = np.asarray(s[k][s.episode_slice(0)])
                scale01[k] = float(first.max(initial=0)) <= 1.0
        store = EpisodeStore.create(
            dst,
            action_spec=action_spec if action_spec is not None else s.action_spec,
            control_rate=control_rate if control_rate is not None else s.control_rate,
            source=s.source or f"diffusion_policy:{src.name}",
            zarr_format=zarr_format,
            overwrite=overwrite,
        )
        metas = s.episodes_metadata
        for i in range(s.n_episodes):
            sl = s.episode_slice(i)
            ep = {}
            for k, f in names.items():
                a = np.asarray(s[k][sl])
                ep[f] = _to_uint8(a, scale01[k]) if k in scale01 else a
            store.add_episode(ep, {**metas[i], "source_episode": i})
            if progress:
                progress(i + 1, s.n_episodes)
    return store
