"""SequenceSampler against a naive re-implementation of diffusion_policy's sampler."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from robopolicy.data.sampler import SequenceSampler, create_indices, downsample_mask, get_val_mask
from robopolicy.data.store import EpisodeStore


def dp_create_indices(episode_ends, sequence_length, episode_mask, pad_before=0, pad_after=0):
    """diffusion_policy/common/sampler.py::create_indices, transcribed (loops, no numba)."""
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)
    indices = []
    for i in range(len(episode_ends)):
        if not episode_mask[i]:
            continue
        start_idx = 0 if i == 0 else episode_ends[i - 1]
        end_idx = episode_ends[i]
        episode_length = end_idx - start_idx
        min_start = -pad_before
        max_start = episode_length - sequence_length + pad_after
        for idx in range(min_start, max_start + 1):
            buffer_start_idx = max(idx, 0) + start_idx
            buffer_end_idx = min(idx + sequence_length, episode_length) + start_idx
            start_offset = buffer_start_idx - (idx + start_idx)
            end_offset = (idx + sequence_length + start_idx) - buffer_end_idx
            indices.append([buffer_start_idx, buffer_end_idx, start_offset, sequence_length - end_offset])
    return np.array(indices).reshape(-1, 4)


def dp_sample_sequence(arr, sequence_length, row):
    """diffusion_policy's SequenceSampler.sample_sequence for one key (no key_first_k)."""
    buffer_start_idx, buffer_end_idx, sample_start_idx, sample_end_idx = row
    sample = arr[buffer_start_idx:buffer_end_idx]
    data = sample
    if sample_start_idx > 0 or sample_end_idx < sequence_length:
        data = np.zeros((sequence_length, *arr.shape[1:]), dtype=arr.dtype)
        if sample_start_idx > 0:
            data[:sample_start_idx] = sample[0]
        if sample_end_idx < sequence_length:
            data[sample_end_idx:] = sample[-1]
        data[sample_start_idx:sample_end_idx] = sample
    return data


def random_data(rng, lengths):
    n = int(sum(lengths))
    return {
        "action": rng.standard_normal((n, 3)).astype(np.float32),
        "image.cam": rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8),
    }, np.cumsum(lengths).astype(np.int64)


@pytest.mark.parametrize("trial", range(6))
def test_matches_diffusion_policy(tmp_path, trial):
    rng = np.random.default_rng(trial)
    lengths = rng.integers(1, 30, size=rng.integers(1, 8))
    lengths[0] = 2  # always one episode shorter than the horizon
    horizon = int(rng.integers(1, 17))
    pad_before, pad_after = int(rng.integers(-1, horizon + 2)), int(rng.integers(-1, horizon + 2))
    mask = rng.random(len(lengths)) < 0.8
    data, ends = random_data(rng, lengths)

    expected = dp_create_indices(ends, horizon, mask, pad_before, pad_after)
    got = create_indices(ends, horizon, mask, pad_before, pad_after)
    np.testing.assert_array_equal(got, expected)

    store = EpisodeStore.create(tmp_path / "s.zarr")
    for i in range(len(lengths)):
        store.add_episode({k: v[ends[i] - lengths[i] : ends[i]] for k, v in data.items()})
    k = int(rng.integers(1, horizon + 1))
    sources = {
        "dict": SequenceSampler(
            data, ["action", "image.cam"], horizon, pad_before, pad_after, None, mask, episode_ends=ends
        ),
        "store": SequenceSampler(store, ["action", "image.cam"], horizon, pad_before, pad_after, None, mask),
        "first_k": SequenceSampler(
            store, ["action", "image.cam"], horizon, pad_before, pad_after, {"image.cam": k}, mask
        ),
        "cached": SequenceSampler(
            store, ["image.cam"], horizon, pad_before, pad_after, {"image.cam": k}, mask, cache_images=True
        ),
    }
    for name, sampler in sources.items():
        assert len(sampler) == len(expected), name
        for i, row in enumerate(expected):
            w = sampler[i]
            for key in sampler.keys:
                want = dp_sample_sequence(data[key], horizon, row)
                n = sampler.key_first_k.get(key, horizon)
                assert w[key].shape == (n, *data[key].shape[1:]), (name, key)
                assert w[key].dtype == data[key].dtype
                np.testing.assert_array_equal(w[key], want[:n], err_msg=f"{name} {key} window {i}")


