"""Closed-loop evaluation of a policy on a suite: parallel robosuite workers, batched policy.

Per env: reset with seed ``suite.seed_start + seed_offset + i``, keep the last ``To``
observations (the first frame repeated at reset, as diffusion_policy does), predict a chunk
for every active env in one batched call, execute its slice ``[To-1, To-1+Ta)``, re-plan;
an episode ends at success or after ``suite.max_steps`` steps. A worker whose episode ended
takes the next queued episode, so the batch is "all envs still running".

Suite options: ``goals`` (goal-conditioned: episode i starts from held-out demonstration i's
seed and the policy gets its final frame as ``obs["goal.<key>"]`` (B, 1, ...); success, judged
by the env worker, is the task's or reaching the goal within a tolerance, or with
``goals.success: goal`` the goal only) and ``perturbation`` (a scripted
shove mid-episode, executed by the worker in place of the policy's actions). Policies that
return ``info["energy"]`` (EBT) get it recorded per chunk against the env step, and the report
plots it for successful against failed episodes.

Videos: the first ``n_videos`` episodes are recorded from ``video_camera`` (rendered as
robosuite renders camera observations) to ``out/videos/episode_<i>_seed<seed>.mp4``; the first
``grid`` episodes (default: as many as ``n_videos``) are also tiled into
``out/videos/grid.mp4``, each tile labelled SUCCESS/FAILURE with its seed (episodes in the grid
are recorded even beyond ``n_videos``).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from robopolicy.control.executor import ChunkExecutor
from robopolicy.envs.robosuite_env import validate_video_camera
from robopolicy.eval.metrics import percentiles, success_summary
from robopolicy.eval.suite import GoalSource, Suite, load_suite
from robopolicy.eval.vec_env import SubprocVecEnv
from robopolicy.inference.options import InferenceOptions
from robopolicy.policy import CONFIG_FILE, Policy
from robopolicy.types import GOAL_PREFIX

GRID_FILE = "grid.mp4"
"""File name of the grid video inside ``out/videos/``."""


def resolve_checkpoint(path: str | Path) -> Path:
    """A policy directory from a policy dir or a run dir (its ``best``, else its ``latest``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if (p / CONFIG_FILE).is_file():
        return p
    for name in ("best", "latest"):
        if (p / name / CONFIG_FILE).is_file():
            return p / name
    raise FileNotFoundError(f"{p} is neither a policy directory ({CONFIG_FILE}) nor a run directory (best/ or latest/)")


def check_compatible(policy: Policy, suite: Suite, shapes: dict[str, tuple]) -> None:
    """Every observation key of the policy exists in the suite's env with the same shape."""
    for f in policy.config.obs_spec.fields:
        if f.key not in shapes:
            raise KeyError(
                f"the policy needs observation {f.key!r}, which suite {suite.name!r} does not provide "
                f"(it gives {sorted(shapes)}; images need the camera in the suite's cameras)"
            )
        if tuple(shapes[f.key][0]) != tuple(f.shape):
            raise ValueError(
                f"observation {f.key!r}: suite {suite.name!r} gives {shapes[f.key][0]}, policy expects {f.shape}"
            )
    if policy.config.action_spec.dim != 7:
        raise ValueError(f"the policy predicts {policy.config.action_spec.dim}-D actions; robosuite OSC_POSE takes 7")


@dataclasses.dataclass
class _Slot:
    """The episode a worker is running."""

    index: int
    seed: int
    generator: torch.Generator
    nfe: int = 0
    t: int = 0
    energy: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    perturbed_steps: int = 0


def load_goals(
    source: GoalSource, policy: Policy, n: int, offset: int = 0
) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """Seeds and goal frames of episodes ``offset .. offset + n`` of a goal store: each held-out
    demonstration's env seed and its final frame of every observation key of the policy."""
    from robopolicy.config import resolve_path
    from robopolicy.data.store import EpisodeStore

    keys = list(getattr(policy.config, "goal_keys", None) or [])
    if not keys:
        raise ValueError(
            f"the suite supplies goals, but policy {policy.name!r} takes none (it has no goal_keys); "
            "evaluate it on a suite without goals"
        )
    store = EpisodeStore.open(resolve_path(source.store), mode="r")
    obs_keys = [k[len(GOAL_PREFIX) :] for k in keys]
    missing = [k for k in obs_keys + ([source.match_key] if source.match_key else []) if k not in store.keys()]
    if missing:
        raise KeyError(f"goal store {store.path} has no field {missing} (it has {store.keys()})")
    if store.n_episodes < offset + n:
        raise ValueError(
            f"goal store {store.path} has {store.n_episodes} demonstrations; episodes {offset}..{offset + n - 1} "
            "were asked for (generate more, or evaluate fewer episodes)"
        )
    seeds, goals = [], []
    for i in range(offset, offset + n):
        meta = store.episode_metadata(i)
        if "seed" not in meta:
            raise ValueError(
                f"goal store {store.path}: episode {i} has no recorded env seed (generate it with demos generate)"
            )
        sl = store.episode_slice(i)
        last = sl.stop - 1
        fields = obs_keys + ([source.match_key] if source.match_key and source.match_key not in obs_keys else [])
        seeds.append(int(meta["seed"]))
        goals.append({k: np.asarray(store[k][last]) for k in fields})
    return seeds, goals


def episode_generator(seed: int, device: Any = "cpu") -> torch.Generator:
    """The policy's noise for the episode with env seed ``seed``: its own stream, so results do
    not depend on the worker count or on which episodes share a batch."""
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + 0x5EED)


