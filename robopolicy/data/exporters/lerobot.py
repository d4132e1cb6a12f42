"""Episode store -> LeRobotDataset v3 folder, written by lerobot's own ``LeRobotDataset.create``.

Needs lerobot (its own environment: ``make real-env``). Field names are the inverse of the
importer's (:func:`robopolicy.data.importers.lerobot.lerobot_key_to_field`): ``image.<cam>`` ->
``observation.images.<cam>`` (a ``video`` feature, or ``image`` with ``use_videos=False``),
``state`` -> ``observation.state``, ``action`` -> ``action``, ``reward`` / ``done`` ->
``next.reward`` / ``next.done``, any other field ``<x>`` -> ``observation.<x>``. Low-dim fields
keep their dtype and per-step shape (a store field of shape (N,) becomes shape (1,)); ``action``
carries the store's action-spec names. fps is the store's ``control_rate``; each episode's task
is its metadata's ``task`` (else the store's ``task`` attribute, else ``task=``).

LeRobotDataset has no place for the rest of our metadata (seed, success, operator...), so it
goes to ``meta/robopolicy.json`` (lerobot ignores the file; our importer reads it back):
``{"format": "robopolicy-episodes", "version": 1, "attrs": {...}, "fields": {key: field},
"episodes": [metadata, ...]}``.

The dataset is written to a hidden sibling of ``out`` and renamed to ``out`` only when complete;
an existing ``out`` is refused (nothing is replaced). Nothing is sent to the Hub.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from robopolicy.data.importers.lerobot import INSTALL_HINT, lerobot_key_to_field
from robopolicy.data.store import EpisodeStore
from robopolicy.outputs import discard, staging_dir
from robopolicy.types import IMAGE_PREFIX

SIDECAR = "meta/robopolicy.json"
# lerobot 0.4's codec names whose videos lerobot reads back here (h264 = libx264 in PyAV). Not
# offered: "hevc" (libx265 writes it, but on a 32 px, 10 fps test lerobot's pyav decoder could
# not find a frame of it: FrameTimestampError) and "auto" (a hardware encoder where one exists, untested).
VCODECS = ("libsvtav1", "h264")
RENAME = {"state": "observation.state", "action": "action", "reward": "next.reward", "done": "next.done"}


def field_to_lerobot_key(field: str) -> str:
    """Our field name -> lerobot feature key (``ValueError`` where the importer would not map it back)."""
    if field.startswith(IMAGE_PREFIX):
        key = "observation.images." + field[len(IMAGE_PREFIX) :]
    else:
        key = RENAME.get(field, "observation." + field)
    if lerobot_key_to_field(key) != field:
        raise ValueError(f"field {field!r} has no lerobot name that imports back to it (it would be {key!r})")
    return key


def lerobot_features(store: EpisodeStore, fields: Sequence[str], use_videos: bool) -> dict[str, dict]:
    """lerobot ``features`` for ``fields`` of ``store`` (keys in :func:`field_to_lerobot_key` names)."""
    features = {}
    spec = store.action_spec
    for f in fields:
        z = store[f]
        if f.startswith(IMAGE_PREFIX):
            if z.ndim != 4 or z.dtype != np.uint8 or z.shape[-1] not in (1, 3):
                raise ValueError(f"image field {f!r} must be uint8 (N, H, W, 1|3), got {z.dtype} {z.shape}")
            kind = "video" if use_videos else "image"
            features[field_to_lerobot_key(f)] = {
                "dtype": kind,
                "shape": tuple(z.shape[1:]),
                "names": ["height", "width", "channels"],
            }
            continue
        shape = tuple(z.shape[1:]) or (1,)
        names = list(spec.names) if f == "action" and spec is not None and shape == (spec.dim,) else None
        features[field_to_lerobot_key(f)] = {"dtype": str(z.dtype), "shape": shape, "names": names}
    return features


def _fps(store: EpisodeStore, fps: int | None) -> int:
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        return int(fps)
    rate = store.control_rate
    if rate is None:
        raise ValueError(f"store {store.path} has no control_rate; pass fps= (--fps)")
    if abs(rate - round(rate)) > 1e-9:
        raise ValueError(f"LeRobotDataset needs an integer fps; the store's control_rate is {rate} (pass --fps)")
    return int(round(rate))


def _task(meta: dict, store: EpisodeStore, task: str) -> str:
    return str(meta.get("task") or store.attrs.get("task") or task)


def _write(
    store: EpisodeStore,
    root: Path,
    *,
    repo_id: str,
    fields: list[str],
    fps: int,
    use_videos: bool,
    vcodec: str,
    robot_type: str | None,
    task: str,
    progress: Callable[[int, int], None] | None,
) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = lerobot_features(store, fields, use_videos)
    has_images = any(f["dtype"] in ("image", "video") for f in features.values())
    ds = LeRobotDataset.create(
        repo_id,
        fps=fps,
        features=features,
        root=root,
        robot_type=robot_type,
        use_videos=use_videos,
        image_writer_threads=min(4, os.cpu_count() or 1) if has_images else 0,
        vcodec=vcodec,
    )
    keys = {f: field_to_lerobot_key(f) for f in fields}
    metas = store.episodes_metadata
    try:
        for i in range(store.n_episodes):
            ep = store.episode(i, fields)
            text = _task(metas[i], store, task)
            for t in range(len(ep[fields[0]])):
                frame = {keys[f]: ep[f][t].reshape(features[keys[f]]["shape"]) for f in fields}
                ds.add_frame({**frame, "task": text})
            ds.save_episode()
            if progress:
                progress(i + 1, store.n_episodes)
    finally:
        ds.finalize()
        if ds.image_writer is not None:
            ds.stop_image_writer()
    sidecar = {
        "format": "robopolicy-episodes",
        "version": 1,
        "source_store": str(store.path),
        "attrs": store.attrs,
        "fields": {keys[f]: f for f in fields},
        "episodes": metas,
    }
    (root / SIDECAR).write_text(json.dumps(sidecar, indent=1, default=str))


def export_lerobot(
    store: str | os.PathLike | EpisodeStore,
    out: str | os.PathLike,
    *,
    use_videos: bool = True,
    vcodec: str = "libsvtav1",
    repo_id: str | None = None,
    fields: Sequence[str] | None = None,
    fps: int | None = None,
    robot_type: str | None = None,
    task: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``store`` (a path or an open store) as a LeRobotDataset v3 folder ``out``; returns ``out``.

    ``use_videos`` stores cameras as MP4 (``vcodec``: lerobot's default ``libsvtav1``, or
    ``h264``) instead of PNG images; ``fields`` limits the export (default: all); ``repo_id``
    is the name lerobot records (default ``local/<out name>``); ``fps`` overrides the store's
    control rate. ``FileExistsError`` if ``out`` exists.
    """
    import importlib.util

    out = Path(out)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"output {out} already exists; export into a new folder (nothing is replaced)")
    if importlib.util.find_spec("lerobot") is None:
        raise ImportError(f"exporting a LeRobotDataset needs lerobot; {INSTALL_HINT}")
    if vcodec not in VCODECS:
        raise ValueError(f"vcodec must be one of {VCODECS}, got {vcodec!r}")
    opened = not isinstance(store, EpisodeStore)
    s = EpisodeStore.open(store, mode="r") if opened else store
    try:
        names = list(fields) if fields is not None else s.keys()
        unknown = [f for f in names if f not in s]
        if unknown or not names:
            raise ValueError(f"fields {unknown or names} not in store {s.path} (fields: {s.keys()})")
        if s.n_episodes == 0:
            raise ValueError(f"store {s.path} has no episodes")
        rate = _fps(s, fps)
        lerobot_features(s, names, use_videos)  # every field maps and fits, before any writing
        staged = staging_dir(out)
        try:
            _write(
                s,
                staged,
                repo_id=repo_id or f"local/{out.name}",
                fields=names,
                fps=rate,
                use_videos=use_videos,
                vcodec=vcodec,
                robot_type=robot_type,
                task=task,
                progress=progress,
            )
            if out.exists() or out.is_symlink():
                raise FileExistsError(f"output {out} appeared while exporting; the export is discarded")
            staged.rename(out)
        except BaseException:
            discard(staged)
            raise
    finally:
        if opened:
            s.close()
    return out
