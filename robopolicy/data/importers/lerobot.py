"""LeRobotDataset (v3 on-disk format) local folder -> episode store.

lerobot pins its own torch and must never be installed in the main environment: with lerobot
importable (its own env, ``make real-env``) the dataset is read through ``LeRobotDataset``
(videos decoded by lerobot). Without it, and only if ``pyarrow`` is importable, the v3 files
are read directly (``meta/info.json`` + ``data/chunk-*/file-*.parquet``): low-dim features and
``image``-dtype features (PNG bytes) only; a dataset with ``video`` features then raises.

Field names: ``observation.state`` -> ``state``, ``observation.images.<cam>`` -> ``image.<cam>``,
``observation.image`` -> ``image.main``, ``observation.<x>`` -> ``<x>``, ``next.reward`` ->
``reward``, ``next.done`` -> ``done``, ``action`` -> ``action``. Bookkeeping columns
(``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``) are not copied;
the task text goes into the episode metadata. Images become uint8 HWC.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore
from robopolicy.types import IMAGE_PREFIX

INSTALL_HINT = "install the real extra in its own environment: make real-env"
BOOKKEEPING = {"timestamp", "frame_index", "episode_index", "index", "task_index"}


def lerobot_key_to_field(key: str) -> str:
    if key.startswith("observation.images."):
        return IMAGE_PREFIX + key[len("observation.images.") :]
    if key == "observation.image":
        return IMAGE_PREFIX + "main"
    for prefix in ("observation.", "next."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _to_hwc_uint8(a: np.ndarray) -> np.ndarray:
    """(T, C, H, W) float [0, 1] or (T, H, W, C) uint8 -> (T, H, W, C) uint8."""
    if a.ndim == 4 and a.shape[1] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(0, 2, 3, 1)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return a


def _episodes_with_lerobot(root: Path) -> Iterator[tuple[dict[str, np.ndarray], dict, int, float]]:
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError:  # lerobot < 0.4 layout
        from lerobot.common.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset(repo_id=root.name, root=root)
    keys = [k for k in ds.meta.features if k not in BOOKKEEPING]
    current, frames, task = None, [], ""
    n_eps = ds.meta.total_episodes

    def flush():
        ep = {lerobot_key_to_field(k): np.stack([f[k] for f in frames]) for k in keys}
        ep = {k: _to_hwc_uint8(v) if k.startswith(IMAGE_PREFIX) else v.reshape(len(v), -1) for k, v in ep.items()}
        return ep, {"source_episode": int(current), "task": task}, n_eps, float(ds.meta.fps)

    for i in range(len(ds)):
        item = ds[i]
        e = int(item["episode_index"])
        if current is not None and e != current:
            yield flush()
            frames = []
        current, task = e, str(item.get("task", ""))
        frames.append({k: np.asarray(item[k]) for k in keys})
    if frames:
        yield flush()


def _episodes_with_pyarrow(root: Path) -> Iterator[tuple[dict[str, np.ndarray], dict, int, float]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    info = json.loads((root / "meta" / "info.json").read_text())
    features = info.get("features", {})
    videos = [k for k, f in features.items() if f.get("dtype") == "video"]
    if videos:
        raise ImportError(f"video features {videos} need lerobot to decode; {INSTALL_HINT}")
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    if not files:
        raise ValueError(f"{root} has no data/chunk-*/file-*.parquet files")
    tasks: dict[int, str] = {}
    if (root / "meta" / "tasks.parquet").exists():
        t = pq.read_table(root / "meta" / "tasks.parquet").to_pydict()
        names = t.get("task") or t.get("__index_level_0__") or []
        tasks = dict(zip(t.get("task_index", []), names))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    cols = table.to_pydict()
    order = np.argsort(np.asarray(cols["index"]), kind="stable")
    ep_idx = np.asarray(cols["episode_index"])[order]
    keys = [k for k in features if k not in BOOKKEEPING and k in cols]
    episodes = list(dict.fromkeys(ep_idx.tolist()))
    for e in episodes:
        rows = order[ep_idx == e]
        ep = {}
        for k in keys:
            vals = [cols[k][r] for r in rows]
            if features[k].get("dtype") == "image":
                import imageio.v3 as iio

                ep[lerobot_key_to_field(k)] = _to_hwc_uint8(
                    np.stack([iio.imread(io.BytesIO(v["bytes"])) for v in vals])
                )
            else:
                a = np.asarray(vals, dtype=features[k].get("dtype", "float32"))
                ep[lerobot_key_to_field(k)] = a.reshape(len(a), -1)
        task_index = cols.get("task_index", [None])[rows[0]] if "task_index" in cols else None
        yield (
            ep,
            {"source_episode": int(e), "task": tasks.get(task_index, "")},
            len(episodes),
            float(info.get("fps", 0)),
        )


def import_lerobot(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    zarr_format: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> EpisodeStore:
    """Import a LeRobotDataset v3 folder (``meta/info.json``, ``data/``...) into a new store."""
    root = Path(src)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"not a LeRobotDataset folder: {root} has no meta/info.json")
    if importlib.util.find_spec("lerobot") is not None:
        episodes = _episodes_with_lerobot(root)
    elif importlib.util.find_spec("pyarrow") is not None:
        episodes = _episodes_with_pyarrow(root)
    else:
        raise ImportError(f"importing a LeRobotDataset needs lerobot (or pyarrow for low-dim data); {INSTALL_HINT}")
    store = None
    for i, (ep, meta, total, fps) in enumerate(episodes):
        if store is None:
            store = EpisodeStore.create(
                dst,
                control_rate=fps or None,
                source=f"lerobot:{root.name}",
                zarr_format=zarr_format,
                overwrite=overwrite,
            )
        store.add_episode(ep, meta)
        if progress:
            progress(i + 1, total)
    if store is None:
        raise ValueError(f"{root} has no episodes")
    return store
