"""EpisodeDataset: windows, split, normalizer fields, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robopolicy.data.dataset import EpisodeDataset
from robopolicy.data.store import EpisodeStore


@pytest.fixture
def store_path(tmp_path):
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(tmp_path / "s.zarr")
    for length in (12, 3, 20, 9, 15):
        store.add_episode(
            {
                "action": rng.standard_normal((length, 7)).astype(np.float32),
                "eef_pos": rng.standard_normal((length, 3)).astype(np.float32),
                "image.agentview": rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8),
            }
        )
    return tmp_path / "s.zarr"


def test_items(store_path):
    ds = EpisodeDataset(store_path, ["eef_pos", "image.agentview"], horizon=8, n_obs_steps=2, n_action_steps=4)
    store = EpisodeStore.open(store_path)
    # pad_before=1, pad_after=3: L - 8 + 3 + 1 + 1 windows per episode (when > 0)
    assert len(ds) == sum(max(0, int(L) - 8 + 5) for L in store.episode_lengths)
    item = ds[0]
    assert item["action"].shape == (8, 7) and item["action"].dtype == np.float32
    assert item["obs"]["eef_pos"].shape == (2, 3)
    assert item["obs"]["image.agentview"].shape == (2, 8, 8, 3)
    assert item["obs"]["image.agentview"].dtype == np.uint8
    ep0 = store.episode(0)
    # window 0 starts one step before the episode: obs[0] and obs[1] are both frame 0
    np.testing.assert_array_equal(item["obs"]["eef_pos"], ep0["eef_pos"][[0, 0]])
    np.testing.assert_array_equal(item["action"], ep0["action"][[0, 0, 1, 2, 3, 4, 5, 6]])
    # window 1: obs are frames 0,1; the newest obs (index To-1) is aligned with action[To-1]
    item = ds[1]
    np.testing.assert_array_equal(item["obs"]["image.agentview"], ep0["image.agentview"][[0, 1]])
    np.testing.assert_array_equal(item["action"][1], ep0["action"][1])


def test_split_and_normalizer_fields(store_path):
    kw = dict(obs_keys=["eef_pos"], horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.4, seed=1)
    train, val = EpisodeDataset(store_path, **kw), EpisodeDataset(store_path, split="val", **kw)
    assert val.episode_mask.sum() == 2 and train.episode_mask.sum() == 3
    assert not (train.episode_mask & val.episode_mask).any()
    f = train.fields_for_normalizer()
    assert set(f) == {"eef_pos", "action"} and f["action"].shape == (59, 7) and f["eef_pos"].shape == (59, 3)


def test_bad_keys(store_path):
    with pytest.raises(KeyError, match=r"observation key 'robot0_eef_pos'.*available fields.*eef_pos"):
        EpisodeDataset(store_path, ["robot0_eef_pos"], 8, 2, 4)
    with pytest.raises(KeyError, match="action key 'act'"):
        EpisodeDataset(store_path, ["eef_pos"], 8, 2, 4, action_key="act")
    with pytest.raises(ValueError, match="exceeds horizon"):
        EpisodeDataset(store_path, ["eef_pos"], 4, 2, 8)
    with pytest.raises(ValueError, match="split"):
        EpisodeDataset(store_path, ["eef_pos"], 8, 2, 4, split="test")


def test_dataloader_workers(store_path):
    ds = EpisodeDataset(store_path, ["eef_pos", "image.agentview"], horizon=8, n_obs_steps=2, n_action_steps=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["action"]) for b in batches) == len(ds)
    b = batches[0]
    assert b["obs"]["image.agentview"].shape == (4, 2, 8, 8, 3) and b["obs"]["image.agentview"].dtype == torch.uint8
    assert b["action"].shape == (4, 8, 7)
    for j in range(4):
        np.testing.assert_array_equal(b["obs"]["image.agentview"][j].numpy(), ds[j]["obs"]["image.agentview"])
