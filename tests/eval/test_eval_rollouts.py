"""Rollout loop semantics on a fake vec env; a real end-to-end Lift evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robopolicy.eval.runner import _run_episodes, evaluate, resolve_checkpoint
from robopolicy.eval.vec_env import _Episode
from robopolicy.inference.output import PolicyOutput
from robopolicy.types import ChunkTiming

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from policy_fixture import make_store, tiny_config  # noqa: E402


class FakeVec:
    """obs "x" = [seed, t]; the task succeeds once t reaches 10 for even seeds; max 12 steps.
    Success and the end of an episode are the real worker's rule (``_Episode.update``: the
    task's success, or a suite goal's)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.t = [0] * n
        self.seed = [0] * n
        self.ep = [_Episode(None)] * n
        self.received: list[np.ndarray] = []

    def call(self, calls):
        out = []
        for w, cmd, arg in calls:
            if cmd == "reset":
                self.seed[w], self.t[w] = arg[0], 0
                self.ep[w] = _Episode(None, *arg[2:])
                out.append({"x": np.array([arg[0], 0.0])})
                continue
            obs, done, ep = [], False, self.ep[w]
            for a in arg:
                self.received.append(a)
                self.t[w] += 1
                obs.append({"x": np.array([self.seed[w], self.t[w]], dtype=float)})
                ep.update(self.t[w], obs[-1], self.seed[w] % 2 == 0 and self.t[w] >= 10)
                done = ep.success or self.t[w] >= 12
                if done:
                    break
            out.append(
                {
                    "obs": obs,
                    "success": ep.success,
                    "task_success": ep.task_success,
                    "goal_distance": ep.goal_distance,
                    "goal_reached_t": ep.goal_reached_t,
                    "done": done,
                    "t": self.t[w],
                    "reward": 0.0,
                    "video": None,
                }
            )
        return out


class StatefulPolicy:
    """A stateful test policy keyed by environment id: chunk row h = [h, calls so far in this
    env's episode, the episode's seed as first seen by this env]. It records what it was given."""

    observes_every_step = False
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.config = SimpleNamespace(
            timing=ChunkTiming(horizon=8, n_obs_steps=2, n_action_steps=3),
            obs_spec=SimpleNamespace(keys=["x"]),
        )
        self.seen, self.ids, self.resets = [], [], []
        self.calls: dict[int, int] = {}
        self.episode_seed: dict[int, float] = {}

    def predict(self, obs, *, env_ids, generator=None, options=None):
        self.seen.append(obs["x"].copy())
        self.ids.append(list(env_ids))
        b = obs["x"].shape[0]
        chunk = torch.zeros(b, 8, 7)
        chunk[:, :, 0] = torch.arange(8).float()
        for j, e in enumerate(env_ids):
            self.episode_seed.setdefault(e, float(obs["x"][j, -1, 0]))
            chunk[j, :, 1] = self.calls.get(e, 0)
            chunk[j, :, 2] = self.episode_seed[e]
            self.calls[e] = self.calls.get(e, 0) + 1
        return PolicyOutput(chunk, {"nfe": torch.full((b,), 5)})

    def reset(self, env_ids=None):
        self.resets.append(list(env_ids))
        for e in env_ids:
            self.calls.pop(e, None)
            self.episode_seed.pop(e, None)


def test_rollout_loop_semantics_and_rows_follow_their_environments():
    vec, policy = FakeVec(2), StatefulPolicy()
    seeds = [100, 101, 102, 103, 104]
    roll = _run_episodes(policy, policy, vec, seeds, {}, None, None, progress=False)
    # first call: both envs, history = the reset frame repeated To=2 times
    assert policy.seen[0].shape == (2, 2, 2) and policy.ids[0] == [0, 1]
    np.testing.assert_array_equal(policy.seen[0][0], [[100, 0], [100, 0]])
    # executed slice [To-1, To-1+Ta) = chunk rows 1, 2, 3
    assert [a[0] for a in vec.received[:3]] == [1.0, 2.0, 3.0]
    # second call: history holds the last two obs (t = 2, 3)
    np.testing.assert_array_equal(policy.seen[1][0], [[100, 2], [100, 3]])
    # every row's obs comes from the environment its env id names, while the batch shrinks and refills
    for obs, ids in zip(policy.seen, policy.ids):
        assert len(set(obs[:, -1, 0])) == len(ids)
    # each env's actions carry its own call count (0, 1, 2, ... per episode) and its episode's seed
    per_seed = {}
    for a in vec.received:
        per_seed.setdefault(a[2], []).append(a[1])
    for seed, counts in per_seed.items():
        assert counts == [c // 3 for c in range(len(counts))], (seed, counts)
    eps = roll.episodes
    assert [e["seed"] for e in eps] == seeds
    assert [e["success"] for e in eps] == [True, False, True, False, True]
    assert [e["length"] for e in eps] == [10, 12, 10, 12, 10]
    assert [e["nfe"] for e in eps] == [5 * 4, 5 * 4, 5 * 4, 5 * 4, 5 * 4]  # ceil(length / Ta) chunks of 5 NFE
    assert policy.resets == [[0, 1], [0, 1], [0]]  # later episodes start on freed workers
    assert max(roll.batch_sizes) == 2 and roll.batch_sizes[-1] == 1


def test_resolve_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a policy directory"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nope")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from robopolicy.train.run import train

    tmp = tmp_path_factory.mktemp("evalrun")
    store = make_store(tmp / "toy.zarr")
    run = tmp / "run"
    train(tiny_config(num_steps=5, checkpoint_every=5), str(store), run, progress=False)
    return run