def test_standard_config_window_count_and_padding():
    lengths = [20, 3]
    data, ends = random_data(np.random.default_rng(0), lengths)
    s = SequenceSampler(data, ["action"], 16, pad_before=1, pad_after=7, episode_ends=ends)
    # range(-1, L - 16 + 7 + 1): 13 windows for L=20, none for L=3 (shorter than H - pad_after)
    assert len(s) == 13
    first = s[0]["action"]
    np.testing.assert_array_equal(first[0], data["action"][0])  # padded with the first frame
    np.testing.assert_array_equal(first[1:], data["action"][:15])
    last = s[12]["action"]  # idx=11: frames 11..19, then 7 copies of the last frame (a hold)
    np.testing.assert_array_equal(last[:9], data["action"][11:20])
    np.testing.assert_array_equal(last[9:], np.repeat(data["action"][19:20], 7, axis=0))


def test_errors_and_pickle(tmp_path):
    data, ends = random_data(np.random.default_rng(0), [5, 5])
    with pytest.raises(KeyError, match="nope"):
        SequenceSampler(data, ["nope"], 4, episode_ends=ends)
    with pytest.raises(ValueError, match="episode_ends"):
        SequenceSampler(data, ["action"], 4)
    with pytest.raises(ValueError, match="key_first_k"):
        SequenceSampler(data, ["action"], 4, key_first_k={"action": 5}, episode_ends=ends)
    store = EpisodeStore.create(tmp_path / "s.zarr")
    store.add_episode({k: v[:5] for k, v in data.items()})
    s = SequenceSampler(store, ["action", "image.cam"], 4, 1, 2)
    s2 = pickle.loads(pickle.dumps(s))
    for i in range(len(s)):
        for key in s.keys:
            np.testing.assert_array_equal(s[i][key], s2[i][key])
    with pytest.raises(IndexError):
        s[len(s)]


def test_val_mask_like_diffusion_policy():
    assert not get_val_mask(10, 0.0, 0).any()
    assert get_val_mask(1, 0.5, 0).sum() == 0
    m = get_val_mask(2, 0.9, 0)
    assert m.sum() == 1
    m = get_val_mask(100, 0.1, seed=42)
    assert m.sum() == 10
    # the same draw as diffusion_policy's get_val_mask
    expected = np.zeros(100, bool)
    expected[np.random.default_rng(seed=42).choice(100, size=10, replace=False)] = True
    np.testing.assert_array_equal(m, expected)
    np.testing.assert_array_equal(get_val_mask(100, 0.1, seed=42), m)
    d = downsample_mask(~m, 20, seed=0)
    assert d.sum() == 20 and not (d & m).any()


class RecordingArray:
    """A 4-D array that records every slice read (to check what the sampler decodes)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.reads = a, []
        self.shape, self.dtype = a.shape, a.dtype

    def __getitem__(self, s):
        self.reads.append((s.start, s.stop))
        return self.a[s]


def test_key_first_k_reads_only_needed_frames():
    data, ends = random_data(np.random.default_rng(0), [30, 12])
    rec = RecordingArray(data["image.cam"])
    s = SequenceSampler(
        {"image.cam": rec, "action": data["action"]},
        ["image.cam", "action"],
        16,
        1,
        7,
        {"image.cam": 2},
        episode_ends=ends,
    )
    assert not rec.reads  # images are not loaded up front
    for i in range(len(s)):
        w = s[i]
        assert w["image.cam"].shape == (2, 4, 4, 3) and w["action"].shape == (16, 3)
    assert len(rec.reads) == len(s)  # one contiguous read per window
    assert max(stop - start for start, stop in rec.reads) <= 2
