"""EpisodeStore: layout, attrs, validation, tail rollback, v2/v3, zip."""

from __future__ import annotations

import json
import warnings

import numcodecs
import numpy as np
import pytest
import zarr

from robopolicy.data.store import EpisodeStore
from robopolicy.types import osc_pose_action_spec


def make_episode(rng: np.random.Generator, length: int, image: bool = True) -> dict[str, np.ndarray]:
    ep = {
        "action": rng.standard_normal((length, 7)).astype(np.float32),
        "eef_pos": rng.standard_normal((length, 3)).astype(np.float32),
    }
    if image:
        ep["image.agentview"] = rng.integers(0, 256, (length, 6, 5, 3), dtype=np.uint8)
    return ep


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_roundtrip_layout_and_attrs(tmp_path, zarr_format):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(
        path, action_spec=osc_pose_action_spec(), control_rate=20.0, source="unit", zarr_format=zarr_format
    )
    eps = [make_episode(rng, n) for n in (4, 9, 1)]
    for i, ep in enumerate(eps):
        assert store.add_episode(ep, {"seed": i, "success": i != 1, "task": "lift"}) == i

    s = EpisodeStore.open(path)
    assert s.zarr_format == zarr_format
    assert s.n_episodes == 3 and s.n_steps == 14 and len(s) == 3
    np.testing.assert_array_equal(s.episode_ends, [4, 13, 14])
    np.testing.assert_array_equal(s.episode_lengths, [4, 9, 1])
    assert s.episode_ends.dtype == np.int64
    assert s.keys() == ["action", "eef_pos", "image.agentview"]
    for i, ep in enumerate(eps):
        got = s.episode(i)
        for k in ep:
            np.testing.assert_array_equal(got[k], ep[k])
            assert got[k].dtype == ep[k].dtype
    assert s.episode_slice(1) == slice(4, 13)
    assert s.episode_metadata(1) == {"seed": 1, "success": False, "task": "lift"}
    assert [m["seed"] for m in s.episodes_metadata] == [0, 1, 2]
    assert s.action_spec == osc_pose_action_spec()
    assert s.control_rate == 20.0 and s.source == "unit" and s.schema_version == 1
    # chunking: one image frame per chunk, low-dim in one large chunk
    assert s["image.agentview"].chunks == (1, 6, 5, 3)
    assert s["action"].chunks[0] >= 10_000
    assert s.validate() == []
    # raw layout is diffusion_policy's: data/<field>, meta/episode_ends
    root = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(root["meta/episode_ends"][:], [4, 13, 14])
    assert root["data/image.agentview"].shape == (14, 6, 5, 3)


def test_add_episode_validation_writes_nothing(tmp_path):
    rng = np.random.default_rng(1)
    store = EpisodeStore.create(tmp_path / "s.zarr")
    store.add_episode(make_episode(rng, 5))
    bad = [
        ({**make_episode(rng, 3), "eef_pos": np.zeros((4, 3), np.float32)}, "same length"),
        ({**make_episode(rng, 3), "eef_pos": np.zeros((3, 4), np.float32)}, "eef_pos"),
        ({**make_episode(rng, 3), "action": np.zeros((3, 7), np.float64)}, "action"),
        ({**make_episode(rng, 3), "image.agentview": np.zeros((3, 6, 5, 3), np.float32)}, "image.agentview"),
        ({**make_episode(rng, 3), "image.agentview": np.zeros((3, 6, 5), np.uint8)}, "image.agentview"),
        ({**make_episode(rng, 3), "extra": np.zeros((3, 1))}, "extra"),
        ({"action": np.zeros((3, 7), np.float32)}, "missing"),
        ({k: v[:0] for k, v in make_episode(rng, 3).items()}, "length > 0"),
        ({**make_episode(rng, 3), "a/b": np.zeros((3, 1))}, "a/b"),
    ]
    for ep, msg in bad:
        with pytest.raises(ValueError, match=msg):
            store.add_episode(ep)
    with pytest.raises(TypeError):
        store.add_episode(make_episode(rng, 3), {"x": object()})
    s = EpisodeStore.open(tmp_path / "s.zarr")
    assert s.n_episodes == 1 and all(a.shape[0] == 5 for a in s.fields.values())
    assert s.validate() == []


