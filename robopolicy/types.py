"""Observation and action specifications shared by data, policies, envs and control.

An observation is a mapping ``key -> array``. Keys are the Zarr field names of the
episode store: low-dim fields (``state``, ``eef_pos`` ...) and images (``image.<camera>``,
uint8 HWC in storage, float CHW in the model).

Shapes used throughout the project::

    obs[key]   : (B, To, *shape)      training batch / policy input
    action     : (B, H, Da)           H = horizon, Da = action dim
    executed   : action[:, To-1 : To-1+Ta]
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

IMAGE_PREFIX = "image."
GOAL_PREFIX = "goal."
"""A goal frame of observation key ``k`` is passed to a goal-conditioned policy as
``obs["goal." + k]`` of shape (B, 1, ...) (training batches: the window's extra of that name)."""


class FieldKind(str, enum.Enum):
    """What a field holds; decides its encoder and its normalization."""

    LOW_DIM = "low_dim"
    IMAGE = "image"


def kind_of_key(key: str) -> FieldKind:
    """Images are the fields named ``image.<camera>``; everything else is low-dim."""
    return FieldKind.IMAGE if key.startswith(IMAGE_PREFIX) else FieldKind.LOW_DIM


@dataclass(frozen=True)
class FieldSpec:
    """One observation field: its key, per-step shape, kind and (optional) units."""

    key: str
    shape: tuple[int, ...]
    kind: FieldKind = FieldKind.LOW_DIM
    units: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("field key must be a non-empty string")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "kind", FieldKind(self.kind))
        if any(s <= 0 for s in self.shape):
            raise ValueError(f"field {self.key!r}: shape must be positive, got {self.shape}")
        if self.kind is FieldKind.IMAGE and len(self.shape) != 3:
            raise ValueError(f"image field {self.key!r} must be (H, W, C), got {self.shape}")

    def to_dict(self) -> dict:
        return {"key": self.key, "shape": list(self.shape), "kind": self.kind.value, "units": self.units}

    @classmethod
    def from_dict(cls, d: Mapping) -> FieldSpec:
        return cls(d["key"], tuple(d["shape"]), FieldKind(d.get("kind", "low_dim")), d.get("units", ""))


