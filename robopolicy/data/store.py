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

Checksums: Blosc has none (overwritten bytes that still decompress read back as wrong values
without an error). New v3 stores therefore append a ``crc32c`` codec to every chunk (data and
meta arrays; a shard's index always has one), so damaged bytes fail to decode. v2 stores get no
checksum (diffusion_policy's zarr 2 could not read them back); there, and in v3 stores written
before this, only damage that breaks decompression is found.

Every chunk is written, even one that holds only the fill value 0 (zarr's default skips those;
the store attribute ``all_chunks_written`` records that a store was created this way), so a
chunk file missing inside the written range is damage: zarr itself would silently read it as
zeros. :meth:`EpisodeStore.validate` looks for missing chunk files (cheap) and, with
``deep=True``, decodes every chunk of every array. A read of a damaged chunk through the store
(``store[field][...]``, :meth:`EpisodeStore.episode`) raises :class:`StoreCorruptError` naming
the field and the chunk instead of a bare codec error.

Crash safety of :meth:`EpisodeStore.add_episode`: the episode is validated first (nothing is
written if it is wrong), then the data arrays are grown and their tail written, then the
episode's metadata, and ``meta/episode_ends`` last (resized, then its new entry written). Every
key write of a local store is atomic (zarr writes a temporary file and renames it). A process
killed mid-append can therefore leave exactly this *partial tail* past the last complete
episode, and nothing else:

* data arrays longer than ``episode_ends[-1]``, some or all of them, all by the same number of
  steps (one episode; chunks past the end may be partly written or absent);
* maybe one extra ``meta/episode_metadata`` entry;
* maybe ``episode_ends`` grown by one entry that still reads as the fill value 0 -- then every
  data array holds the whole episode and the metadata entry is there.

Opening in mode ``"a"`` rolls exactly that back (with a warning saying what was dropped), mode
``"r"`` ignores it (with a warning); ``robopolicy data repair`` does it explicitly, keeping a
backup. Anything else -- an ``episode_ends`` entry that is not greater than the previous one
anywhere but in the last position, a missing ``episode_ends`` chunk, a data array shorter than
the episodes, fields extending past the end by different amounts -- is corruption, not a crash:
opening raises :class:`StoreCorruptError` naming the array, chunk or entry, and changes nothing
on disk. Episodes whose end was written are never touched. One case cannot be told apart: a
deleted ``episode_ends`` chunk that held only the last entry reads exactly like a crash between
the resize and the write of that entry; it is treated as the crash (at most that one episode is
rolled back, and its chunks stay on disk, see below).

A rollback shrinks the arrays without deleting the chunk files past the new end, so restoring
the array metadata (``data repair`` backs it up) undoes it; the next append overwrites them.
Do not roll back (open with mode ``"a"``, ``data repair``) a store another process is writing:
its episode in progress looks exactly like a crash tail. ``.zarr.zip`` stores open read-only
(a zip is not crash-safe).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.core.sync import sync

from robopolicy.types import ActionSpec, FieldKind, kind_of_key

SCHEMA_VERSION = 1
FORMAT_NAME = "robopolicy.episode_store"
LOW_DIM_CHUNK_BYTES = 2_000_000
IMAGE_SHARD_BYTES = 4_000_000
IMAGE_SHARD_MAX_FRAMES = 256  # keeps the per-shard chunk index (16 B/frame) small
ALL_CHUNKS_ATTR = "all_chunks_written"
_META_CHUNK = 1024
_WRITE_ALL = {"write_empty_chunks": True}
_DEEP_READ_BYTES = 64_000_000  # decoded bytes per read while checking every chunk
_MAX_UINT64 = 2**64 - 1


class StoreCorruptError(ValueError):
    """The store is damaged or inconsistent in a way a crash mid-append cannot explain.

    Raised on open (nothing on disk was changed) and when a chunk cannot be decoded; the
    message names the array (``field 'action'``, ``meta/episode_ends``), the chunk or entry.
    """


def optimal_time_chunk(step_shape: tuple[int, ...], dtype: np.dtype, target_bytes: int = LOW_DIM_CHUNK_BYTES) -> int:
    """Time-chunk length giving ~``target_bytes`` chunks with the trailing dims whole."""
    step_bytes = max(1, int(np.prod(step_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return max(1, target_bytes // step_bytes)


def _compressors(kind: FieldKind, zarr_format: int) -> Any:
    """Blosc (zstd for images, lz4 for low-dim); in v3 followed by a crc32c checksum."""
    if zarr_format == 2:
        if kind is FieldKind.IMAGE:
            return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    if kind is FieldKind.IMAGE:
        return [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec()]
    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec()]


def _is_zip(path: Path) -> bool:
    return path.suffix == ".zip"


# ---------------------------------------------------------------------- chunk helpers
def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _unit(arr: zarr.Array) -> tuple[int, ...]:
    """Shape of a stored object (file) of ``arr``: its shard if sharded, else its chunk."""
    return tuple(int(s) for s in (arr.shards or arr.chunks))


def _sharding(arr: zarr.Array) -> ShardingCodec | None:
    if arr.metadata.zarr_format != 3:
        return None
    return next((c for c in arr.metadata.codecs if isinstance(c, ShardingCodec)), None)


def _label(arr_path: str) -> str:
    """``field 'action'`` for ``data/action``; the path itself for the meta arrays."""
    group, _, name = arr_path.partition("/")
    return f"field {name!r}" if group == "data" else arr_path


def _span(arr_path: str, lo: int, hi: int) -> str:
    one, many = ("entry", "entries") if arr_path.startswith("meta/") else ("step", "steps")
    return f"{one} {lo}" if hi - lo <= 1 else f"{many} {lo}-{hi - 1}"


def _unit_name(arr: zarr.Array, u: int) -> str:
    """``chunk 3 (steps 6000-7999)`` / ``shard 1 (steps 256-511)`` for stored object ``u``."""
    t = _unit(arr)[0]
    kind = "shard" if arr.shards else "chunk"
    return f"{kind} {u} ({_span(arr.path, u * t, min((u + 1) * t, max(arr.shape[0], u * t + 1)))})"


def _err(e: BaseException) -> str:
    msg = str(e)
    return f"{type(e).__name__}: {msg[:200] + '...' if len(msg) > 200 else msg}"


def _has_checksum(arr: zarr.Array) -> bool:
    """Whether every chunk of ``arr`` carries a checksum its decoding verifies."""
    md = arr.metadata
    if md.zarr_format == 2:
        codecs = [*(md.filters or ()), md.compressor]
        return any(getattr(c, "codec_id", "") in ("crc32", "crc32c", "adler32", "fletcher32") for c in codecs if c)
    sharding = _sharding(arr)
    codecs = sharding.codecs if sharding is not None else md.codecs
    return any(isinstance(c, Crc32cCodec) for c in codecs)


def _blosc_framed(arr: zarr.Array) -> bool:
    """Whether each stored chunk of ``arr`` is exactly one Blosc frame (its header gives its size)."""
    md = arr.metadata
    if md.zarr_format == 2:
        return getattr(md.compressor, "codec_id", "") == "blosc" and not md.filters
    codecs = list(md.codecs)
    return len(codecs) == 2 and isinstance(codecs[0], BytesCodec) and isinstance(codecs[1], BloscCodec)


def _expected_keys(arr: zarr.Array, n: int, start: int = 0) -> Iterator[tuple[int, str]]:
    """``(u, key)`` of every stored object of ``arr`` that holds part of steps ``[start, n)``."""
    unit = _unit(arr)
    rest = [range(_ceil_div(int(s), c)) for s, c in zip(arr.shape[1:], unit[1:])]
    for u in range(start // unit[0], _ceil_div(n, unit[0])):
        for r in itertools.product(*rest):
            yield u, arr.metadata.encode_chunk_key((u, *r))


def _try_read(arr: zarr.Array, lo: int, hi: int) -> Exception | None:
    try:
        zarr.Array.__getitem__(arr, slice(lo, hi))  # the plain read, also for a _Field
    except Exception as e:  # noqa: BLE001  (any codec error is the damage we look for)
        return e
    return None


def _find_damage(arr: zarr.Array, lo: int, hi: int) -> list[tuple[int, str, Exception]]:
    """``(u, where, error)`` for each stored object in ``[lo, hi)`` that cannot be decoded.

    Where only some frames of a shard fail, those chunks are named (``chunk 800 (step 800) in
    shard 3``); where all fail (e.g. its index is damaged), the shard is.
    """
    t = _unit(arr)[0]
    hi = min(hi, arr.shape[0])
    out: list[tuple[int, str, Exception]] = []
    for u in range(lo // t, _ceil_div(hi, t)):
        a, b = u * t, min((u + 1) * t, arr.shape[0])
        err = _try_read(arr, a, b)
        if err is None:
            continue
        inner: list[tuple[str, Exception]] = []
        if arr.shards:
            c = int(arr.chunks[0])
            for v in range(a // c, _ceil_div(b, c)):
                e = _try_read(arr, v * c, min((v + 1) * c, b))
                if e is not None:
                    inner.append((f"chunk {v} ({_span(arr.path, v * c, min((v + 1) * c, b))}) in shard {u}", e))
            if inner and len(inner) < _ceil_div(b - a, c):
                out += [(u, where, e) for where, e in inner]
                continue
        out.append((u, _unit_name(arr, u), err))
    return out


def _axis0_range(selection: Any, n: int) -> tuple[int, int]:
    """Steps ``[lo, hi)`` that a selection of an ``(n, ...)`` array reads (all of them if unclear)."""
    if isinstance(selection, tuple):
        if not selection:
            return 0, n
        selection = selection[0]
    if isinstance(selection, slice):
        start, stop, step = selection.indices(n)
        return (start, stop) if step > 0 and stop > start else (0, n)
    if isinstance(selection, (int, np.integer)) and -n <= selection < n:
        i = int(selection) % n
        return i, i + 1
    try:
        idx = np.asarray(selection)
    except Exception:  # noqa: BLE001
        return 0, n
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    if idx.dtype.kind in "iu" and idx.size:
        idx = np.where(idx < 0, idx + n, idx)
        return max(int(idx.min()), 0), min(int(idx.max()) + 1, n)
    return 0, n


def _shrink(arr: zarr.Array, n: int) -> None:
    """Resize the first axis down to ``n``, leaving the chunk files past it in place (undoable)."""
    sync(arr.async_array.resize((n, *arr.shape[1:]), delete_outside_chunks=False))


class _Field(zarr.Array):
    """A zarr array whose reads raise :class:`StoreCorruptError` naming the field and the chunk
    when a chunk cannot be decoded, or (in a local store that writes every chunk) when a chunk
    file inside the episodes is missing -- zarr alone would return zeros for it."""

    _store_path: str = ""
    _array_dir: Path | None = None  # set where a missing chunk file is certainly damage
    _n_valid: int = 0  # steps covered by complete episodes

    def _check_present(self, lo: int, hi: int) -> None:
        if self._array_dir is None:
            return
        for u, key in _expected_keys(self, min(hi, self._n_valid), lo):
            if not (self._array_dir / key).is_file():
                path = self._store_path
                raise StoreCorruptError(
                    f"store {path}: {_label(self.path)} {_unit_name(self, u)} is missing (zarr would read it as "
                    f"zeros); `robopolicy data validate --deep {path}` checks every chunk"
                )

    def __getitem__(self, selection: Any) -> Any:
        self._check_present(*_axis0_range(selection, self.shape[0]))
        try:
            return super().__getitem__(selection)
        except (IndexError, KeyError, TypeError):  # a bad selection, not bad data
            raise
        except Exception as e:
            damage = _find_damage(self, *_axis0_range(selection, self.shape[0]))
            if not damage:
                raise
            _, where, err = damage[0]
            more = f" (and {len(damage) - 1} more in this read)" if len(damage) > 1 else ""
            path = self._store_path
            raise StoreCorruptError(
                f"store {path}: {_label(self.path)} {where} is damaged: cannot be decoded ({_err(err)}){more}; "
                f"`robopolicy data validate --deep {path}` checks every chunk"
            ) from e


@dataclass(frozen=True)
class PartialTail:
    """What a crash mid-append left past the last complete episode (see the module docstring).

    ``steps``: field -> steps past ``n_steps``; ``metadata_entries``: extra
    ``meta/episode_metadata`` entries (0 or 1); ``ends_entries``: unwritten trailing
    ``meta/episode_ends`` entries (0 or 1). Falsy when there is no such tail.
    """

    n_episodes: int
    n_steps: int
    steps: dict[str, int] = field(default_factory=dict)
    metadata_entries: int = 0
    ends_entries: int = 0

    def __bool__(self) -> bool:
        return bool(self.metadata_entries or self.ends_entries or any(self.steps.values()))

    def describe(self) -> str:
        parts = [f"{n} steps of {k!r}" for k, n in sorted(self.steps.items()) if n]
        if self.metadata_entries:
            parts.append(f"{self.metadata_entries} meta/episode_metadata entry")
        if self.ends_entries:
            parts.append(f"{self.ends_entries} unwritten meta/episode_ends entry (fill value 0)")
        return ", ".join(parts) or "nothing"

    def to_dict(self) -> dict:
        return {
            "episodes_kept": self.n_episodes,
            "steps_kept": self.n_steps,
            "steps_dropped": {k: n for k, n in sorted(self.steps.items()) if n},
            "episode_metadata_entries_dropped": self.metadata_entries,
            "episode_ends_entries_dropped": self.ends_entries,
        }


class EpisodeStore:
    """Episodes of named per-step arrays in one Zarr group. See the module docstring.

    Use :meth:`create` or :meth:`open`; ``store[field]`` is the zarr array ``(N, *shape)`` (a
    subclass whose reads raise :class:`StoreCorruptError` naming the chunk they cannot decode).
    """

    def __init__(self, root: zarr.Group, path: Path | None, mode: str, zip_store: Any = None) -> None:
        self._root = root
        self.path = path
        self.mode = mode
        self._zip = zip_store
        self._ends = np.zeros(0, dtype=np.int64)
        self._meta_cache: list[dict] | None = None
        self._tail = PartialTail(0, 0)
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
                ALL_CHUNKS_ATTR: True,
            }
        )
        root.require_group("data")
        meta = root.require_group("meta")
        v3 = zarr_format == 3
        meta.create_array(
            "episode_ends",
            shape=(0,),
            chunks=(_META_CHUNK,),
            dtype="int64",
            compressors=[Crc32cCodec()] if v3 else None,
            fill_value=0,
            config=_WRITE_ALL,
        )
        _create_metadata_array(meta, zarr_format)
        return cls(root, path, "a")

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> EpisodeStore:
        """Open an existing store (v2 or v3 directory, or ``.zarr.zip`` read-only).

        ``mode`` is ``"r"`` (read-only; a partly written tail is ignored) or ``"a"`` (append;
        the tail is rolled back). :class:`StoreCorruptError` (nothing changed) if the store is
        damaged in a way a crash cannot explain.
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
        try:
            has_ends = "meta" in root and "episode_ends" in root["meta"]
        except Exception as e:  # noqa: BLE001  (e.g. a damaged zarr.json)
            raise StoreCorruptError(
                f"corrupt episode store {path}: meta/episode_ends cannot be opened ({_err(e)})"
            ) from e
        if not has_ends:
            raise ValueError(f"not an episode store: {path} has no meta/episode_ends")
        try:
            return cls(root, path, mode, zip_store)
        except BaseException:
            if zip_store is not None:
                zip_store.close()
            raise

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
        with warnings.catch_warnings():  # the parent process already warned about a tail
            warnings.simplefilter("ignore")
            other = EpisodeStore.open(state["path"], mode="r")
        self.__dict__.update(other.__dict__)

    # ------------------------------------------------------------------ consistency
    def _corrupt(self, what: str) -> StoreCorruptError:
        return StoreCorruptError(
            f"corrupt episode store {self.path}: {what}. This is damage, not a partly written tail "
            "(a crash mid-append can only leave data past the last episode end, one extra metadata entry "
            "and one unwritten last episode_ends entry); nothing was changed"
        )

    def _read_raw_ends(self) -> np.ndarray:
        ez = self._root["meta"]["episode_ends"]
        if ez.ndim != 1 or np.dtype(ez.dtype).kind not in "iu":
            raise self._corrupt(f"meta/episode_ends must be a 1-d integer array, got {ez.dtype} {ez.shape}")
        m = int(ez.shape[0])
        try:
            raw = np.asarray(zarr.Array.__getitem__(ez, slice(None)), dtype=np.int64)
        except Exception as e:
            damage = _find_damage(ez, 0, m)
            where = damage[0][1] if damage else "an entry"
            raise self._corrupt(f"meta/episode_ends {where} cannot be decoded ({_err(e)})") from e
        files = self._stored_files(ez.path)
        if files is not None:
            t = _unit(ez)[0]
            for u, key in _expected_keys(ez, m):
                if key in files:
                    continue
                # the one legitimate case: grown by one entry at a chunk boundary, not yet written
                if u * t == m - 1 and raw[m - 1] == 0:
                    continue
                raise self._corrupt(f"meta/episode_ends {_unit_name(ez, u)} is missing (it reads as zeros)")
        return raw

    def _inspect(self) -> tuple[np.ndarray, PartialTail]:
        """``(episode_ends, partial tail)``; :class:`StoreCorruptError` for anything a crash cannot leave."""
        meta = self._root["meta"]
        raw = self._read_raw_ends()
        m = len(raw)
        bad = np.flatnonzero(np.diff(raw, prepend=0) <= 0)
        grown = 0
        if bad.size:
            i = int(bad[0])
            if i == m - 1 and raw[i] == 0:
                grown = 1  # killed between the resize of episode_ends and the write of its new entry
            else:
                prev = f"entry {i - 1} ({raw[i - 1]})" if i else "0"
                chunk = i // _unit(meta["episode_ends"])[0]
                raise self._corrupt(
                    f"meta/episode_ends entry {i} (chunk {chunk}) is {raw[i]}, not greater than {prev}"
                    + (f"; {bad.size} such entries of {m}" if bad.size > 1 else "")
                )
        n = m - grown
        ends = raw[:n].copy()
        end = int(ends[-1]) if n else 0
        lengths = {name: int(arr.shape[0]) for name, arr in self._arrays("data").items()}
        self._arrays("meta")
        if n:  # fields are only created with the first episode: after it, each needs its metadata
            self._check_array_docs()
        for name, length in sorted(lengths.items()):
            if length < end:
                raise self._corrupt(
                    f"field {name!r} has {length} steps, fewer than the {end} that meta/episode_ends says"
                )
        tails = {name: length - end for name, length in lengths.items() if length > end}
        if len(set(tails.values())) > 1:
            listed = ", ".join(f"{k!r} +{v}" for k, v in sorted(tails.items()))
            raise self._corrupt(f"fields extend past the last episode end (step {end}) by different amounts ({listed})")
        n_meta = int(meta["episode_metadata"].shape[0]) if "episode_metadata" in meta else 0
        if n_meta > n + 1:
            raise self._corrupt(f"meta/episode_metadata has {n_meta} entries for {n} episodes")
        if grown:
            short = sorted(set(lengths) - set(tails))
            if not lengths or short:
                raise self._corrupt(
                    f"meta/episode_ends entry {n} is 0 (unwritten) but "
                    + (f"fields {short} hold no further episode" if short else "the store has no data arrays")
                )
            if n_meta != n + 1:
                raise self._corrupt(
                    f"meta/episode_ends entry {n} is 0 (unwritten) but meta/episode_metadata has {n_meta} entries, "
                    f"not {n + 1}"
                )
        return ends, PartialTail(n, end, tails, int(n_meta == n + 1), grown)

    def _arrays(self, group: str) -> dict[str, zarr.Array]:
        """The arrays of ``data`` or ``meta``; an unreadable array metadata document is corruption."""
        if group not in self._root:
            raise self._corrupt(f"the {group}/ group is missing")
        g = self._root[group]
        try:
            return dict(g.arrays())
        except Exception as e:  # find the array whose metadata is damaged
            local = self.path is not None and not _is_zip(self.path) and (self.path / group).is_dir()
            for name in sorted(d.name for d in (self.path / group).iterdir() if d.is_dir()) if local else []:
                try:
                    g[name]
                except Exception as e2:  # noqa: BLE001
                    raise self._corrupt(f"{group}/{name}: its array metadata cannot be read ({_err(e2)})") from e2
            raise self._corrupt(f"the arrays of {group}/ cannot be listed ({_err(e)})") from e

    def _check_array_docs(self) -> None:
        """A folder under data/ or meta/ holding chunks but no array metadata: zarr skips it, so
        the field (or the episode metadata) would silently vanish."""
        if self.path is None or _is_zip(self.path):
            return
        for group in ("data", "meta"):
            for d in sorted((self.path / group).iterdir()):
                if (
                    d.is_dir()
                    and not any((d / doc).is_file() for doc in ("zarr.json", ".zarray", ".zgroup"))
                    and any(f.is_file() for f in d.rglob("*"))
                ):
                    raise self._corrupt(
                        f"{group}/{d.name} holds files but no array metadata (zarr.json / .zarray); "
                        f"zarr would silently drop {_label(f'{group}/{d.name}')}"
                    )

    def _check_and_recover(self) -> None:
        self._ends, tail = self._inspect()
        self._tail = tail
        if not tail:
            return
        if self.mode == "a":
            self._roll_back(tail)
            action = "rolled back"
        else:
            action = "ignored (open with mode='a' or run `robopolicy data repair` to roll it back)"
        warnings.warn(
            f"episode store {self.path}: partly written tail episode {action}: "
            f"dropped {tail.describe()} past the last complete episode ({self.n_episodes})",
            stacklevel=4,
        )

    def _roll_back(self, tail: PartialTail) -> None:
        """Undo a partial tail in the reverse order of :meth:`add_episode` (a crash here leaves a tail too)."""
        meta = self._root["meta"]
        if tail.ends_entries:
            _shrink(meta["episode_ends"], tail.n_episodes)
        if tail.metadata_entries:
            _shrink(meta["episode_metadata"], tail.n_episodes)
        for name in sorted(tail.steps):
            _shrink(self._data[name], tail.n_steps)

    @property
    def partial_tail(self) -> PartialTail:
        """Mode ``"r"``: the partly written tail being ignored; mode ``"a"``: the one rolled back
        on open. Falsy when there was none."""
        return self._tail

    # ------------------------------------------------------------------ attributes
    @property
    def _data(self) -> zarr.Group:
        return self._root["data"]

    def _wrap(self, arr: zarr.Array) -> _Field:
        f = _Field(arr.async_array)
        f._store_path = str(self.path)
        if self.path is not None and not _is_zip(self.path) and self._root.attrs.get(ALL_CHUNKS_ATTR):
            f._array_dir = self.path / arr.path
            f._n_valid = self.n_steps if arr.path.startswith("data/") else self.n_episodes
        return f

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

    def generation_status(self) -> dict | None:
        """The ``generation`` attribute of ``demos generate``, read defensively; None if absent.

        ``{"requested", "n_success", "seed_start", "next_seed"}`` (ints or None) and
        ``complete`` (bool: the recorded flag, else ``n_success >= requested``).
        """
        gen = self._root.attrs.get("generation")
        if not isinstance(gen, dict):
            return None

        def num(key: str) -> int | None:
            v = gen.get(key)
            return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

        out: dict[str, Any] = {k: num(k) for k in ("requested", "n_success", "seed_start", "next_seed")}
        complete = gen.get("complete")
        if not isinstance(complete, bool):
            req, done = out["requested"], out["n_success"]
            complete = req is not None and done is not None and done >= req
        out["complete"] = complete
        return out

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
        return {name: self._wrap(arr) for name, arr in sorted(self._data.arrays())}

    def keys(self) -> list[str]:
        return sorted(name for name, _ in self._data.arrays())

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __getitem__(self, key: str) -> zarr.Array:
        if key not in self._data:
            raise KeyError(f"field {key!r} not in store {self.path} (fields: {self.keys()})")
        return self._wrap(self._data[key])

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
            raw: Any = []
            if "episode_metadata" in meta:
                mz = self._wrap(meta["episode_metadata"])
                raw = mz[: min(mz.shape[0], self.n_episodes)]
            out = []
            for i, s in enumerate(raw):
                try:
                    out.append(json.loads(str(s)) if str(s) else {})
                except ValueError as e:
                    raise StoreCorruptError(
                        f"store {self.path}: meta/episode_metadata entry {i} is not valid JSON ({e})"
                    ) from None
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
            compressors=_compressors(kind, self.zarr_format),
            fill_value=0,
            config=_WRITE_ALL,
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
        existing = {k: z.with_config(_WRITE_ALL) for k, z in self._data.arrays()}
        for k, a in arrays.items():
            z = existing[k] if k in existing else self._create_field(k, a)
            z.resize((end, *a.shape[1:]))
            z[start:end] = a
        meta = self._root["meta"]
        if "episode_metadata" not in meta:
            _create_metadata_array(meta, self.zarr_format)
        mz = meta["episode_metadata"].with_config(_WRITE_ALL)
        n = self.n_episodes
        old = mz.shape[0]
        mz.resize((n + 1,))
        if old < n:  # a store written without metadata: pad with empty entries
            mz[old:n] = np.array(["{}"] * (n - old), dtype=object)
        mz[n : n + 1] = np.array([meta_json], dtype=object)
        ez = meta["episode_ends"].with_config(_WRITE_ALL)
        ez.resize((n + 1,))
        ez[n : n + 1] = np.array([end], dtype=np.int64)
        self._ends = np.append(self._ends, np.int64(end))
        if self._meta_cache is not None:
            self._meta_cache.append(json.loads(meta_json))
        return n

    def update_episode_metadata(self, i: int, **fields: Any) -> dict:
        """Merge ``fields`` into episode ``i``'s metadata (e.g. an operator's success label given
        after the episode was written); returns the new metadata. The entry is rewritten in one
        atomic key write: a crash leaves the old or the new metadata, never a mix."""
        self._require_writable()
        self.episode_slice(i)  # range check
        new = {**self.episode_metadata(i), **fields}
        meta_json = json.dumps(new, default=_json_default)  # fail before writing
        meta = self._root["meta"]
        if "episode_metadata" not in meta:
            _create_metadata_array(meta, self.zarr_format)
        mz = meta["episode_metadata"].with_config(_WRITE_ALL)
        old = mz.shape[0]
        if old < self.n_episodes:  # a store written without metadata: pad with empty entries
            mz.resize((self.n_episodes,))
            mz[old : self.n_episodes] = np.array(["{}"] * (self.n_episodes - old), dtype=object)
        mz[i : i + 1] = np.array([meta_json], dtype=object)
        if self._meta_cache is not None:
            self._meta_cache[i] = json.loads(meta_json)
        return new

    # ------------------------------------------------------------------ checks
    def _stored_files(self, arr_path: str) -> set[str] | None:
        """Keys (relative to the array) of the objects stored for ``arr_path``; None if unknown."""
        if self.path is None:
            return None
        if _is_zip(self.path):
            prefix = arr_path + "/"
            with zipfile.ZipFile(self.path) as zf:
                return {n[len(prefix) :] for n in zf.namelist() if n.startswith(prefix)}
        base = self.path / arr_path
        out: set[str] = set()
        for dirpath, _, files in os.walk(base):
            rel = Path(dirpath).relative_to(base).as_posix()
            out.update(f if rel == "." else f"{rel}/{f}" for f in files)
        return out

    def _read_object(self, key: str, size: int, from_end: bool) -> tuple[bytes, int]:
        """``size`` bytes at the start or end of stored object ``key``, and its total length."""
        assert self.path is not None
        if _is_zip(self.path):
            with zipfile.ZipFile(self.path) as zf:
                blob = zf.read(key)
            return (blob[-size:] if from_end else blob[:size]), len(blob)
        with open(self.path / key, "rb") as f:
            total = f.seek(0, os.SEEK_END)
            f.seek(max(0, total - size) if from_end else 0)
            return f.read(size), total

    def _shard_index_problems(self, arr: zarr.Array, u: int, key: str, n: int, hint: str) -> list[str]:
        """Problems of shard ``u``'s chunk index: truncated, checksum mismatch, frames missing."""
        sharding = _sharding(arr)
        if sharding is None:
            return []
        codecs = list(sharding.index_codecs)
        has_crc = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
        if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) != 1 + has_crc:
            return []  # an index encoding not parsed here; decoding still reads it
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        cps = tuple(int(s) // int(c) for s, c in zip(arr.shards, arr.chunks))
        n_inner = int(np.prod(cps))
        size = 16 * n_inner + 4 * has_crc
        at_end = getattr(sharding.index_location, "value", sharding.index_location) == "end"
        label, where = _label(arr.path), _unit_name(arr, u)
        index, total = self._read_object(f"{arr.path}/{key}", size, from_end=at_end)
        if total < size:
            return [f"{label}: {where} is truncated ({total} bytes, less than its {size}-byte chunk index)"]
        if has_crc:
            import google_crc32c  # a dependency of zarr's crc32c codec

            if np.uint32(google_crc32c.value(index[:-4])).tobytes() != index[-4:]:
                return [f"{label}: {where} has a damaged or truncated chunk index (crc32c mismatch)"]
        table = np.frombuffer(index[: 16 * n_inner], dtype=">u8" if endian == "big" else "<u8").reshape(*cps, 2)
        c, per = int(arr.chunks[0]), cps[0]
        problems = []
        for v in range(per):
            lo = u * per * c + v * c
            if lo >= n:
                break
            entries = table[v].reshape(-1, 2)
            inner = f"chunk {u * per + v} ({_span(arr.path, lo, min(lo + c, n))})"
            if (entries[:, 0] == _MAX_UINT64).any():
                problems.append(f"{label}: {inner} is missing from {where} (zarr would read it as zeros){hint}")
            elif (entries[:, 0] + entries[:, 1] > total).any():
                problems.append(f"{label}: {inner} points past the end of {where} (truncated)")
        return problems

    def _check_array(self, arr_path: str, arr: zarr.Array, n: int, deep: bool) -> list[str]:
        """Missing stored objects inside ``[0, n)``, shard indices, and (``deep``) decoding."""
        label = _label(arr_path)
        hint = (
            ""
            if self._root.attrs.get(ALL_CHUNKS_ATTR)
            else " -- or it held only zeros: this store was written without all_chunks_written, "
            "so an all-zero chunk was never stored"
        )
        problems: list[str] = []
        bad_units: set[int] = set()
        files = self._stored_files(arr_path)
        if files is not None:
            for u, key in _expected_keys(arr, n):
                if key not in files:
                    problems.append(f"{label}: {_unit_name(arr, u)} is missing (zarr would read it as zeros){hint}")
                    bad_units.add(u)
                elif arr.shards:
                    found = self._shard_index_problems(arr, u, key, n, hint)
                    problems += found
                    bad_units.update([u] if found else [])
                elif deep and _blosc_framed(arr):  # no checksum: at least the size must match
                    header, total = self._read_object(f"{arr_path}/{key}", 16, from_end=False)
                    cbytes = int.from_bytes(header[12:16], "little") if len(header) == 16 else -1
                    if cbytes != total:
                        problems.append(
                            f"{label}: {_unit_name(arr, u)} is truncated or damaged ({total} bytes stored, "
                            f"its Blosc header says {cbytes})"
                        )
                        bad_units.add(u)
        if deep and n:
            t = _unit(arr)[0]
            try:
                item = np.dtype(arr.dtype).itemsize or 64
            except TypeError:
                item = 64
            unit_bytes = max(1, int(np.prod(_unit(arr), dtype=np.int64)) * item)
            per = max(1, _DEEP_READ_BYTES // unit_bytes) * t
            for lo in range(0, n, per):
                hi = min(lo + per, n)
                if _try_read(arr, lo, hi) is None:
                    continue
                for u, where, e in _find_damage(arr, lo, hi):
                    if u not in bad_units:
                        problems.append(f"{label}: {where} cannot be decoded: {_err(e)}")
        return problems

    def checksummed(self) -> dict[str, bool]:
        """``{array path: whether its chunks carry a checksum}`` for data/* and meta/*."""
        meta = self._root["meta"]
        out = {f"data/{k}": _has_checksum(z) for k, z in sorted(self._data.arrays())}
        out.update({f"meta/{k}": _has_checksum(z) for k, z in sorted(meta.arrays())})
        return out

    def validate(self, deep: bool = False) -> list[str]:
        """Problems found in the store (empty list: OK).

        Always: attributes, shapes and dtypes, a partly written tail, every chunk file (or
        shard, and the frames in its index) that should hold data inside the episodes but is
        missing, and the low-dim float fields read in full (non-finite values, chunks that do
        not decode). ``deep``: also decodes every chunk of every array (data/* and meta/*) and
        parses every episode's metadata, naming each damaged field and chunk. A checksum catches
        damaged bytes only where the codec has one (see :meth:`checksummed`): Blosc has none.
        """
        problems: list[str] = []
        if self.schema_version > SCHEMA_VERSION:
            problems.append(f"schema_version {self.schema_version} is newer than supported ({SCHEMA_VERSION})")
        if self._tail and self.mode == "r":
            problems.append(
                f"partly written tail episode past the {self.n_episodes} complete episodes (a crash mid-append): "
                f"{self._tail.describe()}; `robopolicy data repair {self.path}` rolls it back"
            )
        if self.n_episodes == 0:
            problems.append("store has no episodes")
        damaged: set[str] = set()
        meta = self._root["meta"]
        arrays = [(f"data/{k}", z, self.n_steps) for k, z in sorted(self._data.arrays())]
        arrays.append(("meta/episode_ends", meta["episode_ends"], self.n_episodes))
        if "episode_metadata" in meta:
            mz = meta["episode_metadata"]
            arrays.append(("meta/episode_metadata", mz, min(int(mz.shape[0]), self.n_episodes)))
        for path, z, n in arrays:
            found = self._check_array(path, z, n, deep)
            problems += found
            if found:
                damaged.add(path)
        for k, z in self.fields.items():
            if kind_of_key(k) is FieldKind.IMAGE:
                if z.dtype != np.uint8 or z.ndim != 4:
                    problems.append(f"image field {k!r} must be uint8 (N, H, W, C), got {z.dtype} {z.shape}")
            elif z.dtype.kind == "f" and f"data/{k}" not in damaged:
                try:
                    x = np.asarray(zarr.Array.__getitem__(z, slice(0, self.n_steps)))
                except Exception as e:  # noqa: BLE001
                    found = [
                        f"field {k!r}: {w} cannot be decoded: {_err(err)}"
                        for _, w, err in _find_damage(z, 0, self.n_steps)
                    ]
                    problems += found or [f"field {k!r} cannot be read: {_err(e)}"]
                    continue
                bad = int(np.count_nonzero(~np.isfinite(x)))
                if bad:
                    problems.append(f"field {k!r} has {bad} non-finite values")
        if self.n_episodes and "action" not in self.fields:
            problems.append("no 'action' field")
        spec = self._root.attrs.get("action_spec")
        if spec is not None:
            try:
                a_spec = ActionSpec.from_dict(spec)
            except (KeyError, ValueError, TypeError) as e:
                problems.append(f"invalid action_spec attribute: {e}")
            else:
                if "action" in self.fields and self["action"].shape[1:] != (a_spec.dim,):
                    problems.append(f"action_spec has {a_spec.dim} dims, field 'action' is {self['action'].shape[1:]}")
        n_meta = int(meta["episode_metadata"].shape[0]) if "episode_metadata" in meta else 0
        if self.schema_version >= 1 and n_meta < self.n_episodes:
            problems.append(
                f"meta/episode_metadata has {n_meta} entries for {self.n_episodes} episodes (the missing ones read as {{}})"
            )
        if deep and "meta/episode_metadata" not in damaged and n_meta:
            self._meta_cache = None
            try:
                self.episodes_metadata  # noqa: B018  (parses every entry)
            except StoreCorruptError as e:
                problems.append(str(e).removeprefix(f"store {self.path}: "))
        return problems


def _create_metadata_array(meta: zarr.Group, zarr_format: int) -> zarr.Array:
    kw: dict[str, Any] = {"compressors": [ZstdCodec(), Crc32cCodec()]} if zarr_format == 3 else {}
    return meta.create_array("episode_metadata", shape=(0,), chunks=(_META_CHUNK,), dtype=str, config=_WRITE_ALL, **kw)


# ---------------------------------------------------------------------- repair
@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair_store` found (``tail``; falsy: nothing to repair) and where it kept the backup."""

    path: Path
    tail: PartialTail
    backup: Path | None
    dry_run: bool


def _backup_metadata(path: Path, tail: PartialTail) -> Path:
    """Copy ``meta/`` and every array's and group's metadata document next to the store."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dst = path.parent / f"{path.name}.meta-backup-{stamp}"
    i = 1
    while dst.exists():
        dst = path.parent / f"{path.name}.meta-backup-{stamp}-{i}"
        i += 1
    docs = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
    try:
        shutil.copytree(path / "meta", dst / "meta")
        for d in [path, path / "data", *sorted(p for p in (path / "data").iterdir() if p.is_dir())]:
            for name in docs:
                if (d / name).is_file():
                    target = dst / d.relative_to(path) / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(d / name, target)
        shapes = {}
        for d in sorted(p for p in (path / "data").iterdir() if p.is_dir()):
            doc = d / "zarr.json" if (d / "zarr.json").is_file() else d / ".zarray"
            if doc.is_file():
                shapes[d.name] = json.loads(doc.read_text()).get("shape")
        record = {
            "store": str(path.resolve()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rolled_back": tail.to_dict(),
            "data_shapes_before": shapes,
            "undo": "copy these files back into the store (the dropped steps' chunk files were left in place)",
        }
        (dst / "repair.json").write_text(json.dumps(record, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    return dst


def repair_store(path: str | os.PathLike, *, dry_run: bool = False) -> RepairResult:
    """Roll back a partly written tail episode, keeping a backup of the metadata it changes.

    Only the tail a crash mid-append can leave is dropped (see the module docstring); a store
    damaged otherwise raises :class:`StoreCorruptError` and nothing is changed. Before the
    rollback ``meta/`` and the arrays' metadata documents are copied to
    ``<parent>/<name>.meta-backup-<timestamp>/`` (outside the store, which stays valid), with a
    ``repair.json`` saying what was dropped; the dropped steps' chunk files stay in place, so
    copying the backup back undoes the repair. ``dry_run``: only report.
    """
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with EpisodeStore.open(path, mode="r") as store:
            tail = store.partial_tail
    if not tail or dry_run:
        return RepairResult(path, tail, None, dry_run)
    if _is_zip(path):
        raise ValueError(f"{path}: a .zarr.zip store is read-only; unzip it to repair it")
    backup = _backup_metadata(path, tail)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = EpisodeStore.open(path, mode="a")
    return RepairResult(path, store.partial_tail, backup, False)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(f"episode metadata value {o!r} is not JSON-serializable")