def test_read_only_and_bad_paths(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    store.add_episode(make_episode(np.random.default_rng(0), 3))
    with pytest.raises(ValueError, match="read-only"):
        EpisodeStore.open(tmp_path / "s.zarr").add_episode(make_episode(np.random.default_rng(0), 3))
    with pytest.raises(FileNotFoundError, match="nope"):
        EpisodeStore.open(tmp_path / "nope.zarr")
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").require_group("data")
    with pytest.raises(ValueError, match=r"not an episode store: .*g\.zarr has no meta/episode_ends"):
        EpisodeStore.open(tmp_path / "g.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not an episode store"):
        EpisodeStore.open(tmp_path / "plain")
    with pytest.raises(FileExistsError):
        EpisodeStore.create(tmp_path / "s.zarr")
    assert EpisodeStore.create(tmp_path / "s.zarr", overwrite=True).n_episodes == 0
    with pytest.raises(KeyError, match="nope.*fields"):
        store["nope"]


def test_short_field_is_an_error(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr")
    store.add_episode(make_episode(np.random.default_rng(0), 6))
    store["eef_pos"].resize((4, 3))
    with pytest.raises(ValueError, match="eef_pos"):
        EpisodeStore.open(tmp_path / "s.zarr")


@pytest.mark.parametrize("extra_end", [False, True])
def test_partial_tail_rollback(tmp_path, extra_end):
    """Simulate a kill after the data (and metadata) of episode 2 were written, before its end."""
    rng = np.random.default_rng(2)
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path)
    eps = [make_episode(rng, n) for n in (5, 7)]
    for ep in eps:
        store.add_episode(ep, {"n": len(ep["action"])})
    tail = make_episode(rng, 4)
    for k, a in tail.items():  # what add_episode does before writing episode_ends
        z = store[k]
        z.resize((16, *a.shape[1:]))
        z[12:16] = a
    meta = zarr.open_group(str(path), mode="r+")["meta"]
    meta["episode_metadata"].resize((3,))
    if extra_end:  # killed between the resize of episode_ends and the write of its new entry
        meta["episode_ends"].resize((3,))

    with pytest.warns(UserWarning, match="ignored"):
        r = EpisodeStore.open(path, mode="r")
    assert r.n_episodes == 2 and r.n_steps == 12
    assert len(r.episodes_metadata) == 2
    assert r["action"].shape[0] == 16  # untouched in read mode
    problems = r.validate()
    tail = [p for p in problems if "partly written tail" in p]
    assert len(tail) == 1 and "4 steps of 'action'" in tail[0] and "data repair" in tail[0]
    assert ("unwritten meta/episode_ends entry" in tail[0]) == extra_end

    with pytest.warns(UserWarning, match=r"rolled back: dropped .*4 steps of 'action'") as rec:
        a = EpisodeStore.open(path, mode="a")
    assert len(rec) == 1 and "4 steps of 'image.agentview'" in str(rec[0].message)
    assert a.n_episodes == 2 and all(z.shape[0] == 12 for z in a.fields.values())
    for i, ep in enumerate(eps):
        for k in ep:
            np.testing.assert_array_equal(a.episode(i)[k], ep[k])
    new = make_episode(rng, 3)
    assert a.add_episode(new, {"n": 3}) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean now
        s = EpisodeStore.open(path)
    np.testing.assert_array_equal(s.episode_ends, [5, 12, 15])
    np.testing.assert_array_equal(s.episode(2)["image.agentview"], new["image.agentview"])
    assert [m["n"] for m in s.episodes_metadata] == [5, 7, 3]
    assert s.validate() == []


def test_rollback_of_first_episode_allows_new_fields(tmp_path):
    path = tmp_path / "s.zarr"
    store = EpisodeStore.create(path)
    store._data.create_array("old", shape=(3, 2), dtype="f4")  # a killed first episode
    with pytest.warns(UserWarning):
        a = EpisodeStore.open(path, mode="a")
    a.add_episode(make_episode(np.random.default_rng(0), 2, image=False))
    assert EpisodeStore.open(path).keys() == ["action", "eef_pos"]


def write_dp_store(path, lengths, zip_path=None):
    """A store as diffusion_policy (zarr 2.x) writes it: v2, Blosc lz4, no robopolicy attrs."""
    rng = np.random.default_rng(3)
    n = int(sum(lengths))
    store = zarr.storage.ZipStore(str(zip_path), mode="w") if zip_path else str(path)
    root = zarr.open_group(store, mode="w", zarr_format=2)
    comp = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    data = root.require_group("data")
    arrays = {
        "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
        "state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
        "img": rng.integers(0, 256, (n, 8, 8, 3)).astype(np.float32),
    }
    for k, v in arrays.items():
        data.create_array(k, shape=v.shape, chunks=(min(n, 7), *v.shape[1:]), dtype=v.dtype, compressors=comp)[:] = v
    ends = np.cumsum(lengths).astype(np.int64)
    root.require_group("meta").create_array("episode_ends", shape=ends.shape, dtype="int64", compressors=None)[:] = ends
    if zip_path:
        store.close()
    return arrays, ends


def test_open_diffusion_policy_v2_store_in_place(tmp_path):
    arrays, ends = write_dp_store(tmp_path / "pusht.zarr", [5, 8, 3])
    s = EpisodeStore.open(tmp_path / "pusht.zarr")
    assert s.zarr_format == 2 and s.schema_version == 0
    assert s.action_spec is None and s.control_rate is None and s.source == ""
    assert s.n_episodes == 3 and s.episodes_metadata == [{}, {}, {}]
    np.testing.assert_array_equal(s.episode(1)["state"], arrays["state"][5:13])
    # append in place: metadata padded for the old episodes
    a = EpisodeStore.open(tmp_path / "pusht.zarr", mode="a")
    a.add_episode({k: v[:2] for k, v in arrays.items()}, {"seed": 9})
    s = EpisodeStore.open(tmp_path / "pusht.zarr")
    assert s.episodes_metadata == [{}, {}, {}, {"seed": 9}]
    np.testing.assert_array_equal(s.episode_ends, [5, 13, 16, 18])


def test_open_zip_store(tmp_path):
    arrays, _ = write_dp_store(None, [4, 4], zip_path=tmp_path / "d.zarr.zip")
    with EpisodeStore.open(tmp_path / "d.zarr.zip") as s:
        assert s.n_episodes == 2
        np.testing.assert_array_equal(s.episode(1)["action"], arrays["action"][4:8])
    with pytest.raises(ValueError, match="read-only"):
        EpisodeStore.open(tmp_path / "d.zarr.zip", mode="a")


def test_validate_reports_problems(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", action_spec=osc_pose_action_spec())
    assert "store has no episodes" in store.validate()
    ep = make_episode(np.random.default_rng(0), 3)
    ep["action"] = ep["action"][:, :6].copy()
    ep["eef_pos"][1, 0] = np.nan
    store.add_episode(ep)
    problems = store.validate()
    assert any("action_spec has 7 dims" in p for p in problems)
    assert any("'eef_pos' has 1 non-finite" in p for p in problems)
    assert json.dumps(problems)
