"""Suite options: goals from held-out demonstrations, a scripted shove, energy per chunk in the report."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robopolicy.config import from_dict
from robopolicy.data.store import EpisodeStore
from robopolicy.eval.report import energy_summary, plot_energy
from robopolicy.eval.runner import _run_episodes, load_goals
from robopolicy.eval.suite import GoalSource, Perturbation, Suite
from robopolicy.eval.vec_env import _Episode
from robopolicy.inference.output import PolicyOutput
from robopolicy.types import ChunkTiming, osc_pose_action_spec
from tests.eval.test_eval_rollouts import FakeVec


class GoalPolicy:
    """Takes goals ``goal.x`` (B, 1, 2); returns an energy per chunk (the call count)."""

    observes_every_step = False
    device = torch.device("cpu")
    name = "goal_policy"

    def __init__(self) -> None:
        self.config = SimpleNamespace(
            timing=ChunkTiming(horizon=8, n_obs_steps=2, n_action_steps=3),
            obs_spec=SimpleNamespace(keys=["x"]),
            goal_keys=["goal.x"],
        )
        self.goals_seen: list[np.ndarray] = []
        self.calls = 0

    def predict(self, obs, *, env_ids, generator=None, options=None):
        self.goals_seen.append(np.asarray(obs["goal.x"]).copy())
        b = obs["x"].shape[0]
        self.calls += 1
        return PolicyOutput(torch.zeros(b, 8, 7), {"energy": torch.full((b,), float(self.calls))})

    def reset(self, env_ids=None):
        pass


def _goal_rollout(goal_x1, success="task_or_goal"):
    seeds = [100, 101, 102]
    goals = [{"x": np.array([s, goal_x1], dtype=np.float32)} for s in seeds]
    source = GoalSource("unused.zarr", match_key="x", match_dims=(1,), tolerance=0.5, success=success)
    policy = GoalPolicy()
    roll = _run_episodes(
        policy,
        policy,
        FakeVec(2),
        seeds,
        {},
        None,
        None,
        False,
        SimpleNamespace(goals=source, perturbation=None),
        goals,
    )
    return policy, roll.episodes


def test_goals_reach_the_policy_row_by_row_and_reaching_one_is_a_success():
    # the fake env's task succeeds by itself at t = 10 for even seeds; x[1] = t
    policy, eps = _goal_rollout(5.0)
    for g in policy.goals_seen:  # (B, 1, 2), each row the goal of the episode its env runs
        assert g.ndim == 3 and g.shape[1:] == (1, 2)
    assert policy.goals_seen[0][:, 0, 0].tolist() == [100, 101]
    # reached at step 5: a success, and the episode ends there (before the task's own success)
    assert [e["goal_reached_t"] for e in eps] == [5, 5, 5] and all(e["success"] for e in eps)
    assert [e["length"] for e in eps] == [5, 5, 5] and [e["task_success"] for e in eps] == [False] * 3
    assert [e["goal_distance"] for e in eps] == [0.0, 0.0, 0.0]
    _, eps = _goal_rollout(50.0)  # out of reach: the task's success only
    assert [e["success"] for e in eps] == [True, False, True] and [e["length"] for e in eps] == [10, 12, 10]
    assert [e["goal_reached_t"] for e in eps] == [None, None, None]
    assert [e["goal_distance"] for e in eps] == [40.0, 38.0, 40.0]


def test_goal_only_success_ignores_the_tasks_own_success_and_runs_on_to_the_goal():
    _, eps = _goal_rollout(11.0, success="goal")
    assert [e["task_success"] for e in eps] == [True, False, True]  # recorded, but it ended nothing
    assert all(e["success"] for e in eps) and [e["length"] for e in eps] == [11, 11, 11]
    _, eps = _goal_rollout(50.0, success="goal")
    assert not any(e["success"] for e in eps) and [e["task_success"] for e in eps] == [True, False, True]
    assert [e["length"] for e in eps] == [12, 12, 12]
    with pytest.raises(ValueError, match="needs goals.tolerance"):
        GoalSource("g.zarr", match_key="x", success="goal")
    with pytest.raises(ValueError, match="goals.success must be"):
        GoalSource("g.zarr", match_key="x", tolerance=0.1, success="task")


def test_energy_is_recorded_per_chunk_and_plotted_for_successes_and_failures(tmp_path):
    vec, policy = FakeVec(1), GoalPolicy()
    seeds = [100, 101]
    goals = [{"x": np.array([s, 99.0], dtype=np.float32)} for s in seeds]
    roll = _run_episodes(
        policy, policy, vec, seeds, {}, None, None, False, SimpleNamespace(goals=None, perturbation=None), goals
    )
    e0, e1 = roll.episodes
    assert [t for t, _ in e0["energy"]] == [0, 3, 6, 9] and [v for _, v in e0["energy"]] == [1, 2, 3, 4]
    assert [t for t, _ in e1["energy"]] == [0, 3, 6, 9] and e1["energy"][0][1] == 5
    summary = energy_summary(roll.episodes)
    assert summary["success_mean_last"] == 4.0 and summary["failure_mean_last"] == 8.0
    assert summary["success_episodes"] == 1 and summary["failure_episodes"] == 1
    report = {"per_episode": roll.episodes, "policy": "p", "suite": "s"}
    png = plot_energy(report, tmp_path / "energy.png")
    assert png.stat().st_size > 5000
    assert plot_energy({"per_episode": [{"success": True}], "policy": "p", "suite": "s"}, tmp_path / "none.png") is None


def test_the_shove_replaces_the_policys_actions_for_its_steps_only():
    ep = _Episode(None, {"at_step": 3, "steps": 2, "action": (0.0, 0.8, 0.4, 0.0, 0.0, 0.0), "gripper": -1.0})
    a = np.array([0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0])
    assert ep.action(2, a) is a and ep.action(5, a) is a
    np.testing.assert_array_equal(ep.action(3, a), [0.0, 0.8, 0.4, 0.0, 0.0, 0.0, -1.0])
    keep = _Episode(None, {"at_step": 0, "steps": 1, "action": (0.0,) * 6, "gripper": None})
    assert keep.action(0, a)[-1] == 1.0  # the policy's gripper command
    assert ep.perturbed_steps == 1 and keep.perturbed_steps == 1
    assert _Episode(None).action(0, a) is a


def test_suite_options_parse_and_refuse_bad_values():
    s = from_dict(Suite, {"task": "Lift", "goals": {"store": "g.zarr", "match_key": "object", "tolerance": 0.03}})
    assert s.goals.tolerance == 0.03 and s.perturbation is None
    s = from_dict(Suite, {"task": "Lift", "perturbation": {"at_step": 10}})
    assert s.perturbation.at_step == 10 and s.perturbation.gripper == -1.0
    with pytest.raises(ValueError, match="match_key"):
        GoalSource("g.zarr", tolerance=0.1)
    with pytest.raises(ValueError, match="6 OSC deltas"):
        Perturbation(action=(0.0, 2.0, 0.0, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="at_step"):
        Perturbation(steps=0)


def _goal_store(path, seeds):
    store = EpisodeStore.create(path, action_spec=osc_pose_action_spec(), control_rate=20.0)
    for s in seeds:
        state = np.tile(np.arange(5, dtype=np.float32)[:, None], (1, 3)) + s
        store.add_episode({"state": state, "action": np.zeros((5, 7), np.float32)}, {"seed": s})
    store.close()
    return path


def test_load_goals_reads_each_demonstrations_seed_and_final_frame(tmp_path):
    path = _goal_store(tmp_path / "goals.zarr", [7, 9, 11])
    policy = SimpleNamespace(name="p", config=SimpleNamespace(goal_keys=["goal.state"]))
    seeds, goals = load_goals(GoalSource(str(path)), policy, 2, offset=1)
    assert seeds == [9, 11] and goals[0]["state"].tolist() == [13.0] * 3
    with pytest.raises(ValueError, match="has 3 demonstrations"):
        load_goals(GoalSource(str(path)), policy, 3, offset=1)
    with pytest.raises(KeyError, match="object"):
        load_goals(GoalSource(str(path), match_key="object", tolerance=0.1), policy, 1)
    with pytest.raises(ValueError, match="takes none"):
        load_goals(GoalSource(str(path)), SimpleNamespace(name="dp", config=SimpleNamespace()), 1)
