"""Corruption is refused, never mistaken for a crash tail; only a provable partial tail is rolled back.

A crash mid-``add_episode`` can only leave data past the last episode end (the same steps in
every field it reached), one extra ``episode_metadata`` entry, and an ``episode_ends`` grown by
one entry still holding the fill value 0. Everything else must raise ``StoreCorruptError`` on
open, in read and in append mode, with no byte on disk changed.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import robopolicy.data.store as store_mod
from robopolicy.data.store import EpisodeStore, StoreCorruptError, repair_store
from tests.data.test_store import make_episode


def tree_digest(path: Path) -> str:
    """Hash of every file name and content under ``path`` (the store must not change at all)."""
    h = hashlib.sha256()
    for dirpath, dirnames, files in sorted(os.walk(path)):
        dirnames.sort()
        for name in sorted(files):
            p = Path(dirpath) / name
            h.update(str(p.relative_to(path)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def make_store(path: Path, n_episodes: int = 23, zarr_format: int = 3, image: bool = True) -> list[dict]:
    rng = np.random.default_rng(7)
    store = EpisodeStore.create(path, zarr_format=zarr_format, control_rate=20.0)
    eps = [make_episode(rng, 30 + (i * 7) % 25, image=image) for i in range(n_episodes)]
    for i, ep in enumerate(eps):
        store.add_episode(ep, {"seed": i})
    return eps


def ends_chunk_file(path: Path, zarr_format: int, chunk: int = 0) -> Path:
    return path / "meta" / "episode_ends" / (f"c/{chunk}" if zarr_format == 3 else str(chunk))


def open_quietly(path: Path, mode: str) -> EpisodeStore:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EpisodeStore.open(path, mode=mode)


@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("bad_value", ["repeat", "smaller", "zero"])
def test_bad_middle_episode_ends_entry_is_refused_and_nothing_changes(tmp_path, zarr_format, bad_value):
    path = tmp_path / "s.zarr"
    make_store(path, zarr_format=zarr_format)
    ez = zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    ends = ez[:]
    ez[7] = {"repeat": ends[6], "smaller": ends[6] - 3, "zero": 0}[bad_value]
    before = tree_digest(path)
    for mode in ("r", "a"):
        with pytest.raises(StoreCorruptError, match=r"meta/episode_ends entry 7 \(chunk 0\) is .*not greater than"):
            EpisodeStore.open(path, mode=mode)
        assert tree_digest(path) == before
    with pytest.raises(StoreCorruptError, match="entry 7"):
        repair_store(path)
    assert tree_digest(path) == before
    assert not list(tmp_path.glob("*meta-backup*"))
    assert issubclass(StoreCorruptError, ValueError)


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_deleted_episode_ends_chunk_is_refused(tmp_path, zarr_format):
    path = tmp_path / "s.zarr"
    make_store(path, zarr_format=zarr_format)
    ends_chunk_file(path, zarr_format).unlink()  # now reads as 23 zeros
    before = tree_digest(path)
    for mode in ("r", "a"):
        with pytest.raises(StoreCorruptError, match=r"meta/episode_ends chunk 0 \(entries 0-22\) is missing"):
            EpisodeStore.open(path, mode=mode)
    assert tree_digest(path) == before


def test_episode_ends_chunk_boundary(tmp_path, monkeypatch):
    """With 2-entry ends chunks: an unwritten entry opening a new chunk is a crash (its chunk file
    does not exist yet); a missing chunk that held written entries is damage."""
    monkeypatch.setattr(store_mod, "_META_CHUNK", 2)
    path = tmp_path / "s.zarr"
    eps = make_store(path, n_episodes=4, image=False)
    tail = make_episode(np.random.default_rng(1), 5, image=False)
    store = EpisodeStore.open(path, mode="a")
    n = store.n_steps
    for k, a in tail.items():
        store[k].resize((n + 5, *a.shape[1:]))
        store[k][n:] = a
    meta = zarr.open_group(str(path), mode="r+")["meta"]
    meta["episode_metadata"].resize((5,))
    meta["episode_ends"].resize((5,))  # entry 4 opens chunk 2, never written
    assert not ends_chunk_file(path, 3, chunk=2).exists()
    with pytest.warns(UserWarning, match="ignored"):
        assert EpisodeStore.open(path).n_episodes == 4
    before = tree_digest(path)
    ends_chunk_file(path, 3, chunk=1).rename(tmp_path / "chunk1")  # entries 2-3 now read as zeros
    with pytest.raises(StoreCorruptError, match=r"chunk 1 \(entries 2-3\) is missing"):
        EpisodeStore.open(path, mode="a")
    (tmp_path / "chunk1").rename(ends_chunk_file(path, 3, chunk=1))
    assert tree_digest(path) == before
    with pytest.warns(UserWarning, match="rolled back: dropped 5 steps of 'action'"):
        a = EpisodeStore.open(path, mode="a")
    assert a.n_episodes == 4
    for i, ep in enumerate(eps):
        np.testing.assert_array_equal(a.episode(i)["eef_pos"], ep["eef_pos"])


@pytest.mark.filterwarnings("ignore:Object at:UserWarning")  # zarr skipping the folder
@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("how", ["deleted", "garbled"])
def test_damaged_array_metadata_is_refused(tmp_path, zarr_format, how):
    """Without its metadata document zarr skips a field's folder: the field would silently vanish."""
    path = tmp_path / "s.zarr"
    make_store(path, n_episodes=3, zarr_format=zarr_format)
    doc = path / "data" / "eef_pos" / ("zarr.json" if zarr_format == 3 else ".zarray")
    if how == "deleted":
        doc.unlink()
    else:
        doc.write_text(doc.read_text()[:40])
    before = tree_digest(path)
    match = "data/eef_pos holds files but no array metadata" if how == "deleted" else "data/eef_pos: its array metadata"
    for mode in ("r", "a"):
        with pytest.raises(StoreCorruptError, match=match):
            EpisodeStore.open(path, mode=mode)
    assert tree_digest(path) == before


