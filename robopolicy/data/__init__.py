"""Episode data: Zarr episode store, sequence sampler, torch dataset, normalizer, importers.

Public API (imported lazily, so ``import robopolicy.data.normalizer`` stays light)::

    EpisodeStore.create(path, *, action_spec=None, control_rate=None, source="", zarr_format=3, overwrite=False)
    EpisodeStore.open(path, mode="r" | "a")
    SequenceSampler(data, keys, horizon, pad_before=0, pad_after=0, key_first_k=None, episode_mask=None)
    EpisodeDataset(store, obs_keys, horizon, n_obs_steps, n_action_steps, val_ratio=0.0, seed=42, split="train")
    get_val_mask(n_episodes, val_ratio, seed)
    Normalizer, NormMode
    import_robomimic / import_diffusion_policy_zarr / import_lerobot (src, dst, *, overwrite=False, ...)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EpisodeStore": "robopolicy.data.store",
    "SCHEMA_VERSION": "robopolicy.data.store",
    "SequenceSampler": "robopolicy.data.sampler",
    "create_indices": "robopolicy.data.sampler",
    "get_val_mask": "robopolicy.data.sampler",
    "downsample_mask": "robopolicy.data.sampler",
    "EpisodeDataset": "robopolicy.data.dataset",
    "Normalizer": "robopolicy.data.normalizer",
    "NormMode": "robopolicy.data.normalizer",
    "import_robomimic": "robopolicy.data.importers",
    "import_diffusion_policy_zarr": "robopolicy.data.importers",
    "import_lerobot": "robopolicy.data.importers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'robopolicy.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
