"""Importers on small source files built here: robomimic HDF5, diffusion_policy Zarr, LeRobot."""

from __future__ import annotations

import importlib.util
import json

import h5py
import numpy as np
import pytest

from robopolicy.data.importers import import_diffusion_policy_zarr, import_lerobot, import_robomimic
from robopolicy.data.importers.lerobot import INSTALL_HINT
from robopolicy.data.store import EpisodeStore
from robopolicy.types import osc_pose_action_spec
from tests.data.test_store import write_dp_store


def write_robomimic(path, lengths, seed=0):
    """A robomimic-shaped HDF5 file; demo numbering deliberately out of lexical order."""
    rng = np.random.default_rng(seed)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        env_args = {"env_name": "Lift", "env_kwargs": {"control_freq": 20, "controller_configs": {"type": "OSC_POSE"}}}
        data.attrs["env_args"] = json.dumps(env_args)
        for n, length in zip([2, 10, 1], lengths):
            g = data.create_group(f"demo_{n}")
            obs = {
                "robot0_eef_pos": rng.standard_normal((length, 3)),
                "robot0_eef_quat": rng.standard_normal((length, 4)),
                "robot0_gripper_qpos": rng.standard_normal((length, 2)),
                "object": rng.standard_normal((length, 10)),
                "robot0_eef_vel_lin": rng.standard_normal((length, 3)),
                "agentview_image": rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8),
                "agentview_depth": rng.random((length, 8, 8, 1)).astype(np.float32),
            }
            for k, v in obs.items():
                g.create_dataset(f"obs/{k}", data=v)
            g.create_dataset("actions", data=rng.uniform(-1, 1, (length, 7)))
            rewards = np.zeros(length)
            rewards[-1] = float(n != 10)
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=(rewards > 0).astype(np.int64))
            g.attrs["num_samples"] = length
            demos[n] = {**obs, "actions": g["actions"][:], "rewards": rewards}
        f.create_dataset("mask/train", data=np.array([b"demo_1", b"demo_2"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_10"]))
    return demos


def test_robomimic(tmp_path):
    demos = write_robomimic(tmp_path / "lift.hdf5", [5, 7, 4])
    store = import_robomimic(tmp_path / "lift.hdf5", tmp_path / "lift.zarr")
    s = EpisodeStore.open(tmp_path / "lift.zarr")
    assert s.n_episodes == 3 and list(s.episode_lengths) == [4, 5, 7]  # demo_1, demo_2, demo_10
    assert store.n_steps == s.n_steps == 16
    assert s.keys() == sorted(
        ["action", "eef_pos", "eef_quat", "gripper_qpos", "object", "robot0_eef_vel_lin", "image.agentview"]
        + ["state", "reward", "done"]
    )
    assert s.action_spec == osc_pose_action_spec() and s.control_rate == 20.0 and "Lift" in s.source
    for i, n in enumerate([1, 2, 10]):
        ep, d = s.episode(i), demos[n]
        np.testing.assert_array_equal(ep["image.agentview"], d["agentview_image"])
        np.testing.assert_allclose(ep["eef_pos"], d["robot0_eef_pos"].astype(np.float32))
        np.testing.assert_allclose(ep["action"], d["actions"].astype(np.float32))
        assert ep["action"].dtype == np.float32
        state = np.concatenate([d["robot0_eef_pos"], d["robot0_eef_quat"], d["robot0_gripper_qpos"], d["object"]], 1)
        np.testing.assert_allclose(ep["state"], state.astype(np.float32))
        assert ep["reward"].shape == (len(d["actions"]), 1)
    metas = s.episodes_metadata
    assert [m["source_demo"] for m in metas] == ["demo_1", "demo_2", "demo_10"]
    assert [m["success"] for m in metas] == [True, True, False]
    assert metas[2]["robomimic_splits"] == ["valid"]
    assert s.validate() == []


def test_robomimic_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.hdf5"):
        import_robomimic(tmp_path / "missing.hdf5", tmp_path / "o.zarr")
    (tmp_path / "junk.hdf5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        import_robomimic(tmp_path / "junk.hdf5", tmp_path / "o.zarr")
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("data")
    with pytest.raises(ValueError, match="no data/demo_<n>"):
        import_robomimic(tmp_path / "empty.hdf5", tmp_path / "o.zarr")


def test_diffusion_policy_zarr(tmp_path):
    arrays, ends = write_dp_store(tmp_path / "pusht.zarr", [5, 8, 3])
    import_diffusion_policy_zarr(tmp_path / "pusht.zarr", tmp_path / "out.zarr", control_rate=10.0)
    s = EpisodeStore.open(tmp_path / "out.zarr")
    assert s.zarr_format == 3 and s.control_rate == 10.0 and "pusht.zarr" in s.source
    assert s.keys() == ["action", "image.img", "state"]
    np.testing.assert_array_equal(s.episode_ends, ends)
    img = s["image.img"]
    assert img.dtype == np.uint8 and img.chunks == (1, 8, 8, 3)
    np.testing.assert_array_equal(img[:], arrays["img"].astype(np.uint8))  # float 0..255 -> uint8
    np.testing.assert_array_equal(s["state"][:], arrays["state"])
    assert [m["source_episode"] for m in s.episodes_metadata] == [0, 1, 2]
    with pytest.raises(FileExistsError):
        import_diffusion_policy_zarr(tmp_path / "pusht.zarr", tmp_path / "out.zarr")


def test_lerobot_without_lerobot_is_a_clear_error(tmp_path):
    if importlib.util.find_spec("lerobot") or importlib.util.find_spec("pyarrow"):
        pytest.skip("lerobot or pyarrow is installed here")
    (tmp_path / "ds" / "meta").mkdir(parents=True)
    (tmp_path / "ds" / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0", "fps": 10}))
    with pytest.raises(ImportError, match="make real-env"):
        import_lerobot(tmp_path / "ds", tmp_path / "o.zarr")
    assert "make real-env" in INSTALL_HINT
    with pytest.raises(FileNotFoundError, match="meta/info.json"):
        import_lerobot(tmp_path, tmp_path / "o.zarr")


def test_lerobot_v21_is_refused_naming_the_converter(tmp_path):
    (tmp_path / "ds" / "meta").mkdir(parents=True)
    (tmp_path / "ds" / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 10}))
    with pytest.raises(ValueError, match="v2.1, not v3.*convert_dataset_v21_to_v30"):
        import_lerobot(tmp_path / "ds", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.real
def test_lerobot_v3_folder(tmp_path):
    """Needs lerobot (its own env): write a tiny LeRobotDataset and import it."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
    }
    ds = LeRobotDataset.create("local/tiny", fps=10, features=features, root=tmp_path / "tiny", use_videos=False)
    rng = np.random.default_rng(0)
    for length in (4, 6):
        for _ in range(length):
            ds.add_frame(
                {
                    "observation.state": rng.random(3, dtype=np.float32),
                    "action": rng.random(2, dtype=np.float32),
                    "task": "t",
                }
            )
        ds.save_episode()
    ds.finalize()
    import_lerobot(tmp_path / "tiny", tmp_path / "o.zarr")
    s = EpisodeStore.open(tmp_path / "o.zarr")
    assert list(s.episode_lengths) == [4, 6] and s.keys() == ["action", "state"] and s.control_rate == 10.0