def test_end_to_end_lift(run_dir, tmp_path):
    suite = tmp_path / "lift_short.yaml"
    suite.write_text("task: Lift\nmax_steps: 12\nepisodes: 2\n")
    out = tmp_path / "report"
    # one episode video, but a grid of both episodes (so both are recorded), from frontview
    report = evaluate(run_dir, suite, workers=1, out=out, n_videos=1, progress=False, video_camera="frontview", grid=2)
    assert report["episodes"] == 2 and report["checkpoint"] == str(run_dir / "latest")
    assert [e["seed"] for e in report["per_episode"]] == [100_000, 100_001]
    assert all(e["length"] == 12 for e in report["per_episode"]) and report["success_rate"] == 0.0
    assert report["latency_ms"]["calls"] == 6  # 12 steps / Ta=4 per chunk, 2 episodes, 1 worker
    saved = json.loads((out / "report.json").read_text())
    assert saved["ci95"] == report["ci95"] and (out / "report.md").is_file()
    videos = sorted((out / "videos").glob("episode_*.mp4"))
    assert len(videos) == 2 and videos[0].stat().st_size > 1000
    assert report["settings"]["video_camera"] == "frontview" and report["settings"]["grid"] == 2
    import imageio.v2 as imageio

    frames = imageio.mimread(videos[0])
    assert len(frames) == 13 and frames[0].shape == (256, 256, 3)
    grid = out / "videos" / "grid.mp4"
    assert saved["grid_video"] == report["grid_video"] == str(grid)
    assert "(videos/grid.mp4)" in (out / "report.md").read_text()
    g = imageio.mimread(grid)
    assert len(g) == 13 and g[0].shape == (32 + 256, 2 * 256, 3)  # 1 row of 2 tiles under 32 px banners
    for c in range(2):  # both failed: red banners
        banner = g[0][:32, c * 256 : (c + 1) * 256].reshape(-1, 3)
        r, gr, _ = np.median(banner, axis=0)
        assert r > 150 and gr < 60, (c, r, gr)
    # the grid tile shows the episode's (decoded) frames
    assert np.abs(g[-1][32:, :256].astype(int) - frames[-1].astype(int)).mean() < 8


def test_video_camera_checked_before_rollout(run_dir, tmp_path, monkeypatch):
    import robopolicy.eval.runner as runner

    def no_envs(*args, **kwargs):
        raise AssertionError("envs were started before the video camera was checked")

    monkeypatch.setattr(runner, "SubprocVecEnv", no_envs)
    suite = tmp_path / "lift.yaml"
    suite.write_text("task: Lift\nmax_steps: 4\n")
    with pytest.raises(ValueError, match=r"unknown video camera 'top' for task Lift; valid cameras: agentview"):
        evaluate(run_dir, suite, episodes=1, out=tmp_path / "rep", video_camera="top", progress=False)
    with pytest.raises(ValueError, match="grid must be >= 0"):
        evaluate(run_dir, suite, episodes=1, out=tmp_path / "rep", grid=-1, progress=False)
    assert not (tmp_path / "rep").exists()


def test_eval_cli_video_flags():
    import argparse

    from robopolicy.eval.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    base = ["eval", "--checkpoint", "c", "--suite", "s", "--out", "o"]
    args = parser.parse_args(base)
    assert args.video_camera == "agentview" and args.grid is None
    args = parser.parse_args([*base, "--video-camera", "birdview", "--grid", "6"])
    assert args.video_camera == "birdview" and args.grid == 6


def test_incompatible_suite_is_a_clear_error(run_dir, tmp_path):
    suite = tmp_path / "stack.yaml"
    suite.write_text("task: Stack\nmax_steps: 4\n")  # state is 9+23 dims there, policy expects 19
    with pytest.raises(ValueError, match="observation 'state'"):
        evaluate(run_dir, suite, episodes=1, workers=1, progress=False)