@dataclasses.dataclass
class _Rollouts:
    episodes: list[dict[str, Any]]
    latencies_ms: list[float]
    batch_sizes: list[int]


def _run_episodes(
    actor: Any,
    policy: Policy,
    vec: SubprocVecEnv,
    seeds: list[int],
    video_paths: dict[int, Path],
    options: Any,
    n_action_steps: int | None,
    progress: bool,
    suite: Suite | None = None,
    goals: list[dict[str, np.ndarray]] | None = None,
) -> _Rollouts:
    """Roll out every seed: each worker id is an environment id for the actor's per-episode state.
    ``goals[i]``: episode i's goal frames (added to the policy's input as ``goal.<key>`` (B, 1, ...))."""
    keys = policy.config.obs_spec.keys
    executor = ChunkExecutor(policy.config.timing, keys, n_action_steps)
    queue = deque(range(len(seeds)))
    slots: dict[int, _Slot] = {}
    results: dict[int, dict[str, Any]] = {}
    lat, sizes = [], []
    bar = tqdm(total=len(seeds), disable=not progress, desc="eval")
    shove = dataclasses.asdict(suite.perturbation) if suite is not None and suite.perturbation else None
    source = suite.goals if suite is not None else None
    goal_keys = list(getattr(policy.config, "goal_keys", None) or []) if goals else []

    def start(workers: list[int]) -> None:
        calls = []
        for w in workers[: len(queue)]:
            i = queue.popleft()
            slots[w] = _Slot(i, seeds[i], episode_generator(seeds[i], policy.device))
            video = video_paths.get(i)
            goal = (source, goals[i]) if goals and source is not None else None
            calls.append((w, "reset", (seeds[i], str(video) if video else None, shove, goal)))
        if calls:
            actor.reset(env_ids=[w for w, _, _ in calls])
        for (w, _, _), obs in zip(calls, vec.call(calls)):
            executor.start(w, obs)

    start(list(range(vec.n)))
    while slots:
        active = executor.needing_chunk()
        obs = executor.batch_obs(active)
        for gk in goal_keys:
            obs[gk] = np.stack([goals[slots[w].index][gk[len(GOAL_PREFIX) :]] for w in active])[:, None]
        t0 = time.perf_counter()
        out = actor.predict(obs, env_ids=active, generator=[slots[w].generator for w in active], options=options)
        chunks = out.actions.detach().float().cpu().numpy()
        lat.append((time.perf_counter() - t0) * 1000.0)
        sizes.append(len(active))
        nfe, energy = out.info.get("nfe"), out.info.get("energy")
        for j, w in enumerate(active):
            executor.set_chunk(w, chunks[j])
            if nfe is not None:
                slots[w].nfe += int(nfe[j]) if torch.is_tensor(nfe) and nfe.ndim else int(nfe)
            if energy is not None:
                slots[w].energy.append(
                    (slots[w].t, float(energy[j] if torch.is_tensor(energy) and energy.ndim else energy))
                )
        replies = vec.call([(w, "run", executor.take(w)) for w in active])
        finished = []
        for w, rep in zip(active, replies):
            slot = slots[w]
            for o in rep["obs"]:
                executor.observe(w, o)
                if actor.observes_every_step:
                    actor.observe({k: np.asarray(o[k])[None] for k in keys}, env_ids=[w])
            slot.t = int(rep["t"])
            slot.perturbed_steps = int(rep.get("perturbed_steps", 0))
            if rep["done"]:  # at success (the suite's goal rule with goals) or max_steps
                result = {
                    "episode": slot.index,
                    "seed": slot.seed,
                    "success": bool(rep["success"]),
                    "length": int(rep["t"]),
                    "reward": float(rep["reward"]),
                    "nfe": slot.nfe,
                    "video": rep["video"],
                }
                if goals:
                    result.update(task_success=bool(rep["task_success"]), goal_reached_t=rep["goal_reached_t"])
                    if source is not None and source.tolerance is not None:
                        result["goal_distance"] = float(rep["goal_distance"])
                if shove is not None:
                    result["perturbed_steps"] = slot.perturbed_steps
                if rep.get("outcome"):
                    result["outcome"] = rep["outcome"]
                if slot.energy:
                    result["energy"] = [[t, e] for t, e in slot.energy]
                results[slot.index] = result
                del slots[w]
                executor.end(w)
                finished.append(w)
                bar.update(1)
        start(finished)
    bar.close()
    return _Rollouts([results[i] for i in range(len(seeds))], lat, sizes)


