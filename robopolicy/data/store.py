"""Zarr episode store, layout-compatible with diffusion_policy's ``ReplayBuffer``.

Layout (Zarr v3 by default, v2 on request; v2 stores written by diffusion_policy open as is)::

    <root>/                       attrs: schema_version, control_rate, action_spec, source
      data/<field>   (N, *shape)  every field concatenated over time, N = total steps
      meta/episode_ends (E,) int64   cumulative exclusive ends: episode i is [ends[i-1], ends[i])
      meta/episode_metadata (E,) str JSON per episode (seed, success, teleop device, task...)

Field names are the observation keys (``state``, ``eef_pos``, ``image.agentview``...). Zarr
accepts dots in array names in both formats, so no name mapping is needed; ``/`` is refused.

Chunks and codecs: images (``image.*``: uint8, (H, W, C) per step) are one frame per chunk,
Blosc zstd; in Zarr v3 these chunks are grouped into ~4 MB shards (one file per shard instead of
one per frame: appends are ~3x faster and a 20k-frame store is ~100 files, not 40k; a sample
still decodes only the frames it reads). Low-dim fields use time chunks of ~2 MB
(diffusion_policy's ``get_optimal_chunks``), Blosc lz4 with byte shuffle.

Crash safety of :meth:`EpisodeStore.add_episode`: the episode is validated first (nothing is
written if it is wrong), then the data arrays are grown and their tail written, then the
episode's metadata, and ``meta/episode_ends`` last. Every key write of a local store is atomic
(zarr writes a temporary file and renames it). A process killed mid-append therefore leaves
data arrays longer than ``episode_ends[-1]`` (and maybe one extra metadata entry, or a grown
``episode_ends`` whose new entry is still the fill value 0): opening in mode ``"a"`` rolls that
tail back with a warning, mode ``"r"`` ignores it with a warning. Episodes whose end was
written are never touched. ``.zarr.zip`` stores open read-only (a zip is not crash-safe).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec

from robopolicy.types import ActionSpec, FieldKind, kind_of_key

SCHEMA_VERSION = 1
FORMAT_NAME = "robopolicy.episode_store"
LOW_DIM_CHUNK_BYTES = 2_000_000
IMAGE_SHARD_BYTES = 4_000_000
IMAGE_SHARD_MAX_FRAMES = 256  # keeps the per-shard chunk index (16 B/frame) small
_META_CHUNK = 1024


def optimal_time_chunk(step_shape: tuple[int, ...], dtype: np.dtype, target_bytes: int = LOW_DIM_CHUNK_BYTES) -> int:
    """Time-chunk length giving ~``target_bytes`` chunks with the trailing dims whole."""
    step_bytes = max(1, int(np.prod(step_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(1, target_bytes // step_bytes)


def _compressor(kind: FieldKind, zarr_format: int) -> Any:
    if kind is FieldKind.IMAGE:
        if zarr_format == 2:
            return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)
        return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    if zarr_format == 2:
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def _is_zip(path: Path) -> bool:
    return path.suffix == ".zip"


class EpisodeStore:
    """Episodes of named per-step arrays in one Zarr group. See the module docstring.

    Use :meth:`create` or :meth:`open`; ``store[field]`` is the raw zarr array ``(N, *shape)``.
    """

    def __init__(self, root: zarr.Group, path: Path | None, mode: str, zip_store: Any = None) -> None:
        self._root = root
        self.path = path
        self.mode = mode
        self._zip = zip_store
        self._ends = np.zeros(0, dtype=np.int64)
        self._meta_cache: list[dict] | None = None
        self._check_and_recover()

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        action_spec: ActionSpec | None = None,
        control_rate: float | None = None,
        source: str = "",
        zarr_format: int = 3,
        overwrite: bool = False,
    ) -> EpisodeStore:
        """Create an empty store at ``path`` (a directory). ``FileExistsError`` if it exists."""
        path = Path(path)
        if zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format}")
        if _is_zip(path):
            raise ValueError(f"cannot create {path}: write a directory store (a .zip is not crash-safe)")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists (pass overwrite=True to replace it)")
        if control_rate is not None and not control_rate > 0:
            raise ValueError(f"control_rate must be > 0, got {control_rate}")
        root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
        root.attrs.update(
            {
                "format": FORMAT_NAME,
                "schema_version": SCHEMA_VERSION,
                "control_rate": None if control_rate is None else float(control_rate),
                "action_spec": None if action_spec is None else action_spec.to_dict(),
                "source": source,
            }
        )
        root.require_group("data")
        meta = root.require_group("meta")
        meta.create_array(
            "episode_ends", shape=(0,), chunks=(_META_CHUNK,), dtype="int64", compressors=None, fill_value=0
        )
        meta.create_array("episode_metadata", shape=(0,), chunks=(_META_CHUNK,), dtype=str)
        return cls(root, path, "a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> EpisodeStore:
        """Open an existing store (v2 or v3 directory, or ``.zarr.zip`` read-only).

        ``mode`` is ``"r"`` (read-only) or ``"a"`` (append; rolls back a partly written tail).
        """
        path = Path(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if not path.exists():
            raise FileNotFoundError(f"no episode store at {path}")
        zip_store = None
        try:
            if _is_zip(path):
                if mode != "r":
                    raise ValueError(f"{path}: a .zarr.zip store opens read-only (mode 'r')")
                zip_store = zarr.storage.ZipStore(str(path), mode="r")
                root = zarr.open_group(zip_store, mode="r")
            else:
                root = zarr.open_group(str(path), mode="r" if mode == "r" else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError, ValueError) as e:
            if isinstance(e, ValueError) and "read-only" in str(e):
                raise
            raise ValueError(f"not an episode store: {path} is not a Zarr group ({e})") from None
        if "meta" not in root or "episode_ends" not in root["meta"]:
            raise ValueError(f"not an episode store: {path} has no meta/episode_ends")
        return cls(root, path, mode, zip_store)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:  # reopen by path in the unpickling process (DataLoader workers)
        if self.path is None:
            raise TypeError("an in-memory episode store cannot be pickled")
        return {"path": str(self.path), "mode": "r"}

    def __setstate__(self, state: dict) -> None:
        other = EpisodeStore.open(state["path"], mode="r")
        self.__dict__.update(other.__dict__)

    # ------------------------------------------------------------------ consistency
    def _valid_ends(self, raw: np.ndarray) -> int:
        """Length of the longest valid prefix of ``raw`` ends (strictly increasing, > 0)."""
        prev = 0
        for i, e in enumerate(raw):
            if e <= prev:
                return i
            prev = e
        return len(raw)

    def _check_and_recover(self) -> None:
        meta = self._root["meta"]
        raw = np.asarray(meta["episode_ends"][:], dtype=np.int64)
        n_valid = self._valid_ends(raw)
        tail: list[str] = []
        if n_valid < len(raw):
            tail.append(f"{len(raw) - n_valid} unfinished meta/episode_ends entries")
            if self.mode == "a":
                meta["episode_ends"].resize((n_valid,))
        self._ends = raw[:n_valid].copy()
        n_steps = self.n_steps
        for name, arr in self._data.arrays():
            if arr.shape[0] < n_steps:
                raise ValueError(
                    f"inconsistent store {self.path}: field {name!r} has {arr.shape[0]} steps, "
                    f"meta/episode_ends says {n_steps}"
                )
            if arr.shape[0] > n_steps:
                tail.append(f"{arr.shape[0] - n_steps} steps of {name!r}")
                if self.mode == "a":
                    arr.resize((n_steps, *arr.shape[1:]))
        if "episode_metadata" in meta and meta["episode_metadata"].shape[0] > self.n_episodes:
            tail.append(f"{meta['episode_metadata'].shape[0] - self.n_episodes} episode_metadata entries")
            if self.mode == "a":
                meta["episode_metadata"].resize((self.n_episodes,))
        if tail:
            action = "rolled back" if self.mode == "a" else "ignored (open with mode='a' to roll it back)"
            warnings.warn(
                f"episode store {self.path}: partly written tail episode {action}: "
                f"dropped {', '.join(sorted(tail))} past the last complete episode ({self.n_episodes})",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ attributes
    @property
    def _data(self) -> zarr.Group:
        return self._root["data"]

    @property
    def zarr_format(self) -> int:
        return int(self._root.metadata.zarr_format)

    @property
    def attrs(self) -> dict:
        return dict(self._root.attrs)

    @property
    def schema_version(self) -> int:
        """0 for a foreign store (e.g. written by diffusion_policy) with no robopolicy attrs."""
        return int(self._root.attrs.get("schema_version", 0))

    @property
    def control_rate(self) -> float | None:
        r = self._root.attrs.get("control_rate")
        return None if r is None else float(r)

    @property
    def action_spec(self) -> ActionSpec | None:
        d = self._root.attrs.get("action_spec")
        return None if d is None else ActionSpec.from_dict(d)

    @property
    def source(self) -> str:
        return str(self._root.attrs.get("source", ""))

    def set_attrs(self, **attrs: Any) -> None:
        """Update store attributes (``control_rate``, ``source``, ``action_spec``...)."""
        self._require_writable()
        if isinstance(attrs.get("action_spec"), ActionSpec):
            attrs["action_spec"] = attrs["action_spec"].to_dict()
        self._root.attrs.update(attrs)

    # ------------------------------------------------------------------ episodes
    @property
    def episode_ends(self) -> np.ndarray:
        """(E,) int64 cumulative exclusive ends (a copy)."""
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self._ends, prepend=0)

    def episode_slice(self, i: int) -> slice:
        n = self.n_episodes
        if not -n <= i < n:
            raise IndexError(f"episode {i} out of range ({n} episodes)")
        i %= n
        return slice(int(self._ends[i - 1]) if i > 0 else 0, int(self._ends[i]))

    def episode(self, i: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """``{field: (L, *shape)}`` of episode ``i`` (all fields unless ``keys``)."""
        s = self.episode_slice(i)
        return {k: self[k][s] for k in (keys if keys is not None else self.keys())}

    @property
    def fields(self) -> dict[str, zarr.Array]:
        return {name: arr for name, arr in sorted(self._data.arrays())}

    def keys(self) -> list[str]:
        return sorted(name for name, _ in self._data.arrays())

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> zarr.Array:
        if key not in self._data:
            raise KeyError(f"field {key!r} not in store {self.path} (fields: {self.keys()})")
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return self.n_episodes

    def __repr__(self) -> str:
        return (
            f"EpisodeStore({str(self.path)!r}, episodes={self.n_episodes}, steps={self.n_steps}, fields={self.keys()})"
        )

    # ------------------------------------------------------------------ per-episode metadata
    @property
    def episodes_metadata(self) -> list[dict]:
        """One dict per episode; ``{}`` where none was recorded (e.g. diffusion_policy stores)."""
        if self._meta_cache is None:
            meta = self._root["meta"]
            raw = meta["episode_metadata"][: self.n_episodes] if "episode_metadata" in meta else []
            out = [json.loads(str(s)) if str(s) else {} for s in raw]
            self._meta_cache = out + [{} for _ in range(self.n_episodes - len(out))]
        return [dict(m) for m in self._meta_cache]

    def episode_metadata(self, i: int) -> dict:
        self.episode_slice(i)  # range check
        return self.episodes_metadata[i]

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if self.mode != "a":
            raise ValueError(f"episode store {self.path} is open read-only (open with mode='a' to write)")

    def _validate_episode(self, data: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        if not data:
            raise ValueError("an episode needs at least one field")
        arrays = {}
        for k, v in data.items():
            if not isinstance(k, str) or not k or "/" in k:
                raise ValueError(f"invalid field name {k!r} (non-empty, no '/')")
            a = np.asarray(v)
            if a.ndim < 1:
                raise ValueError(f"field {k!r}: expected (L, *shape), got a scalar")
            if a.dtype == object or a.dtype.kind in "USV":
                raise ValueError(f"field {k!r}: dtype {a.dtype} is not numeric")
            if kind_of_key(k) is FieldKind.IMAGE and (a.dtype != np.uint8 or a.ndim != 4):
                raise ValueError(f"image field {k!r} must be uint8 (L, H, W, C), got {a.dtype} {a.shape}")
            arrays[k] = a
        lengths = {k: a.shape[0] for k, a in arrays.items()}
        length = next(iter(lengths.values()))
        if length == 0 or len(set(lengths.values())) != 1:
            raise ValueError(f"all fields of an episode must have the same length > 0, got {lengths}")
        if self.n_episodes > 0:
            existing = self.fields
            missing, extra = sorted(set(existing) - set(arrays)), sorted(set(arrays) - set(existing))
            if missing or extra:
                raise ValueError(f"episode fields differ from the store's: missing {missing}, unexpected {extra}")
            for k, a in arrays.items():
                z = existing[k]
                if a.shape[1:] != z.shape[1:]:
                    raise ValueError(f"field {k!r}: per-step shape {a.shape[1:]} != store's {z.shape[1:]}")
                if a.dtype != z.dtype:
                    raise ValueError(f"field {k!r}: dtype {a.dtype} != store's {z.dtype}")
        return arrays, length

    def _create_field(self, key: str, a: np.ndarray) -> zarr.Array:
        kind = kind_of_key(key)
        step = a.shape[1:]
        t = 1 if kind is FieldKind.IMAGE else optimal_time_chunk(step, a.dtype)
        shards = None
        if kind is FieldKind.IMAGE and self.zarr_format == 3:  # one frame per chunk, ~4 MB per file
            shards = (min(IMAGE_SHARD_MAX_FRAMES, optimal_time_chunk(step, a.dtype, IMAGE_SHARD_BYTES)), *step)
        return self._data.create_array(
            key,
            shape=(0, *step),
            chunks=(t, *step),
            shards=shards,
            dtype=a.dtype,
            compressors=_compressor(kind, self.zarr_format),
            fill_value=0,
        )

    def add_episode(self, data: Mapping[str, np.ndarray], metadata: Mapping[str, Any] | None = None) -> int:
        """Append one episode ``{field: (L, *shape)}``; returns its index. See module docstring."""
        self._require_writable()
        arrays, length = self._validate_episode(data)
        meta_json = json.dumps(dict(metadata or {}), default=_json_default)  # fail before writing
        if self.n_episodes == 0:  # a fresh store (or one rolled back to empty) may change its fields
            for name in list(self._data.array_keys()):
                del self._data[name]
        start, end = self.n_steps, self.n_steps + length
        existing = self.fields
        for k, a in arrays.items():
            z = existing.get(k) or self._create_field(k, a)
            z.resize((end, *a.shape[1:]))
            z[start:end] = a
        meta = self._root["meta"]
        if "episode_metadata" not in meta:
            meta.create_array("episode_metadata", shape=(0,), chunks=(_META_CHUNK,), dtype=str)
        mz = meta["episode_metadata"]
        n = self.n_episodes
        old = mz.shape[0]
        mz.resize((n + 1,))
        if old < n:  # a store written without metadata: pad with empty entries
            mz[old:n] = np.array(["{}"] * (n - old), dtype=object)
        mz[n : n + 1] = np.array([meta_json], dtype=object)
        ez = meta["episode_ends"]
        ez.resize((n + 1,))
        ez[n : n + 1] = np.array([end], dtype=np.int64)
        self._ends = np.append(self._ends, np.int64(end))
        if self._meta_cache is not None:
            self._meta_cache.append(json.loads(meta_json))
        return n

    # ------------------------------------------------------------------ checks
    def validate(self) -> list[str]:
        """Problems found in the store (empty list: OK). Reads the low-dim arrays in full."""
        problems: list[str] = []
        if self.schema_version > SCHEMA_VERSION:
            problems.append(f"schema_version {self.schema_version} is newer than supported ({SCHEMA_VERSION})")
        if self.n_episodes == 0:
            problems.append("store has no episodes")
        for k, z in self.fields.items():
            if z.shape[0] != self.n_steps:
                problems.append(f"field {k!r} has {z.shape[0]} steps, episode_ends says {self.n_steps}")
            if kind_of_key(k) is FieldKind.IMAGE:
                if z.dtype != np.uint8 or z.ndim != 4:
                    problems.append(f"image field {k!r} must be uint8 (N, H, W, C), got {z.dtype} {z.shape}")
            elif z.dtype.kind == "f":
                x = z[: self.n_steps]
                bad = int(np.count_nonzero(~np.isfinite(x)))
                if bad:
                    problems.append(f"field {k!r} has {bad} non-finite values")
        if self.n_episodes and "action" not in self.fields:
            problems.append("no 'action' field")
        spec = self._root.attrs.get("action_spec")
        if spec is not None:
            try:
                a_spec = ActionSpec.from_dict(spec)
            except (KeyError, ValueError) as e:
                problems.append(f"invalid action_spec attribute: {e}")
            else:
                if "action" in self.fields and self["action"].shape[1:] != (a_spec.dim,):
                    problems.append(f"action_spec has {a_spec.dim} dims, field 'action' is {self['action'].shape[1:]}")
        raw = self._root["meta"]["episode_ends"]
        if raw.shape[0] != self.n_episodes:
            problems.append(f"meta/episode_ends has {raw.shape[0] - self.n_episodes} invalid trailing entries")
        meta = self._root["meta"]
        if "episode_metadata" in meta and meta["episode_metadata"].shape[0] > self.n_episodes:
            problems.append("meta/episode_metadata has more entries than episodes")
        return problems


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(f"episode metadata value {o!r} is not JSON-serializable")
