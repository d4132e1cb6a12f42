"""LeRobotDataset both ways, against lerobot itself (the ``real`` env: ``make real-env``, then
``.venv-real/bin/pytest -m real tests/real/test_lerobot_dataset.py``; skipped without lerobot).

Import: a video dataset written by lerobot's own ``LeRobotDataset.create(use_videos=True)``
(default codec libsvtav1) imports with lengths and low-dim values exact and images equal to what
``LeRobotDataset(..., video_backend="pyav")[i]`` returns, through lerobot and through the
no-lerobot reader (pyarrow + PyAV). Export: a store written here is read back by
``LeRobotDataset`` equal (images exact as PNG, close as lossy video), and export -> import gives
the store back. No Hub access: the Hub entry points lerobot would fall back to are made to fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lerobot")

from lerobot.datasets import lerobot_dataset as lerobot_dataset_module  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402

from robopolicy.data.exporters.lerobot import export_lerobot  # noqa: E402
from robopolicy.data.importers import lerobot as importer  # noqa: E402
from robopolicy.data.importers.lerobot import (  # noqa: E402
    VIDEO_BACKENDS,
    default_video_backend,
    import_lerobot,
    torchcodec_loads,
)
from robopolicy.data.store import EpisodeStore  # noqa: E402
from robopolicy.types import ActionSpec  # noqa: E402

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("no_hub", "one_thread")]

REPO = Path(__file__).resolve().parents[2]
LENGTHS = (5, 8, 6)
SIZE = 32
# Lossy video (lerobot's libsvtav1, crf 30, yuv420p) on the smooth 32x32 test pattern: measured
# mean |diff| 4.6-4.7 levels (of 255), PSNR 32.4-32.6 dB (h264: 6.5-6.7, 29.3-29.5 dB).
VIDEO_MEAN_TOL, VIDEO_PSNR_MIN = 6.0, 30.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


@pytest.fixture
def no_hub(monkeypatch):
    """Fail loudly if lerobot tries the Hugging Face Hub (it must read the local folder only)."""

    def hub(*args, **kwargs):
        raise AssertionError("lerobot tried to reach the Hugging Face Hub")

    for name in ("snapshot_download", "get_safe_version", "HfApi"):
        monkeypatch.setattr(lerobot_dataset_module, name, hub)


def pattern(t: int, k: int) -> np.ndarray:
    """Smooth moving (H, W, 3) uint8 image (video codecs keep it close)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    ch = [np.sin(2 * np.pi * (xx + t / 16 + k / 3)), np.cos(2 * np.pi * (yy - t / 24)), np.sin(np.pi * (xx + yy))]
    return np.clip(np.round(128 + 90 * np.stack(ch, -1)), 0, 255).astype(np.uint8)