def evaluate(
    policy_or_checkpoint: Policy | str | Path,
    suite: Suite | str | Path,
    episodes: int | None = None,
    workers: int = 2,
    seed_offset: int = 0,
    out: str | Path | None = None,
    n_videos: int = 3,
    progress: bool = True,
    policy_kwargs: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    video_camera: str = "agentview",
    grid: int | None = None,
    inference: InferenceOptions | None = None,
    engine: Any = None,
) -> dict[str, Any]:
    """Roll out a policy (object, policy dir or run dir) on a suite; returns the report dict
    (also ``out/report.json``, ``out/report.md`` and ``out/videos/*.mp4`` when ``out`` is set).

    ``video_camera`` names the camera of the videos (one of the task's cameras; checked before
    anything starts). ``grid``: how many of the first episodes go into the labelled grid video
    ``out/videos/grid.mp4`` (None: ``n_videos``; 0: no grid).

    ``inference`` chooses how the policy runs (its own sampler with typed options, or RTI);
    ``policy_kwargs`` is shorthand for ``InferenceOptions(policy=policy_kwargs)``. Bad options
    are refused before any simulator starts. ``engine`` (an
    :class:`~robopolicy.inference.engine.EngineConfig`, a backend name or a dict) chooses how
    the policy's network runs (default: the policy's own setting). Each episode's noise comes from its own generator
    (seeded by its env seed), so per-episode results do not depend on ``workers``.
    """
    from robopolicy.eval.report import build_report, write_report
    from robopolicy.eval.video import GridTile, write_grid_mp4

    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    validate_video_camera(suite.task, video_camera)
    n_grid = n_videos if grid is None else grid
    if n_videos < 0 or n_grid < 0:
        raise ValueError(f"n_videos and grid must be >= 0 (got {n_videos}, {n_grid})")
    checkpoint = None
    if isinstance(policy_or_checkpoint, Policy):
        policy = policy_or_checkpoint
    else:
        checkpoint = resolve_checkpoint(policy_or_checkpoint)
        policy = Policy.load(checkpoint, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if engine is not None:
        policy.set_engine(engine)
    n = int(episodes if episodes is not None else suite.episodes)
    if n < 1 or workers < 1 or n_videos < 0:
        raise ValueError(f"episodes and workers must be >= 1 and n_videos >= 0 (got {n}, {workers}, {n_videos})")
    if inference is None:
        inference = InferenceOptions(policy=dict(policy_kwargs or {}))
    elif policy_kwargs:
        inference = dataclasses.replace(inference, policy={**inference.policy, **policy_kwargs})
    actor = inference.build(policy)  # refuses unknown options now, not after the rollouts
    options = policy.resolve_options(inference.policy)
    goals = None
    if suite.goals is not None:  # held-out demonstrations: their seeds and final frames
        seeds, goals = load_goals(suite.goals, policy, n, seed_offset)
    else:
        seeds = [suite.seed_start + seed_offset + i for i in range(n)]
    n_grid = min(n_grid, n) if out else 0
    videos = (
        {i: Path(out) / "videos" / f"episode_{i:03d}_seed{seeds[i]}.mp4" for i in range(min(max(n_videos, n_grid), n))}
        if out
        else {}
    )
    was_training = policy.training
    policy.eval()
    t0 = time.perf_counter()
    try:
        vec_env = SubprocVecEnv(min(workers, n), suite.env_kwargs(), video_camera=video_camera)
        with vec_env as vec:
            check_compatible(policy, suite, vec.observation_shapes)
            t_start = time.perf_counter()
            roll = _run_episodes(
                actor, policy, vec, seeds, videos, options, inference.n_action_steps, progress, suite, goals
            )
            rollout_s = time.perf_counter() - t_start
    finally:
        policy.train(was_training)
    grid_video = None
    if n_grid:
        tiles = [GridTile(e["video"], e["success"], e["seed"]) for e in roll.episodes[:n_grid]]
        grid_video = str(write_grid_mp4(Path(out) / "videos" / GRID_FILE, tiles, fps=suite.control_freq))
    report = build_report(
        suite=suite.to_dict(),
        checkpoint=str(checkpoint) if checkpoint else None,
        policy=policy.name,
        episodes=roll.episodes,
        summary=success_summary([e["success"] for e in roll.episodes]),
        latency_ms={
            **percentiles(roll.latencies_ms),
            "mean": float(np.mean(roll.latencies_ms)),
            "calls": len(roll.latencies_ms),
        },
        mean_batch=float(np.mean(roll.batch_sizes)),
        wall_time_s=time.perf_counter() - t0,
        rollout_time_s=rollout_s,
        grid_video=grid_video,
        settings={
            "workers": min(workers, n),
            "seed_offset": seed_offset,
            "inference": inference.to_dict(),
            "engine": {**dataclasses.asdict(policy.engine_config), "device": str(policy.device)},
            "timing": dataclasses.asdict(policy.config.timing),
            "video_camera": video_camera,
            "grid": n_grid,
        },
    )
    if out is not None:
        write_report(report, Path(out))
    return report
