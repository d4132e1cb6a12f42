"""Rollout loop semantics on a fake vec env; a real end-to-end Lift evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robopolicy.eval.runner import _run_episodes, check_policy_kwargs, evaluate, resolve_checkpoint
from robopolicy.types import ChunkTiming

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from policy_fixture import make_store, tiny_config  # noqa: E402


class FakeVec:
    """obs "x" = [seed, t]; success once t reaches 10 for even seeds; max 12 steps."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.t = [0] * n
        self.seed = [0] * n
        self.received: list[np.ndarray] = []

    def call(self, calls):
        out = []
        for w, cmd, arg in calls:
            if cmd == "reset":
                self.seed[w], self.t[w] = arg[0], 0
                out.append({"x": np.array([arg[0], 0.0])})
                continue
            obs, done, ok = [], False, False
            for a in arg:
                self.received.append(a)
                self.t[w] += 1
                obs.append({"x": np.array([self.seed[w], self.t[w]], dtype=float)})
                ok = self.seed[w] % 2 == 0 and self.t[w] >= 10
                done = ok or self.t[w] >= 12
                if done:
                    break
            out.append({"obs": obs, "success": ok, "done": done, "t": self.t[w], "reward": 0.0, "video": None})
        return out


class RecordingPolicy:
    """Chunk row h = [h, newest obs t, ...]; records the obs it was given."""

    def __init__(self) -> None:
        self.config = SimpleNamespace(
            timing=ChunkTiming(horizon=8, n_obs_steps=2, n_action_steps=3),
            obs_spec=SimpleNamespace(keys=["x"]),
        )
        self.seen = []
        self.resets = []

    def predict_action_chunk(self, obs, generator=None):
        self.seen.append(obs["x"].copy())
        b = obs["x"].shape[0]
        chunk = torch.zeros(b, 8, 7)
        chunk[:, :, 0] = torch.arange(8).float()
        chunk[:, :, 1] = torch.as_tensor(obs["x"][:, -1, 1]).float()[:, None]
        return chunk

    def reset(self, env_ids=None):
        self.resets.append(env_ids)


def test_rollout_loop_semantics():
    vec, policy = FakeVec(2), RecordingPolicy()
    seeds = [100, 101, 102]
    roll = _run_episodes(policy, vec, seeds, {}, {}, torch.Generator(), progress=False)
    # first call: both envs, history = the reset frame repeated To=2 times
    assert policy.seen[0].shape == (2, 2, 2)
    np.testing.assert_array_equal(policy.seen[0][0], [[100, 0], [100, 0]])
    # executed slice [To-1, To-1+Ta) = chunk rows 1, 2, 3
    assert [a[0] for a in vec.received[:3]] == [1.0, 2.0, 3.0]
    # second call: history holds the last two obs (t = 2, 3)
    np.testing.assert_array_equal(policy.seen[1][0], [[100, 2], [100, 3]])
    eps = roll.episodes
    assert [e["seed"] for e in eps] == seeds
    assert [e["success"] for e in eps] == [True, False, True]
    assert [e["length"] for e in eps] == [10, 12, 10]
    assert policy.resets[0] == [0, 1] and len(policy.resets) == 2  # third episode started on a freed worker
    assert max(roll.batch_sizes) == 2 and roll.batch_sizes[-1] == 1


def test_resolve_checkpoint_and_kwargs(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a policy directory"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nope")
    policy = SimpleNamespace(name="p", predict_action_chunk=lambda obs, *, num_samples=1, generator=None: None)
    assert check_policy_kwargs(policy, {"sampler": None}) == {}
    with pytest.raises(ValueError, match="does not support \\['sampler'\\]"):
        check_policy_kwargs(policy, {"sampler": "ddim"})


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
