"""LeRobotDataset (v3 on-disk format) local folder -> episode store.

lerobot pins its own torch and must never be installed in the main environment. Two readers
(``reader=``):

* ``"lerobot"`` (lerobot importable: its own env, ``make real-env``): low-dim and image columns
  through ``LeRobotDataset.hf_dataset`` (cast to the stored dtypes), video frames through lerobot's ``decode_video_frames``
  with the chosen ``video_backend`` -- the frames ``LeRobotDataset[i]`` returns.
* ``"pyarrow"`` (no lerobot; ``pyarrow`` importable): the v3 files read directly
  (``meta/info.json``, ``meta/episodes/``, ``data/chunk-*/file-*.parquet``). Video features
  are decoded with PyAV (``av`` importable) exactly as lerobot's ``pyav`` backend does
  (seek to the key frame before the first query, decode, ``frame.to_rgb()``, nearest frame
  within ``tolerance_s``), so the images equal ``LeRobotDataset(..., video_backend="pyav")``.

``"auto"`` takes lerobot where it is importable, else pyarrow. Video backends: ``"torchcodec"``
(lerobot's default) needs FFmpeg's shared libraries on the system; where they are missing it
fails to load, so the default (:func:`default_video_backend`) probes it and falls back to
``"pyav"`` (PyAV bundles its own FFmpeg). Nothing is fetched from the Hugging Face Hub: a folder
with a missing file is refused here, before lerobot could try to download it.

Field names: ``observation.state`` -> ``state``, ``observation.images.<cam>`` -> ``image.<cam>``,
``observation.image`` -> ``image.main``, ``observation.<x>`` -> ``<x>``, ``next.reward`` ->
``reward``, ``next.done`` -> ``done``, ``action`` -> ``action``. Bookkeeping columns
(``timestamp``, ``frame_index``, ``episode_index``, ``index``, ``task_index``) are not copied;
the task text goes into the episode metadata. Images become uint8 HWC; low-dim fields (L, D)
(or (L, *shape) for features of two or more dimensions). A ``meta/robopolicy.json`` written by our
exporter (:mod:`robopolicy.data.exporters.lerobot`) restores the per-episode metadata and the
action spec that LeRobotDataset has no place for.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore
from robopolicy.types import IMAGE_PREFIX, ActionSpec

INSTALL_HINT = "install the real extra in its own environment: make real-env"
BOOKKEEPING = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
VIDEO_BACKENDS = ("torchcodec", "pyav")
READERS = ("auto", "lerobot", "pyarrow")
TOLERANCE_S = 1e-4  # lerobot's default frame-timestamp tolerance
VIDEO_BATCH = 64  # frames decoded per call (bounds the float32 buffer lerobot returns)

Episode = tuple[dict[str, np.ndarray], dict, int, float]  # fields, metadata, total episodes, fps


def lerobot_key_to_field(key: str) -> str:
    if key.startswith("observation.images."):
        return IMAGE_PREFIX + key[len("observation.images.") :]
    if key == "observation.image":
        return IMAGE_PREFIX + "main"
    for prefix in ("observation.", "next."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


@functools.cache
def torchcodec_loads() -> bool:
    """Whether torchcodec is installed *and* its native library loads (it needs FFmpeg's shared
    libraries from the system; ``find_spec`` alone, which lerobot checks, says nothing of that)."""
    if importlib.util.find_spec("torchcodec") is None:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception:  # noqa: BLE001  (OSError / RuntimeError: libtorchcodec or libav* missing)
        return False
    return True


def default_video_backend() -> str:
    """``"torchcodec"`` where it loads (lerobot's default), else ``"pyav"``."""
    return "torchcodec" if torchcodec_loads() else "pyav"


def _to_hwc_uint8(a: np.ndarray) -> np.ndarray:
    """(T, C, H, W) float [0, 1], (T, H, W, C) or (T, H, W) uint8 -> (T, H, W, C) uint8."""
    if a.ndim == 3:  # single-channel PNGs
        a = a[..., None]
    if a.ndim == 4 and a.shape[1] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(0, 2, 3, 1)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    return a


def _low_dim(values: list, feature: dict | None = None) -> np.ndarray:
    """(L, D), or (L, *shape) for a feature of two or more dimensions."""
    a = np.stack([np.asarray(v) for v in values])
    feature = feature or {}
    if "dtype" in feature:
        a = a.astype(feature["dtype"], copy=False)
    shape = tuple(feature.get("shape") or ())
    return a.reshape(len(a), *shape) if len(shape) >= 2 else a.reshape(len(a), -1)


def _check_local(root: Path, info: dict, episodes: list[dict]) -> None:
    """Every data and video file the episodes name is present (else lerobot would try the Hub)."""
    missing = []
    for ep in episodes:
        data = info["data_path"].format(chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])
        missing += [data] if not (root / data).is_file() else []
        for key in (k for k, f in info["features"].items() if f.get("dtype") == "video"):
            rel = _video_path(info, ep, key)
            missing += [rel] if not (root / rel).is_file() else []
    if missing:
        names = ", ".join(sorted(set(missing))[:5])
        raise FileNotFoundError(f"{root} is incomplete: missing {names} (local folders only; nothing is downloaded)")


