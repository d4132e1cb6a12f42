"""robomimic HDF5 -> episode store.

Source layout: ``data/demo_<n>/obs/<key>`` (T, ...), ``data/demo_<n>/actions`` (T, Da),
optional ``rewards`` / ``dones`` (T,); ``data.attrs["env_args"]`` (JSON with ``env_name`` and
``env_kwargs.control_freq``); ``mask/<split>`` lists of demo names. Demos are imported in
numeric order (demo_2 before demo_10).

Field names follow the robosuite env adapter (:data:`ROBOMIMIC_RENAME`); ``<cam>_image`` becomes
``image.<cam>`` and is copied as is (robomimic stores images upright already: its env wrapper
flips robosuite's OpenGL frames when the dataset is generated). Other keys keep their name.
``state`` = concat(eef_pos, eef_quat, gripper_qpos, object) is added when all four exist, as
the env adapter produces it. ``rewards``/``dones`` become ``reward``/``done`` (T, 1).
Simulator ``states`` and depth images are not imported.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore
from robopolicy.types import IMAGE_PREFIX, osc_pose_action_spec

ROBOMIMIC_RENAME = {
    "robot0_eef_pos": "eef_pos",
    "robot0_eef_quat": "eef_quat",
    "robot0_gripper_qpos": "gripper_qpos",
    "robot0_joint_pos": "joint_pos",
    "robot0_joint_vel": "joint_vel",
    "object": "object",
}
STATE_PARTS = ("eef_pos", "eef_quat", "gripper_qpos", "object")


def robomimic_key_to_field(key: str) -> str | None:
    """Store field name of a robomimic obs key (None: not imported)."""
    if key.endswith("_depth"):
        return None
    if key.endswith("_image"):
        return IMAGE_PREFIX + key[: -len("_image")]
    return ROBOMIMIC_RENAME.get(key, key)


def _demo_names(f) -> list[str]:
    if "data" not in f:
        raise ValueError(f"{f.filename} is not a robomimic dataset: no 'data' group")
    names = [n for n in f["data"] if re.fullmatch(r"demo_\d+", n)]
    if not names:
        raise ValueError(f"{f.filename} has no data/demo_<n> groups")
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def _episode(demo, name: str) -> dict[str, np.ndarray]:
    if "actions" not in demo or "obs" not in demo:
        raise ValueError(f"demo {name!r} lacks 'actions' or 'obs'")
    ep: dict[str, np.ndarray] = {"action": np.asarray(demo["actions"], dtype=np.float32)}
    for key in demo["obs"]:
        field = robomimic_key_to_field(key)
        if field is None:
            continue
        a = np.asarray(demo["obs"][key])
        if field.startswith(IMAGE_PREFIX):
            if a.dtype != np.uint8:
                a = np.clip(np.round(a * 255.0 if a.max(initial=0) <= 1.0 else a), 0, 255).astype(np.uint8)
        elif a.dtype.kind == "f":
            a = a.astype(np.float32)
        ep[field] = a.reshape(len(a), -1) if a.ndim == 1 else a
    if all(p in ep for p in STATE_PARTS):
        ep["state"] = np.concatenate([ep[p] for p in STATE_PARTS], axis=1)
    for src, dst, dtype in (("rewards", "reward", np.float32), ("dones", "done", np.uint8)):
        if src in demo:
            ep[dst] = np.asarray(demo[src]).astype(dtype).reshape(-1, 1)
    return ep


def _env_args(f) -> dict:
    raw = f["data"].attrs.get("env_args")
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return {}


def import_robomimic(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    overwrite: bool = False,
    zarr_format: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> EpisodeStore:
    """Import every demo of a robomimic HDF5 file into a new store at ``dst``."""
    import h5py

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"robomimic file not found: {src}")
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise ValueError(f"{src} is not an HDF5 file ({e})") from None
    with f:
        names = _demo_names(f)
        env_args = _env_args(f)
        kwargs = env_args.get("env_kwargs", {})
        controller = json.dumps(kwargs.get("controller_configs", {}))
        first_actions = f["data"][names[0]]["actions"] if "actions" in f["data"][names[0]] else None
        spec = None
        if first_actions is not None and first_actions.shape[-1] == 7 and "OSC_POSE" in controller:
            spec = osc_pose_action_spec()
        splits = {}
        for split in f.get("mask", {}):
            for n in f["mask"][split][:]:
                splits.setdefault(n.decode() if isinstance(n, bytes) else str(n), []).append(split)
        store = EpisodeStore.create(
            dst,
            action_spec=spec,
            control_rate=kwargs.get("control_freq"),
            source=f"robomimic:{src.name}" + (f" env={env_args['env_name']}" if "env_name" in env_args else ""),
            zarr_format=zarr_format,
            overwrite=overwrite,
        )
        for i, name in enumerate(names):
            demo = f["data"][name]
            meta: dict = {"source_demo": name}
            if "rewards" in demo and len(demo["rewards"]):
                meta["success"] = bool(np.max(demo["rewards"]) > 0)  # sparse task-success reward
            if name in splits:
                meta["robomimic_splits"] = sorted(splits[name])
            if "ep_meta" in demo.attrs:
                try:
                    lang = json.loads(demo.attrs["ep_meta"]).get("lang")
                except (TypeError, ValueError):
                    lang = None
                if lang:
                    meta["task"] = lang
            store.add_episode(_episode(demo, name), meta)
            if progress:
                progress(i + 1, len(names))
    return store