def grow_tail(path: Path, lengths: dict[str, int], metadata: int = 0, ends: bool = False) -> None:
    """Make a partial tail by hand: fields grown by ``lengths``, metadata / ends grown by one."""
    root = zarr.open_group(str(path), mode="r+")
    for k, extra in lengths.items():
        z = root["data"][k]
        z.resize((z.shape[0] + extra, *z.shape[1:]))
        z[z.shape[0] - extra :] = 1
    meta = root["meta"]
    if metadata:
        meta["episode_metadata"].resize((meta["episode_metadata"].shape[0] + metadata,))
    if ends:
        meta["episode_ends"].resize((meta["episode_ends"].shape[0] + 1,))


@pytest.mark.parametrize(
    "tail, match",
    [
        ({"lengths": {"action": 4, "eef_pos": 6}}, r"by different amounts \('action' \+4, 'eef_pos' \+6\)"),
        ({"lengths": {"action": 4}, "metadata": 1, "ends": True}, r"fields \['eef_pos', 'image.agentview'\] hold no"),
        ({"lengths": {"action": 4, "eef_pos": 4, "image.agentview": 4}, "ends": True}, "episode_metadata has 23"),
        ({"lengths": {}, "metadata": 2}, "episode_metadata has 25 entries for 23 episodes"),
    ],
)
def test_tails_a_crash_cannot_leave_are_refused(tmp_path, tail, match):
    path = tmp_path / "s.zarr"
    make_store(path)
    grow_tail(path, **tail)
    before = tree_digest(path)
    for mode in ("r", "a"):
        with pytest.raises(StoreCorruptError, match=match):
            EpisodeStore.open(path, mode=mode)
    assert tree_digest(path) == before


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_crash_tail_is_ignored_in_r_and_rolled_back_in_a(tmp_path, zarr_format):
    path = tmp_path / "s.zarr"
    eps = make_store(path, zarr_format=zarr_format)
    n_steps = sum(len(ep["action"]) for ep in eps)
    grow_tail(path, {"action": 9, "eef_pos": 9, "image.agentview": 9}, metadata=1, ends=True)
    before = tree_digest(path)
    with pytest.warns(UserWarning, match="ignored"):
        r = EpisodeStore.open(path, mode="r")
    assert (r.n_episodes, r.n_steps) == (23, n_steps) and tree_digest(path) == before
    assert r.partial_tail.steps == {"action": 9, "eef_pos": 9, "image.agentview": 9}
    with pytest.warns(UserWarning, match="rolled back: dropped 9 steps of 'action'.*unwritten meta/episode_ends"):
        a = EpisodeStore.open(path, mode="a")
    assert (a.n_episodes, a.n_steps) == (23, n_steps)
    assert all(z.shape[0] == n_steps for z in a.fields.values())
    for i in (0, 11, 22):
        np.testing.assert_array_equal(a.episode(i)["image.agentview"], eps[i]["image.agentview"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert EpisodeStore.open(path).validate(deep=True) == []


def flip_bytes(path: Path, at: int, n: int = 8) -> None:
    blob = bytearray(path.read_bytes())
    blob[at : at + n] = bytes(b ^ 0xFF for b in blob[at : at + n])
    path.write_bytes(bytes(blob))


def damage(path: Path) -> None:
    """Overwrite a chunk's bytes, truncate a shard, delete a chunk (a v3 store from make_store)."""
    action = path / "data" / "action" / "c" / "0" / "0"
    flip_bytes(action, action.stat().st_size // 2)
    shard = path / "data" / "image.agentview" / "c" / "1" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-100])
    (path / "data" / "eef_pos" / "c" / "0" / "0").unlink()


def test_reads_name_the_damaged_field_and_chunk(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path)
    damage(path)
    store = EpisodeStore.open(path)
    with pytest.raises(
        StoreCorruptError, match=r"field 'action' chunk 0 \(steps 0-\d+\) is damaged: cannot be decoded"
    ):
        store.episode(3)
    with pytest.raises(StoreCorruptError, match=r"field 'image.agentview' shard 1 \(steps 256-511\) is damaged"):
        store["image.agentview"][300:302]
    np.testing.assert_array_equal(store["image.agentview"][0:2].shape, (2, 6, 5, 3))  # shard 0 is fine
    with pytest.raises(StoreCorruptError, match=r"field 'eef_pos' chunk 0 \(steps 0-\d+\) is missing"):
        store["eef_pos"][5:9]  # zarr alone would return zeros
    problems = store.validate()
    assert any("field 'eef_pos': chunk 0 (steps 0-" in p and "is missing" in p for p in problems)
    assert any("field 'action': chunk 0" in p and "cannot be decoded" in p for p in problems)
    assert any("field 'image.agentview': shard 1 (steps 256-511)" in p for p in problems)


def test_deep_validate_names_damaged_frames_inside_a_shard(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path)
    shard = path / "data" / "image.agentview" / "c" / "0" / "0" / "0" / "0"
    flip_bytes(shard, 20)  # inside the first frame's bytes; the index is intact
    store = EpisodeStore.open(path)
    assert not any("image" in p for p in store.validate())  # cheap: images are not decoded
    problems = store.validate(deep=True)
    assert problems == [
        p for p in problems if p.startswith("field 'image.agentview': chunk 0 (step 0) in shard 0 cannot be decoded")
    ]
    assert len(problems) == 1


def test_v2_deep_validate_finds_truncated_and_missing_chunks(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path, zarr_format=2)
    frame = path / "data" / "image.agentview" / "40.0.0.0"
    frame.write_bytes(frame.read_bytes()[:-7])  # Blosc itself decodes this without an error
    (path / "data" / "image.agentview" / "41.0.0.0").unlink()
    store = EpisodeStore.open(path)
    problems = store.validate(deep=True)
    assert any("chunk 40 (step 40) is truncated or damaged" in p for p in problems)
    assert any("chunk 41 (step 41) is missing" in p for p in problems)
    assert "data/action" in [k for k, ok in store.checksummed().items() if not ok]


def test_repair_rolls_back_the_tail_keeps_a_backup_and_can_be_undone(tmp_path):
    path = tmp_path / "s.zarr"
    eps = make_store(path)
    grow_tail(path, {"action": 5, "eef_pos": 5, "image.agentview": 5}, metadata=1, ends=True)
    before = tree_digest(path)
    dry = repair_store(path, dry_run=True)
    assert dry.dry_run and dry.backup is None and dry.tail.steps["action"] == 5
    assert tree_digest(path) == before
    result = repair_store(path)
    assert result.tail.to_dict()["steps_dropped"] == {"action": 5, "eef_pos": 5, "image.agentview": 5}
    assert result.backup.parent == tmp_path and result.backup.name.startswith("s.zarr.meta-backup-")
    assert (result.backup / "meta" / "episode_ends" / "zarr.json").is_file()
    assert (result.backup / "data" / "action" / "zarr.json").is_file()
    assert "rolled_back" in (result.backup / "repair.json").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = EpisodeStore.open(path)
    assert s.n_episodes == 23 and s.validate() == []
    np.testing.assert_array_equal(s.episode(22)["action"], eps[22]["action"])
    assert not repair_store(path).tail  # nothing left to repair
    # undo: the backup's files copied back restore the store as it was
    for src in result.backup.rglob("*"):
        if src.is_file() and src.name != "repair.json":
            dst = path / src.relative_to(result.backup)
            dst.write_bytes(src.read_bytes())
    assert tree_digest(path) == before
