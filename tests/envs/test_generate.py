"""generate_demos: store content, metadata, failure handling, bad arguments, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.data.store import EpisodeStore
from robopolicy.envs.generate import generate_demos


def test_generate_lift_demos(tmp_path):
    out = tmp_path / "lift.zarr"
    report = generate_demos("Lift", 3, out, cameras=["agentview"], image_size=32, noise=0.05, progress=False)
    assert report.complete and report.n_success == 3 and report.n_written == 3
    store = EpisodeStore.open(out)
    assert store.n_episodes == 3
    assert store.source == "scripted:Lift" and store.control_rate == 20.0
    assert store.action_spec is not None and store.action_spec.dim == 7
    metas = store.episodes_metadata
    assert [m["seed"] for m in metas] == [0, 1, 2]
    for m in metas:
        assert m["success"] is True and m["teleop_device"] == "scripted" and m["task"] == "Lift"
    ep = store.episode(0)
    T = len(ep["action"])
    assert 20 < T < 120
    assert ep["action"].dtype == np.float32 and ep["action"].shape == (T, 7)
    assert ep["image.agentview"].shape == (T, 32, 32, 3) and ep["image.agentview"].dtype == np.uint8
    assert ep["state"].shape == (T, 19) and ep["state"].dtype == np.float32
    assert set(np.unique(ep["action"][:, 6])) <= {-1.0, 1.0}
    # the cube ends up lifted
    assert ep["object"][-1, 2] > ep["object"][0, 2] + 0.03


def test_failed_episodes_dropped_or_flagged(tmp_path):
    # 5 steps are too few for Lift: every attempt fails
    dropped = generate_demos("Lift", 1, tmp_path / "a.zarr", max_steps=5, max_attempts=2, progress=False)
    assert not dropped.complete and dropped.n_attempts == 2 and dropped.n_failed == 2
    assert dropped.failed_seeds == [0, 1]
    assert EpisodeStore.open(tmp_path / "a.zarr").n_episodes == 0

    kept = generate_demos("Lift", 1, tmp_path / "b.zarr", max_steps=5, max_attempts=2, keep_failed=True, progress=False)
    store = EpisodeStore.open(tmp_path / "b.zarr")
    assert kept.n_written == 2 and store.n_episodes == 2
    assert [m["success"] for m in store.episodes_metadata] == [False, False]
    assert len(store.episode(0)["action"]) == 5


def test_bad_arguments_write_nothing(tmp_path, monkeypatch):
    from robopolicy.envs import experts

    monkeypatch.delitem(experts.EXPERTS, "Stack")
    out = tmp_path / "x.zarr"
    with pytest.raises(ValueError, match="unknown task 'Lfit'"):
        generate_demos("Lfit", 1, out, progress=False)
    with pytest.raises(ValueError, match="unknown camera 'front'"):
        generate_demos("Lift", 1, out, cameras=["front"], progress=False)
    with pytest.raises(ValueError, match="no scripted expert"):
        generate_demos("Stack", 1, out, progress=False)
    with pytest.raises(ValueError, match="n_episodes"):
        generate_demos("Lift", 0, out, progress=False)
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists"):
        generate_demos("Lift", 1, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_deterministic_across_worker_counts(tmp_path):
    kw = dict(cameras=["agentview"], image_size=32, noise=0.05, progress=False, seed=5)
    generate_demos("Lift", 3, tmp_path / "w1.zarr", workers=1, **kw)
    generate_demos("Lift", 3, tmp_path / "w2.zarr", workers=2, **kw)
    a, b = EpisodeStore.open(tmp_path / "w1.zarr"), EpisodeStore.open(tmp_path / "w2.zarr")
    assert a.episodes_metadata == b.episodes_metadata
    for i in range(3):
        ea, eb = a.episode(i), b.episode(i)
        for k in ea:
            np.testing.assert_array_equal(ea[k], eb[k], err_msg=f"episode {i} {k}")


def test_a_variant_is_recorded_and_an_append_must_match_it(tmp_path):
    out = tmp_path / "place.zarr"
    report = generate_demos("Lift", 2, out, noise=0.05, progress=False, variant="place4")
    assert report.complete and report.n_success == 2
    store = EpisodeStore.open(out)
    assert store.source == "scripted:Lift:place4" and store.attrs["expert_variant"] == "place4"
    assert [m["expert_variant"] for m in store.episodes_metadata] == ["place4"] * 2
    ep = store.episode(0)
    assert abs(ep["object"][-1, 2] - ep["object"][0, 2]) < 0.02  # put down, not held up
    assert np.linalg.norm(ep["object"][-1, :2] - ep["object"][0, :2]) > 0.09
    store.close()
    with pytest.raises(ValueError, match="holds expert variant 'place4' demos, got None"):
        generate_demos("Lift", 1, out, progress=False, append=True)
    with pytest.raises(ValueError, match="no expert variant 'nope'"):
        generate_demos("Lift", 1, tmp_path / "x.zarr", progress=False, variant="nope")
    assert not (tmp_path / "x.zarr").exists()
