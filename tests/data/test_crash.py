"""Crash safety for real: SIGKILL a recording process mid-append, then reopen and append.

The child records 40-step episodes with two 64x64 cameras (deterministic from the episode
index), buffering step by step and calling ``add_episode`` once per episode. It writes
``begin <i>`` to a progress file before each append and ``done <i>`` after it returns. The
parent waits until at least 3 episodes are done and the next append has begun, sleeps a random
fraction of an append's duration, and kills it. Whatever the kill left must be a tail the store
accepts as a crash (never refused as corruption); every finished episode must then read back
bit-identical, and the store must accept a new episode. Trial 2 rolls back with ``repair_store``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from robopolicy.data.store import EpisodeStore, repair_store

REPO = Path(__file__).resolve().parents[2]
EP_LEN = 40

CHILD = r"""
import sys, time
import numpy as np
from robopolicy.data.store import EpisodeStore
from tests.data.test_crash import make_step
path, progress = sys.argv[1], sys.argv[2]
store = EpisodeStore.create(path, control_rate=20.0, source="crash-test")
def mark(s):
    with open(progress, "a") as f:
        f.write(s + "\n"); f.flush()
for i in range(10_000):
    steps = [make_step(i, t) for t in range(40)]          # the recorder's step buffer
    episode = {k: np.stack([s[k] for s in steps]) for k in steps[0]}
    mark(f"begin {i} {time.monotonic()}")
    store.add_episode(episode, {"seed": i, "success": True})
    mark(f"done {i} {time.monotonic()}")
"""


def make_step(i: int, t: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([i, t])
    return {
        "action": rng.standard_normal(7).astype(np.float32),
        "eef_pos": rng.standard_normal(3).astype(np.float32),
        "image.agentview": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "image.wrist": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
    }


def expected_episode(i: int) -> dict[str, np.ndarray]:
    steps = [make_step(i, t) for t in range(EP_LEN)]
    return {k: np.stack([s[k] for s in steps]) for k in steps[0]}


def read_progress(path: Path) -> list[tuple[str, int, float]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), float(parts[2])))
    return out


def run_and_kill(tmp: Path, rng: np.random.Generator) -> tuple[int, float]:
    """Start the recorder, kill it mid-append after >= 3 episodes; (episodes done, kill delay)."""
    store_path, progress = tmp / "rec.zarr", tmp / "progress.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(store_path), str(progress)], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "recorder exited early"
            assert time.monotonic() < deadline, "recorder too slow"
            events = read_progress(progress)
            done = [e for e in events if e[0] == "done"]
            if len(done) >= 3 and events[-1][0] == "begin":
                break
            time.sleep(0.002)
        durations = [d[2] - b[2] for b, d in zip(events[0::2], events[1::2])]
        delay = float(rng.uniform(0, 1.2 * np.mean(durations)))
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = [e for e in read_progress(progress) if e[0] == "done"]
    return len(done), delay


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_mid_append(tmp_path, trial):
    n_done, delay = run_and_kill(tmp_path, np.random.default_rng(trial))
    if trial == 2:  # roll the tail back explicitly, as `robopolicy data repair` does
        result = repair_store(tmp_path / "rec.zarr")
        assert (result.backup is not None) == bool(result.tail)
        rolled_back = [result.tail.describe()] if result.tail else []
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing left to roll back
            store = EpisodeStore.open(tmp_path / "rec.zarr", mode="a")
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            store = EpisodeStore.open(tmp_path / "rec.zarr", mode="a")
        rolled_back = [str(w.message) for w in caught]
    # the episode in flight is either complete (killed after its end was written) or gone
    assert store.n_episodes in (n_done, n_done + 1), (store.n_episodes, n_done, delay)
    print(f"trial {trial}: kill after {delay * 1e3:.0f} ms, {n_done} done, {store.n_episodes} kept, {rolled_back}")
    for i in range(store.n_episodes):
        got, want = store.episode(i), expected_episode(i)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"episode {i} field {k}")
        assert store.episode_metadata(i) == {"seed": i, "success": True}
    assert all(z.shape[0] == store.n_steps for z in store.fields.values())
    n = store.n_episodes
    assert store.add_episode(expected_episode(n), {"seed": n, "success": True}) == n
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reopened = EpisodeStore.open(tmp_path / "rec.zarr")
    assert reopened.n_episodes == n + 1 and reopened.validate(deep=True) == []
    np.testing.assert_array_equal(reopened.episode(n)["image.wrist"], expected_episode(n)["image.wrist"])
