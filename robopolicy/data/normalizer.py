"""Per-key, per-dimension affine normalizer, saved with the policy.

``normalize(key, x) = x * scale + offset``; ``unnormalize(key, y) = (y - offset) / scale``.
Modes:

* ``limits``   : per-dim [min, max] -> [-1, 1] (constant dims keep unit scale, centred).
* ``gaussian`` : per-dim z-score (std < eps keeps unit scale).
* ``identity`` : no change (e.g. already in [-1, 1], or quaternions).
* ``image``    : uint8 [0, 255] -> [-1, 1] (fixed, no fitting).

Dims listed in ``keep_dims`` (e.g. discrete gripper dims) are not fitted: they are multiplied by
``keep_scale`` (1: left unchanged; RTI's scaled-gripper training stores +-1 as +-0.1), with no
offset, so ``unnormalize`` gives back +-1 (and 0) exactly.
A policy chooses the mode per key (:func:`normalization_modes`: limits for low-dim obs and
actions, image for images, unless its config says otherwise).

Stats are plain tensors; ``state_dict`` / ``load_state_dict`` give a flat ``{"key/stat": tensor}``
mapping for safetensors. Missing keys raise, never pass silently.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from robopolicy.types import FieldKind, ObservationSpec

EPS = 1e-4
_STATS = ("scale", "offset", "min", "max", "mean", "std")


class NormMode(str, enum.Enum):
    LIMITS = "limits"
    GAUSSIAN = "gaussian"
    IDENTITY = "identity"
    IMAGE = "image"


ACTION_KEY = "action"
"""The normalizer key of the actions."""


def normalization_modes(requested: Mapping[str, NormMode | str], obs_spec: ObservationSpec) -> dict[str, NormMode]:
    """The mode of every key a policy normalizes: ``requested`` (a config's ``normalization``,
    e.g. ``{state: gaussian}``) over the defaults, ``limits`` for low-dim observations and
    ``action``, ``image`` for images. ValueError naming a key the policy does not have, or a mode
    its kind cannot take (images take only ``image``; the other keys anything but ``image``)."""
    defaults = {f.key: NormMode.IMAGE if f.kind is FieldKind.IMAGE else NormMode.LIMITS for f in obs_spec.fields}
    defaults[ACTION_KEY] = NormMode.LIMITS
    modes = dict(defaults)
    for key, value in requested.items():
        if key not in defaults:
            raise ValueError(f"normalization.{key}: not a key of this policy (its keys: {sorted(defaults)})")
        try:
            mode = NormMode(value)
        except ValueError:
            raise ValueError(f"normalization.{key}: {value!r} is not one of {[m.value for m in NormMode]}") from None
        if (mode is NormMode.IMAGE) != (defaults[key] is NormMode.IMAGE):
            allowed = ["image"] if defaults[key] is NormMode.IMAGE else ["limits", "gaussian", "identity"]
            raise ValueError(f"normalization.{key}: {mode.value!r} does not apply to this key (it takes {allowed})")
        modes[key] = mode
    return modes


def _fit_one(x: np.ndarray, mode: NormMode, keep_dims: Sequence[int], keep_scale: float) -> dict[str, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    if x.shape[0] == 0:
        raise ValueError("cannot fit a normalizer on zero samples")
    lo, hi, mean, std = x.min(0), x.max(0), x.mean(0), x.std(0)
    d = x.shape[-1]
    if mode is NormMode.LIMITS:
        rng = hi - lo
        const = rng < EPS
        scale = np.where(const, 1.0, 2.0 / np.where(const, 1.0, rng))
        offset = np.where(const, -lo, -1.0 - lo * scale)  # constant dims sit at 0
    elif mode is NormMode.GAUSSIAN:
        s = np.where(std < EPS, 1.0, std)
        scale, offset = 1.0 / s, -mean / s
    elif mode is NormMode.IDENTITY:
        scale, offset = np.ones(d), np.zeros(d)
    else:
        raise ValueError(f"mode {mode.value!r} is not fitted from data")
    for i in keep_dims:
        if not 0 <= i < d:
            raise ValueError(f"keep_dims index {i} out of range for {d} dims")
        scale[i], offset[i] = keep_scale, 0.0
    return {"scale": scale, "offset": offset, "min": lo, "max": hi, "mean": mean, "std": std}


class Normalizer:
    """Holds per-key affine stats; works on numpy arrays and torch tensors of shape (..., D)."""

    def __init__(self) -> None:
        self.modes: dict[str, NormMode] = {}
        self.stats: dict[str, dict[str, torch.Tensor]] = {}

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        key: str,
        data: np.ndarray,
        mode: NormMode | str = NormMode.LIMITS,
        keep_dims: Sequence[int] = (),
        keep_scale: float = 1.0,
    ) -> Normalizer:
        """Fit ``key`` on ``data`` (N, D) (or (N,)) by ``mode``; ``keep_dims`` are not fitted but
        multiplied by ``keep_scale`` (> 0)."""
        mode = NormMode(mode)
        if not (math.isfinite(keep_scale) and keep_scale > 0):
            raise ValueError(f"keep_scale must be finite and > 0, got {keep_scale}")
        if mode is NormMode.IMAGE:
            self.set_image(key)
            return self
        data = np.asarray(data)
        if data.ndim == 1:
            data = data[:, None]
        stats = _fit_one(data, mode, keep_dims, keep_scale)
        self.modes[key] = mode
        self.stats[key] = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in stats.items()}
        return self

    def set_image(self, key: str) -> Normalizer:
        """uint8 [0, 255] -> [-1, 1], applied on the last (channel) dim."""
        one = torch.ones(1)
        self.modes[key] = NormMode.IMAGE
        self.stats[key] = {
            "scale": one * (2.0 / 255.0),
            "offset": -one,
            "min": one * 0,
            "max": one * 255,
            "mean": one * 127.5,
            "std": one * 127.5,
        }
        return self

    # ------------------------------------------------------------------ apply
    def _get(self, key: str) -> dict[str, torch.Tensor]:
        if key not in self.stats:
            raise KeyError(f"normalizer has no stats for key {key!r} (have {sorted(self.stats)})")
        return self.stats[key]

    def normalize(self, key: str, x):
        s = self._get(key)
        if isinstance(x, torch.Tensor):
            sc, of = s["scale"].to(x.device, x.dtype if x.is_floating_point() else torch.float32), s["offset"]
            return x.float() * sc + of.to(sc)
        return np.asarray(x, dtype=np.float32) * s["scale"].numpy() + s["offset"].numpy()

    def unnormalize(self, key: str, y):
        s = self._get(key)
        if isinstance(y, torch.Tensor):
            sc, of = s["scale"].to(y.device, y.dtype), s["offset"].to(y.device, y.dtype)
            return (y - of) / sc
        return (np.asarray(y, dtype=np.float32) - s["offset"].numpy()) / s["scale"].numpy()

    def __contains__(self, key: str) -> bool:
        return key in self.stats

    @property
    def keys(self) -> list[str]:
        return list(self.stats)

    # ------------------------------------------------------------------ io
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{k}/{name}": t.contiguous() for k, st in self.stats.items() for name, t in st.items()}

    def metadata(self) -> dict[str, str]:
        """String metadata for safetensors: the mode of every key."""
        return {"modes": json.dumps({k: m.value for k, m in self.modes.items()})}

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Normalizer:
        if "modes" not in metadata:
            raise ValueError("normalizer file has no 'modes' metadata")
        norm = cls()
        for key, mode in json.loads(metadata["modes"]).items():
            missing = [s for s in _STATS if f"{key}/{s}" not in tensors]
            if missing:
                raise KeyError(f"normalizer stats for {key!r} are missing {missing}")
            norm.modes[key] = NormMode(mode)
            norm.stats[key] = {s: tensors[f"{key}/{s}"].float() for s in _STATS}
        return norm

    def __repr__(self) -> str:
        return f"Normalizer({ {k: m.value for k, m in self.modes.items()} })"
