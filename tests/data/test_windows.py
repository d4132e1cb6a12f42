"""Config-driven data windows: the general WindowSampler equals diffusion_policy's windows for
the standard timing, extra (goal) frames and strided frames, the sequential stream sampler,
and the action_key bug."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.data.dataset import EpisodeDataset
from robopolicy.data.sampler import SequenceSampler, WindowSampler
from robopolicy.data.store import EpisodeStore
from robopolicy.data.windows import DataWindows, FrameRef, SamplerKind
from robopolicy.train.data import SequentialStreamSampler

LENGTHS = (12, 3, 20, 9, 1, 15)


@pytest.fixture
def store(tmp_path) -> EpisodeStore:
    s = EpisodeStore.create(tmp_path / "s.zarr")
    step = 0
    for length in LENGTHS:
        t = np.arange(step, step + length)
        s.add_episode(
            {
                "act": np.stack([t, -t], axis=1).astype(np.float32),  # the action field is not named "action"
                "state": t[:, None].astype(np.float32) * np.ones((1, 3), np.float32),
                "image.cam": (t % 256).astype(np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8),
            }
        )
        step += length
    return s


@pytest.mark.parametrize("horizon, to, ta", [(8, 2, 4), (16, 2, 8), (4, 1, 1), (5, 3, 3), (10, 2, 9)])
def test_standard_windows_equal_diffusion_policy_windows(store, horizon, to, ta):
    mask = np.array([True, True, False, True, True, True])
    windows = DataWindows.from_timing(["state", "image.cam"], horizon, to, ta, action_key="act")
    ws = WindowSampler(store, windows, mask)
    ref = SequenceSampler(store, ["state", "image.cam", "act"], horizon, to - 1, ta - 1, None, mask)
    assert len(ws) == len(ref) > 0
    for i in range(len(ref)):
        a, b = ws[i], ref[i]
        np.testing.assert_array_equal(a["act"], b["act"])
        for k in ("state", "image.cam"):
            np.testing.assert_array_equal(a[k], b[k][:to], err_msg=f"window {i} {k}")


def test_goal_frames_and_strided_obs(store):
    windows = DataWindows.from_timing(
        ["state"],
        4,
        3,
        2,
        action_key="act",
        obs_stride=2,
        extras={"goal": FrameRef("state", None), "later": FrameRef("image.cam", 5)},
    )
    assert windows.obs_offsets["state"] == (-4, -2, 0)
    ds = EpisodeDataset(store, windows=windows)
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    for i in range(len(ds)):
        e, t = (int(x) for x in ds.sampler.windows[i])
        start, last = int(starts[e]), int(starts[e] + LENGTHS[e] - 1)
        item = ds[i]
        expected = np.clip(start + t + np.array([-4, -2, 0]), start, last)
        np.testing.assert_array_equal(item["obs"]["state"][:, 0], expected)
        assert item["goal"].shape == (1, 3) and item["goal"][0, 0] == last  # the episode's last frame
        assert item["later"].shape == (1, 4, 4, 3) and item["later"][0, 0, 0, 0] == min(start + t + 5, last) % 256
        np.testing.assert_array_equal(item["action"][:, 0], np.clip(start + t + np.arange(-2, 2), start, last))
    assert "episode_start" not in ds[0]


def test_action_key_other_than_action_feeds_the_normalizer_as_action(store):
    ds = EpisodeDataset(store, ["state"], 4, 2, 2, action_key="act")
    fields = ds.fields_for_normalizer()
    assert set(fields) == {"state", "action"} and fields["action"].shape == (sum(LENGTHS), 2)


def test_bad_declarations_are_refused():
    with pytest.raises(ValueError, match="strictly increasing"):
        DataWindows({"state": (0, -1)}, (0, 1))
    with pytest.raises(ValueError, match="may not be named"):
        DataWindows({"state": (0,)}, (0, 1), extras={"obs": FrameRef("state")})
    with pytest.raises(ValueError, match="at least one"):
        DataWindows({}, (0,))


def stream_epoch(ds, batch, stride, seed=0):
    sampler = SequentialStreamSampler(ds.sampler.episode_window_ranges(), stride, batch, seed)
    n = len(sampler)  # the coming epoch's length (each epoch's episode order gives its own)
    idx = list(iter(sampler))
    assert len(idx) == n and len(idx) % batch == 0
    return sampler, [idx[i : i + batch] for i in range(0, len(idx), batch)]


def test_sequential_streams_follow_episodes_in_order(store):
    windows = DataWindows.from_timing(["state"], 4, 2, 2, action_key="act", sampler=SamplerKind.SEQUENTIAL)
    ds = EpisodeDataset(store, windows=windows)
    _, batches = stream_epoch(ds, batch=2, stride=windows.stream_stride)
    assert len(batches) >= 5
    seen_episodes = set()
    for row in range(2):
        prev = None
        for b in batches:
            i = b[row]
            e, t = (int(x) for x in ds.sampler.windows[i])
            item = ds[i]
            assert item["episode_start"] == (t == 0)
            if prev is not None and not item["episode_start"]:
                assert (e, t) == (prev[0], prev[1] + 2)  # the same episode, one chunk (Ta = 2) later
            if item["episode_start"]:
                assert e not in seen_episodes  # each episode starts once per epoch
                seen_episodes.add(e)
            prev = (e, t)
    # the two rows never hold the same episode at the same time
    assert all(ds.sampler.windows[b[0], 0] != ds.sampler.windows[b[1], 0] for b in batches)


def test_stream_chunks_stack_consecutive_windows_and_mark_those_past_the_end(store):
    windows = DataWindows.from_timing(["state"], 4, 2, 2, action_key="act", sampler="sequential", stream_chunks=3)
    ds = EpisodeDataset(store, windows=windows)
    single = EpisodeDataset(
        store, windows=DataWindows.from_timing(["state"], 4, 2, 2, action_key="act", sampler="sequential")
    )
    ranges = ds.sampler.episode_window_ranges()
    for first, end in ranges:
        for i in range(first, end, 2 * 3):  # what the trainer's sampler hands out: stride Ta * K
            item = ds[i]
            assert item["obs"]["state"].shape == (3, 2, 3) and item["action"].shape == (3, 4, 2)
            assert item["episode_start"] == (i == first)
            for j in range(3):
                w = i + 2 * j
                assert item["chunk_valid"][j] == (w < end)
                ref = single[min(w, end - 1)]  # past the end: the last window, repeated
                np.testing.assert_array_equal(item["obs"]["state"][j], ref["obs"]["state"])
                np.testing.assert_array_equal(item["action"][j], ref["action"])
    with pytest.raises(ValueError, match="sequential"):
        DataWindows.from_timing(["state"], 4, 2, 2, stream_chunks=2)
    with pytest.raises(ValueError, match="stream_chunks"):
        DataWindows.from_timing(["state"], 4, 2, 2, sampler="sequential", stream_chunks=0)


def test_sequential_sampler_resumes_exactly_mid_epoch(store):
    windows = DataWindows.from_timing(["state"], 4, 2, 2, action_key="act", sampler="sequential")
    ds = EpisodeDataset(store, windows=windows)
    ranges = ds.sampler.episode_window_ranges()
    full = SequentialStreamSampler(ranges, 2, 2, seed=3)
    epochs = [list(iter(full)) for _ in range(3)]
    assert epochs[0] != epochs[1]  # a new episode order each epoch

    part = SequentialStreamSampler(ranges, 2, 2, seed=3)
    list(iter(part))  # epoch 0
    it = iter(part)
    consumed = 2 * 2  # two batches of epoch 1
    state = part.state_dict(consumed)
    resumed = SequentialStreamSampler(ranges, 2, 2, seed=999)
    resumed.load_state_dict(state)
    assert list(iter(resumed)) == epochs[1][consumed:]
    assert list(iter(resumed)) == epochs[2]
    del it


def test_sequential_sampler_needs_an_episode_per_stream(store):
    windows = DataWindows.from_timing(["state"], 4, 2, 2, action_key="act", sampler="sequential")
    ds = EpisodeDataset(store, windows=windows)
    with pytest.raises(ValueError, match="at least one episode per stream"):
        SequentialStreamSampler(ds.sampler.episode_window_ranges(), 2, batch_size=64, seed=0)