def _video_path(info: dict, ep: dict, key: str) -> str:
    return info["video_path"].format(
        video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"], file_index=ep[f"videos/{key}/file_index"]
    )


def _read_episodes_meta(root: Path) -> list[dict]:
    """Rows of ``meta/episodes/chunk-*/file-*.parquet`` (stats columns left out), by episode index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{root} has no meta/episodes/chunk-*/file-*.parquet files")
    tables = []
    for f in files:
        t = pq.read_table(f)
        tables.append(t.select([c for c in t.column_names if not c.startswith("stats/")]))
    rows = pa.concat_tables(tables, promote_options="default").to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


# ---------------------------------------------------------------------------------------- lerobot


def _episodes_with_lerobot(root: Path, info: dict, video_backend: str, tolerance_s: float) -> Iterator[Episode]:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.datasets.video_utils import decode_video_frames

    ds = LeRobotDataset(repo_id=root.name, root=root, video_backend=video_backend, tolerance_s=tolerance_s)
    # Python objects, cast to each feature's dtype below: lerobot's torch transform and datasets'
    # numpy format both turn float64 into float32.
    hf = ds.hf_dataset.with_format(None)
    video_keys = set(ds.meta.video_keys)
    keys = [k for k in ds.meta.features if k not in BOOKKEEPING]
    n_eps = ds.meta.total_episodes
    for e in range(n_eps):
        meta = ds.meta.episodes[e]
        lo, hi = int(meta["dataset_from_index"]), int(meta["dataset_to_index"])
        rows = hf[lo:hi]
        index, ep_index = _low_dim(rows["index"]).ravel(), _low_dim(rows["episode_index"]).ravel()
        if not (np.array_equal(index, np.arange(lo, hi)) and (ep_index == e).all()):
            raise ValueError(f"{root}: episode {e}'s rows {lo}:{hi} are not its frames in order")
        timestamps = [float(t) for t in _low_dim(rows["timestamp"]).ravel()]
        ep = {}
        for k in keys:
            field = lerobot_key_to_field(k)
            if k in video_keys:
                path = root / ds.meta.get_video_file_path(e, k)
                start = float(meta[f"videos/{k}/from_timestamp"])
                batches = []
                for i in range(0, len(timestamps), VIDEO_BATCH):
                    ts = [start + t for t in timestamps[i : i + VIDEO_BATCH]]
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # torchvision's VideoReader deprecation (pyav)
                        frames = decode_video_frames(path, ts, tolerance_s, video_backend)
                    batches.append(_to_hwc_uint8(frames.numpy()))
                ep[field] = np.concatenate(batches)
            elif ds.meta.features[k]["dtype"] == "image":
                ep[field] = _to_hwc_uint8(np.stack([np.asarray(v) for v in rows[k]]))  # PNG: uint8 HWC
            else:
                ep[field] = _low_dim(rows[k], ds.meta.features[k])
        task = ds.meta.tasks.iloc[int(np.asarray(rows["task_index"][0]))].name
        yield ep, {"source_episode": e, "task": str(task)}, n_eps, float(ds.meta.fps)


# ---------------------------------------------------------------------------------------- pyarrow


def decode_frames_pyav(
    path: str | os.PathLike, timestamps: list[float], tolerance_s: float = TOLERANCE_S
) -> np.ndarray:
    """Frames at ``timestamps`` (seconds) of a video file, (T, H, W, 3) uint8, decoded as lerobot's
    ``pyav`` backend does: seek to the key frame at or before the first timestamp, decode up to
    the last, take the nearest decoded frame for each (``ValueError`` if further than
    ``tolerance_s``)."""
    import av

    with av.open(str(path), metadata_errors="ignore") as container:
        stream = container.streams.video[0]
        offset = int(round(max(min(timestamps), 0.0) / stream.time_base))
        container.seek(offset, backward=True, any_frame=False, stream=stream)
        last = max(timestamps)
        frames, pts = [], []
        for frame in container.decode(video=0):
            pts.append(float(frame.pts * frame.time_base))
            frames.append(frame.to_rgb().to_ndarray())
            if pts[-1] >= last:
                break
    dist = np.abs(np.asarray(timestamps, dtype=np.float64)[:, None] - np.asarray(pts, dtype=np.float64)[None, :])
    nearest = dist.argmin(1)
    far = dist[np.arange(len(timestamps)), nearest] >= tolerance_s
    if far.any():
        raise ValueError(
            f"{path}: no frame within {tolerance_s} s of timestamps {np.asarray(timestamps)[far].tolist()[:5]}"
        )
    return np.stack([frames[i] for i in nearest])


def _episodes_with_pyarrow(root: Path, info: dict, tolerance_s: float) -> Iterator[Episode]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = info.get("features", {})
    videos = [k for k, f in features.items() if f.get("dtype") == "video"]
    if videos and importlib.util.find_spec("av") is None:
        raise ImportError(f"video features {videos} need PyAV (pip install av) or lerobot to decode; {INSTALL_HINT}")
    ep_meta = {int(r["episode_index"]): r for r in _read_episodes_meta(root)} if videos else {}
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
    keys = [k for k in features if k not in BOOKKEEPING and (k in cols or k in videos)]
    episodes = list(dict.fromkeys(ep_idx.tolist()))
    for e in episodes:
        rows = order[ep_idx == e]
        ep = {}
        for k in keys:
            if k in videos:
                m = ep_meta[int(e)]
                start = float(m[f"videos/{k}/from_timestamp"])
                ts = [start + float(cols["timestamp"][r]) for r in rows]
                path = root / _video_path(info, m, k)
                ep[lerobot_key_to_field(k)] = np.concatenate(
                    [
                        decode_frames_pyav(path, ts[i : i + VIDEO_BATCH], tolerance_s)
                        for i in range(0, len(ts), VIDEO_BATCH)
                    ]
                )
                continue
            vals = [cols[k][r] for r in rows]
            if features[k].get("dtype") == "image":
                import imageio.v3 as iio

                ep[lerobot_key_to_field(k)] = _to_hwc_uint8(
                    np.stack([iio.imread(io.BytesIO(v["bytes"])) for v in vals])
                )
            else:
                ep[lerobot_key_to_field(k)] = _low_dim(vals, {"dtype": "float32", **features[k]})
        task_index = cols.get("task_index", [None])[rows[0]] if "task_index" in cols else None
        yield (
            ep,
            {"source_episode": int(e), "task": tasks.get(task_index, "")},
            len(episodes),
            float(info.get("fps", 0)),
        )


# ---------------------------------------------------------------------------------------- entry point


def _read_sidecar(root: Path, info: dict) -> tuple[list[dict] | None, ActionSpec | None]:
    """Per-episode metadata and action spec from ``meta/robopolicy.json`` (written by our exporter;
    ignored unless it matches the dataset's episode count)."""
    path = root / "meta" / "robopolicy.json"
    if not path.is_file():
        return None, None
    side = json.loads(path.read_text())
    episodes = side.get("episodes")
    if side.get("format") != "robopolicy-episodes" or len(episodes or []) != info.get("total_episodes"):
        warnings.warn(
            f"{path} does not match the dataset (edited by another tool?); its metadata is ignored", stacklevel=3
        )
        return None, None
    spec = (side.get("attrs") or {}).get("action_spec")
    return [dict(m) for m in episodes], ActionSpec.from_dict(spec) if spec else None


def _choose_reader(reader: str) -> str:
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    has_lerobot = importlib.util.find_spec("lerobot") is not None
    if reader == "auto":
        if has_lerobot:
            return "lerobot"
        if importlib.util.find_spec("pyarrow") is None:
            raise ImportError(f"importing a LeRobotDataset needs lerobot (or pyarrow); {INSTALL_HINT}")
        return "pyarrow"
    if reader == "lerobot" and not has_lerobot:
        raise ImportError(f"reader 'lerobot' needs lerobot; {INSTALL_HINT}")
    return reader


def import_lerobot(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    zarr_format: int = 3,
    progress: Callable[[int, int], None] | None = None,
    video_backend: str | None = None,
    reader: str = "auto",
    tolerance_s: float = TOLERANCE_S,
) -> EpisodeStore:
    """Import a LeRobotDataset v3 folder (``meta/info.json``, ``data/``, ``videos/``) into a new store.

    ``video_backend`` is ``"torchcodec"`` or ``"pyav"`` (default: :func:`default_video_backend`);
    ``reader`` is ``"auto"``, ``"lerobot"`` or ``"pyarrow"`` (see the module docstring; the
    pyarrow reader decodes videos with PyAV only).
    """
    root = Path(src)
    if not (root / "meta" / "info.json").is_file():
        raise FileNotFoundError(f"not a LeRobotDataset folder: {root} has no meta/info.json")
    if video_backend is not None and video_backend not in VIDEO_BACKENDS:
        raise ValueError(f"video_backend must be one of {VIDEO_BACKENDS}, got {video_backend!r}")
    info = json.loads((root / "meta" / "info.json").read_text())
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3"):
        raise ValueError(
            f"{root} is a LeRobotDataset {version}, not v3; convert it first with lerobot's "
            "python -m lerobot.datasets.v30.convert_dataset_v21_to_v30"
        )
    chosen = _choose_reader(reader)
    if chosen == "lerobot":
        backend = video_backend or default_video_backend()
        if backend == "torchcodec" and not torchcodec_loads():
            raise ValueError("video_backend 'torchcodec' does not load here (no system FFmpeg libraries?); use 'pyav'")
        _check_local(root, info, _read_episodes_meta(root))  # a partial folder: before lerobot tries the Hub
        episodes = _episodes_with_lerobot(root, info, backend, tolerance_s)
    else:
        if video_backend not in (None, "pyav"):
            raise ValueError(f"the pyarrow reader decodes videos with PyAV only, not {video_backend!r}")
        episodes = _episodes_with_pyarrow(root, info, tolerance_s)
    extra_meta, action_spec = _read_sidecar(root, info)
    store = None
    for i, (ep, meta, total, fps) in enumerate(episodes):
        if store is None:
            store = EpisodeStore.create(
                dst,
                action_spec=action_spec,
                control_rate=fps or None,
                source=f"lerobot:{root.name}",
                zarr_format=zarr_format,
                overwrite=overwrite,
            )
        if extra_meta is not None:
            meta = {**extra_meta[meta["source_episode"]], **meta}
        store.add_episode(ep, meta)
        if progress:
            progress(i + 1, total)
    if store is None:
        raise ValueError(f"{root} has no episodes")
    return store