def frames_of(ds: LeRobotDataset, key: str) -> np.ndarray:
    """All frames of ``key`` as lerobot returns them, back to (N, H, W, C) uint8 (exact: x = u8 / 255)."""
    out = [ds[i][key].numpy() for i in range(len(ds))]
    a = np.stack(out)
    if a.ndim == 4:
        return np.round(a.transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    return a


@pytest.fixture(scope="module")
def video_dataset(tmp_path_factory) -> Path:
    """Written by lerobot itself: a video camera (libsvtav1, lerobot's default), an image camera,
    state, an extra observation, action, reward; three episodes, two tasks."""
    root = tmp_path_factory.mktemp("lerobot") / "vid"
    features = {
        "observation.state": {"dtype": "float32", "shape": (4,), "names": None},
        "observation.eef_pos": {"dtype": "float32", "shape": (3,), "names": None},
        "observation.images.front": {
            "dtype": "video",
            "shape": (SIZE, SIZE, 3),
            "names": ["height", "width", "channels"],
        },
        "observation.images.wrist": {
            "dtype": "image",
            "shape": (SIZE, SIZE, 3),
            "names": ["height", "width", "channels"],
        },
        "action": {"dtype": "float32", "shape": (2,), "names": ["x", "y"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create("local/vid", fps=10, features=features, root=root, use_videos=True)
    rng = np.random.default_rng(0)
    for e, length in enumerate(LENGTHS):
        for t in range(length):
            ds.add_frame(
                {
                    "observation.state": rng.standard_normal(4).astype(np.float32),
                    "observation.eef_pos": rng.standard_normal(3).astype(np.float32),
                    "observation.images.front": pattern(t, e),
                    "observation.images.wrist": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
                    "action": rng.standard_normal(2).astype(np.float32),
                    "next.reward": rng.random(1).astype(np.float32),
                    "task": f"task {e % 2}",
                }
            )
        ds.save_episode()
    ds.finalize()
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """An episode store as our recorders write it: state, eef_pos, action (with a spec), reward,
    done (bool), joint_pos (float64), two cameras, per-episode metadata with task text, seed and success."""
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    spec = ActionSpec(("dx", "dy"), (-1.0, -1.0), (1.0, 1.0))
    s = EpisodeStore.create(path, control_rate=10, action_spec=spec, source="test")
    rng = np.random.default_rng(1)
    for e, length in enumerate(LENGTHS):
        s.add_episode(
            {
                "state": rng.standard_normal((length, 4)).astype(np.float32),
                "eef_pos": rng.standard_normal((length, 3)).astype(np.float32),
                "action": rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                "reward": rng.random((length, 1)).astype(np.float32),
                "done": np.arange(length)[:, None] == length - 1,  # bool
                "joint_pos": rng.standard_normal((length, 6)),  # float64, kept through the round trip
                "image.front": np.stack([pattern(t, e) for t in range(length)]),
                "image.wrist": np.stack([pattern(t, e + 1)[::-1] for t in range(length)]),
            },
            {"task": f"lift {e % 2}", "seed": 100 + e, "success": bool(e % 2)},
        )
    s.close()
    return path


# ------------------------------------------------------------------------------------------ import


def test_default_video_backend_decodes_here(video_dataset):
    """torchcodec is installed with lerobot but needs system FFmpeg libraries; where it cannot
    load, lerobot's own default fails and ours falls back to pyav."""
    backend = default_video_backend()
    assert backend in VIDEO_BACKENDS and (backend == "torchcodec") == torchcodec_loads()
    if not torchcodec_loads():
        with pytest.raises((RuntimeError, OSError)):  # lerobot picks torchcodec by find_spec alone
            LeRobotDataset("local/vid", root=video_dataset)[0]
    ds = LeRobotDataset("local/vid", root=video_dataset, video_backend=backend)
    assert ds[0]["observation.images.front"].shape == (3, SIZE, SIZE)


@pytest.mark.parametrize("reader", ["lerobot", "pyarrow"])
def test_import_video_dataset_equals_lerobot_pyav(video_dataset, tmp_path, reader, monkeypatch):
    monkeypatch.setattr(importer, "VIDEO_BATCH", 3)  # batches start mid-episode: seek to a key frame there
    import_lerobot(video_dataset, tmp_path / "o.zarr", video_backend="pyav", reader=reader)
    s = EpisodeStore.open(tmp_path / "o.zarr")
    ds = LeRobotDataset("local/vid", root=video_dataset, video_backend="pyav")
    assert list(s.episode_lengths) == list(LENGTHS) and s.n_steps == len(ds) and s.control_rate == 10.0
    assert s.keys() == ["action", "eef_pos", "image.front", "image.wrist", "reward", "state"]
    np.testing.assert_array_equal(s["image.front"][:], frames_of(ds, "observation.images.front"))
    np.testing.assert_array_equal(s["image.wrist"][:], frames_of(ds, "observation.images.wrist"))
    for field, key in [("state", "observation.state"), ("eef_pos", "observation.eef_pos"), ("action", "action")]:
        np.testing.assert_array_equal(s[field][:], frames_of(ds, key))  # exact
    np.testing.assert_array_equal(s["reward"][:], frames_of(ds, "next.reward").reshape(-1, 1))
    assert [m["task"] for m in s.episodes_metadata] == ["task 0", "task 1", "task 0"]
    assert [m["source_episode"] for m in s.episodes_metadata] == [0, 1, 2]
    # the video itself is lossy against what was written, but decoded the same by both readers
    written = np.concatenate([np.stack([pattern(t, e) for t in range(n)]) for e, n in enumerate(LENGTHS)])
    assert psnr(s["image.front"][:], written) > VIDEO_PSNR_MIN


def test_import_default_backend_and_incomplete_folder(video_dataset, tmp_path):
    import_lerobot(video_dataset, tmp_path / "o.zarr")  # the default backend works here
    assert list(EpisodeStore.open(tmp_path / "o.zarr").episode_lengths) == list(LENGTHS)
    broken = tmp_path / "broken"
    shutil.copytree(video_dataset, broken)
    next((broken / "videos").rglob("*.mp4")).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete: missing videos/observation.images.front"):
        import_lerobot(broken, tmp_path / "b.zarr", video_backend="pyav")  # refused before any Hub fallback
    assert not (tmp_path / "b.zarr").exists()
    if not torchcodec_loads():
        with pytest.raises(ValueError, match="'torchcodec' does not load here"):
            import_lerobot(video_dataset, tmp_path / "t.zarr", video_backend="torchcodec")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "robopolicy.cli", "data", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


# ------------------------------------------------------------------------------------------ export


def test_export_images_reads_back_exact(store, tmp_path):
    out = export_lerobot(store, tmp_path / "ds", use_videos=False)
    ds = LeRobotDataset("local/ds", root=out)
    s = EpisodeStore.open(store)
    assert len(ds) == s.n_steps and ds.meta.total_episodes == 3 and ds.meta.fps == 10
    assert ds.meta.video_keys == [] and sorted(ds.meta.camera_keys) == [
        "observation.images.front",
        "observation.images.wrist",
    ]
    assert ds.meta.features["action"]["names"] == ["dx", "dy"]
    for field, key in [("state", "observation.state"), ("eef_pos", "observation.eef_pos"), ("action", "action")]:
        np.testing.assert_array_equal(frames_of(ds, key), s[field][:])
    np.testing.assert_array_equal(frames_of(ds, "next.reward").reshape(-1, 1), s["reward"][:])
    np.testing.assert_array_equal(frames_of(ds, "next.done").reshape(-1, 1), s["done"][:])
    for cam in ("front", "wrist"):
        np.testing.assert_array_equal(frames_of(ds, f"observation.images.{cam}"), s[f"image.{cam}"][:])
    episodes = [int(ds[i]["episode_index"]) for i in range(len(ds))]
    assert episodes == sum(([e] * n for e, n in enumerate(LENGTHS)), [])
    assert [ds[int(i)]["task"] for i in np.cumsum((0,) + LENGTHS[:-1])] == ["lift 0", "lift 1", "lift 0"]


def test_export_video_reads_back_close_and_round_trips(store, tmp_path):
    out = export_lerobot(store, tmp_path / "ds", use_videos=True)  # libsvtav1, lerobot's default
    assert ds_info_codec(out) == "av1"
    ds = LeRobotDataset("local/ds", root=out, video_backend="pyav")
    s = EpisodeStore.open(store)
    assert len(ds) == s.n_steps and sorted(ds.meta.video_keys) == [
        "observation.images.front",
        "observation.images.wrist",
    ]
    np.testing.assert_array_equal(frames_of(ds, "observation.state"), s["state"][:])
    for cam in ("front", "wrist"):
        got, want = frames_of(ds, f"observation.images.{cam}"), s[f"image.{cam}"][:]
        mean = np.abs(got.astype(int) - want).mean()
        assert mean < VIDEO_MEAN_TOL and psnr(got, want) > VIDEO_PSNR_MIN, (cam, mean, psnr(got, want))

    import_lerobot(out, tmp_path / "back.zarr", video_backend="pyav")  # round trip
    b = EpisodeStore.open(tmp_path / "back.zarr")
    assert b.keys() == s.keys() and list(b.episode_lengths) == list(s.episode_lengths)
    for field in ("state", "eef_pos", "action", "reward", "done", "joint_pos"):
        np.testing.assert_array_equal(b[field][:], s[field][:])
        assert b[field].dtype == s[field].dtype
    np.testing.assert_array_equal(b["image.front"][:], frames_of(ds, "observation.images.front"))
    assert b.control_rate == s.control_rate and b.action_spec == s.action_spec
    assert [{k: v for k, v in m.items() if k != "source_episode"} for m in b.episodes_metadata] == s.episodes_metadata


def ds_info_codec(root: Path) -> str:
    import json

    info = json.loads((root / "meta" / "info.json").read_text())
    return info["features"]["observation.images.front"]["info"]["video.codec"]


def test_cli_export_then_import_offline(store, tmp_path):
    """Both commands in fresh processes with HF_HUB_OFFLINE=1; images exact through PNG."""
    out = tmp_path / "ds"
    r = run_cli("export", "lerobot", str(store), "--out", str(out), "--no-video")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exported 3 episodes (19 steps, cameras as PNG images)" in r.stdout
    assert "export lerobot" in r.stderr  # the progress bar

    r = run_cli("export", "lerobot", str(store), "--out", str(out))
    assert r.returncode == 2 and "already exists" in r.stderr, r.stderr[-3000:]

    r = run_cli("import", "lerobot", str(out), "--out", str(tmp_path / "back.zarr"), "--video-backend", "pyav")
    assert r.returncode == 0, r.stderr[-3000:]
    b, s = EpisodeStore.open(tmp_path / "back.zarr"), EpisodeStore.open(store)
    for field in s.keys():
        np.testing.assert_array_equal(b[field][:], s[field][:])  # lossless: PNG images, exact low-dim
    assert [m["seed"] for m in b.episodes_metadata] == [100, 101, 102]


def test_export_refuses_existing_out_and_bad_fields(store, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="already exists"):
        export_lerobot(store, tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileExistsError):
        export_lerobot(store, tmp_path / "empty")
    with pytest.raises(ValueError, match="not in store"):
        export_lerobot(store, tmp_path / "x", fields=["state", "nope"])
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x.partial-*"))
