"""The runner in real robosuite: a replayed scripted expert must succeed through it (rows
follow their environments while the batch shrinks and refills), and per-episode results do
not depend on the worker count (each episode's noise has its own generator)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robopolicy.data.store import EpisodeStore
from robopolicy.envs.generate import generate_demos
from robopolicy.eval.runner import _run_episodes
from robopolicy.eval.vec_env import SubprocVecEnv
from robopolicy.inference.output import PolicyOutput
from robopolicy.types import ChunkTiming

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from policy_fixture import make_store, tiny_config  # noqa: E402

SEEDS = [100_000, 100_001, 100_002, 100_003]


class ExpertReplay:
    """Replays recorded expert demos open loop. The episode is recognised from its reset
    observation, so a row fed another environment's observations replays the wrong demo."""

    observes_every_step = False
    device = torch.device("cpu")

    def __init__(self, store: EpisodeStore) -> None:
        self.config = SimpleNamespace(
            timing=ChunkTiming(horizon=10, n_obs_steps=2, n_action_steps=4), obs_spec=SimpleNamespace(keys=["state"])
        )
        self.demos = [store.episode(i, ["state", "action"]) for i in range(store.n_episodes)]
        self.cursor: dict[int, tuple[int, int]] = {}
        self.mismatches = 0

    def reset(self, env_ids=None):
        for e in env_ids:
            self.cursor.pop(e, None)

    def predict(self, obs, *, env_ids, generator=None, options=None):
        chunks = np.zeros((len(env_ids), 10, 7), np.float32)
        for j, e in enumerate(env_ids):
            newest = obs["state"][j, -1]
            if e not in self.cursor:
                d = int(np.argmin([np.abs(demo["state"][0] - newest).max() for demo in self.demos]))
                self.cursor[e] = (d, 0)
            d, k = self.cursor[e]
            demo = self.demos[d]
            if k < len(demo["state"]) and not np.allclose(demo["state"][k], newest, atol=1e-4):
                self.mismatches += 1
            idx = np.clip(np.arange(k - 1, k + 9), 0, len(demo["action"]) - 1)  # row To-1 is step k
            chunks[j] = demo["action"][idx]
            self.cursor[e] = (d, k + 4)
        return PolicyOutput(torch.from_numpy(chunks))


@pytest.fixture(scope="module")
def expert_store(tmp_path_factory) -> EpisodeStore:
    path = tmp_path_factory.mktemp("replay") / "lift.zarr"
    report = generate_demos("Lift", len(SEEDS), path, seed=SEEDS[0], progress=False, steps_after_success=0)
    assert report.n_success == len(SEEDS) and report.failed_seeds == []
    return EpisodeStore.open(path)


def test_a_replayed_expert_succeeds_through_the_runner(expert_store):
    actor = ExpertReplay(expert_store)
    lengths = [len(a) for a in (d["action"] for d in actor.demos)]
    with SubprocVecEnv(2, {"task": "Lift", "max_steps": 200}) as vec:
        roll = _run_episodes(actor, actor, vec, SEEDS, {}, None, None, False)
    assert [e["success"] for e in roll.episodes] == [True] * len(SEEDS)
    assert actor.mismatches == 0  # every row saw its own environment's trajectory
    assert [e["length"] for e in roll.episodes] == lengths
    assert 1 in roll.batch_sizes and max(roll.batch_sizes) == 2  # the batch shrank and refilled


class RecordingVec(SubprocVecEnv):
    """Records every action each episode (by seed) received."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.seed_of: dict[int, int] = {}
        self.actions: dict[int, list] = {}

    def call(self, calls):
        for w, cmd, arg in calls:
            if cmd == "reset":
                self.seed_of[w] = arg[0]
            else:
                self.actions.setdefault(self.seed_of[w], []).extend(np.asarray(arg).tolist())
        return super().call(calls)


def test_per_episode_results_do_not_depend_on_the_worker_count(tmp_path):
    from robopolicy.policy import Policy
    from robopolicy.train.run import train

    store = make_store(tmp_path / "toy.zarr")
    cfg = tiny_config(num_steps=3, checkpoint_every=3, policy={**tiny_config().policy, "noise_scale": 0.5})
    train(cfg, str(store), tmp_path / "run", progress=False)
    policy = Policy.load(tmp_path / "run" / "latest")
    runs = []
    for workers in (1, 3):
        with RecordingVec(workers, {"task": "Lift", "max_steps": 10}) as vec:
            roll = _run_episodes(policy, policy, vec, SEEDS, {}, policy.resolve_options(None), None, False)
        runs.append((roll, vec.actions))
    (one, acts1), (three, acts3) = runs
    assert [(e["seed"], e["length"]) for e in one.episodes] == [(e["seed"], e["length"]) for e in three.episodes]
    assert max(three.batch_sizes) == 3 and max(one.batch_sizes) == 1
    for seed in SEEDS:  # the same noise reached the same episode, whatever shared its batch
        np.testing.assert_allclose(acts1[seed], acts3[seed], atol=1e-5, err_msg=f"seed {seed}")
    assert not np.allclose(acts1[SEEDS[0]], acts1[SEEDS[1]])  # the episodes differ: the comparison means something