@dataclass(frozen=True)
class ObservationSpec:
    """The fields a policy reads, in order (low-dim fields are concatenated in this order)."""

    fields: tuple[FieldSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        keys = [f.key for f in self.fields]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate observation keys: {keys}")
        if not keys:
            raise ValueError("an observation spec needs at least one field")

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.fields]

    @property
    def low_dim(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind is FieldKind.LOW_DIM]

    @property
    def images(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.kind is FieldKind.IMAGE]

    def __getitem__(self, key: str) -> FieldSpec:
        for f in self.fields:
            if f.key == key:
                return f
        raise KeyError(f"observation key {key!r} not in spec (have {self.keys})")

    def validate(self, obs: Mapping[str, object], leading: int | None = None) -> None:
        """Check that ``obs`` holds every declared key with shape ``(*lead, *field.shape)``.

        ``leading`` is the number of leading batch/time dims expected (None: any).
        Raises ``KeyError`` / ``ValueError`` naming the offending key.
        """
        for f in self.fields:
            if f.key not in obs:
                raise KeyError(f"observation is missing key {f.key!r} (expected keys {self.keys})")
            shape = tuple(getattr(obs[f.key], "shape", ()))
            n = len(f.shape)
            if shape[len(shape) - n :] != f.shape or len(shape) < n:
                raise ValueError(f"observation key {f.key!r}: expected trailing shape {f.shape}, got {shape}")
            if leading is not None and len(shape) - n != leading:
                raise ValueError(
                    f"observation key {f.key!r}: expected {leading} leading dims before {f.shape}, got shape {shape}"
                )

    def validate_batch(self, obs: Mapping[str, object], n_obs_steps: int) -> int:
        """Check a policy input ``{key: (B, To, *field.shape)}`` and return ``B``.

        Every declared key must be present with exactly ``(B, To, *field.shape)``: ``To`` frames
        exactly (more are refused, not trimmed: which ones the caller meant is ambiguous), one
        batch size ``B >= 1`` for all keys. Errors name the key and the shape as the caller
        passed it. Raises ``TypeError`` / ``KeyError`` / ``ValueError``.
        """
        if not isinstance(obs, Mapping):
            raise TypeError(f"an observation must be a mapping {{key: (B, To, ...)}}, got {type(obs).__name__}")
        sizes: dict[str, int] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for f in self.fields:
            if f.key not in obs:
                raise KeyError(f"observation is missing key {f.key!r} (expected keys {self.keys})")
            shape = _shape_of(obs[f.key])
            n = len(f.shape)
            expected = f"(B, To, *shape) = (B, {', '.join(str(s) for s in (n_obs_steps, *f.shape))})"
            if len(shape) != n + 2 or shape[2:] != f.shape:
                hint = ""
                if len(shape) == n + 1 and shape[1:] == f.shape:
                    hint = " (is the batch dimension missing?)"
                elif len(shape) >= n and shape[len(shape) - n :] != f.shape:
                    hint = f" (the trailing dims must be {f.shape})"
                raise ValueError(f"observation key {f.key!r}: expected shape {expected}, got {shape}{hint}")
            if shape[1] != n_obs_steps:
                fix = f"; pass the newest with obs[{f.key!r}][:, -{n_obs_steps}:]" if shape[1] > n_obs_steps else ""
                raise ValueError(
                    f"observation key {f.key!r} has {shape[1]} frames (shape {shape}), the policy takes "
                    f"exactly To={n_obs_steps} (the newest last){fix}"
                )
            sizes[f.key], shapes[f.key] = shape[0], shape
        if len(set(sizes.values())) > 1:
            raise ValueError(f"observation keys disagree on the batch size B: {sizes}")
        key = self.fields[0].key
        if sizes[key] == 0:
            raise ValueError(f"empty batch: observation key {key!r} has shape {shapes[key]}; pass at least one row")
        return sizes[key]

    def to_dict(self) -> dict:
        return {"fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, d: Mapping) -> ObservationSpec:
        return cls(tuple(FieldSpec.from_dict(f) for f in d["fields"]))


@dataclass(frozen=True)
class ActionSpec:
    """Names, units and limits of every action dimension; which are discrete (grippers).

    ``low``/``high`` are the limits in env units. Discrete dims take only the values
    ``low`` or ``high`` (e.g. gripper -1 open / +1 close).
    """

    names: tuple[str, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    units: tuple[str, ...] = ()
    discrete: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.names)
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "low", tuple(float(x) for x in self.low))
        object.__setattr__(self, "high", tuple(float(x) for x in self.high))
        object.__setattr__(self, "units", tuple(self.units) if self.units else ("",) * n)
        object.__setattr__(self, "discrete", tuple(bool(x) for x in self.discrete) if self.discrete else (False,) * n)
        for name in ("low", "high", "units", "discrete"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"action spec: {name} has {len(getattr(self, name))} entries, names has {n}")
        if n == 0:
            raise ValueError("action spec needs at least one dimension")
        bad = [self.names[i] for i in range(n) if not self.low[i] < self.high[i]]
        if bad:
            raise ValueError(f"action spec: low must be < high for dims {bad}")

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def discrete_mask(self) -> np.ndarray:
        return np.asarray(self.discrete, dtype=bool)

    def clip(self, action: np.ndarray) -> np.ndarray:
        """Clamp to limits; discrete dims snap to the nearer of low/high."""
        a = np.clip(action, self.low, self.high)
        if any(self.discrete):
            m = self.discrete_mask
            lo, hi = np.asarray(self.low)[m], np.asarray(self.high)[m]
            a[..., m] = np.where(a[..., m] >= (lo + hi) / 2, hi, lo)
        return a

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "low": list(self.low),
            "high": list(self.high),
            "units": list(self.units),
            "discrete": list(self.discrete),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> ActionSpec:
        missing = [k for k in ("names", "low", "high") if k not in d]
        if missing:
            raise KeyError(f"action spec is missing {missing}")
        return cls(
            tuple(d["names"]),
            tuple(d["low"]),
            tuple(d["high"]),
            tuple(d.get("units", ())),
            tuple(d.get("discrete", ())),
        )


def osc_pose_action_spec() -> ActionSpec:
    """robosuite OSC_POSE delta actions: 3 position, 3 axis-angle rotation, 1 gripper.

    Normalized controller inputs in [-1, 1], scaled by robosuite to +-0.05 m and +-0.5 rad
    per step; gripper -1 open, +1 close (discrete).
    """
    return ActionSpec(
        names=("dx", "dy", "dz", "drx", "dry", "drz", "gripper"),
        low=(-1.0,) * 7,
        high=(1.0,) * 7,
        units=("0.05m", "0.05m", "0.05m", "0.5rad", "0.5rad", "0.5rad", "open/close"),
        discrete=(False,) * 6 + (True,),
    )


@dataclass(frozen=True)
class ChunkTiming:
    """Which slice of a predicted chunk is executed: ``[n_obs_steps-1, n_obs_steps-1+n_action_steps)``."""

    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8

    def __post_init__(self) -> None:
        if self.n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {self.n_obs_steps}")
        if self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError(
                f"n_obs_steps-1+n_action_steps ({self.n_obs_steps - 1 + self.n_action_steps}) "
                f"exceeds horizon {self.horizon}"
            )

    @property
    def executed(self) -> slice:
        return slice(self.n_obs_steps - 1, self.n_obs_steps - 1 + self.n_action_steps)


def _shape_of(x: object) -> tuple[int, ...]:
    """The shape of an array, tensor or nested list, exactly as passed."""
    shape = getattr(x, "shape", None)
    return tuple(int(d) for d in (shape if shape is not None else np.shape(x)))


def stack_obs(frames: Sequence[Mapping[str, np.ndarray]], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Stack a list of per-step observations into ``{key: (T, *shape)}``."""
    return {k: np.stack([f[k] for f in frames]) for k in keys}


__all__ = [
    "GOAL_PREFIX",
    "IMAGE_PREFIX",
    "FieldKind",
    "FieldSpec",
    "ObservationSpec",
    "ActionSpec",
    "ChunkTiming",
    "kind_of_key",
    "osc_pose_action_spec",
    "stack_obs",
]
