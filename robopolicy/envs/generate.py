"""Scripted-expert demo generation into a Zarr :class:`~robopolicy.data.store.EpisodeStore`.

Episodes run in ``spawn`` worker processes (each applies the render patch and builds its own
env and expert; with ``workers=1`` they run in this process). Episode ``i`` of a run uses env
seed ``seed + i`` and its own noise generator, so its content depends on its seed only. The
main process writes finished episodes in seed order: the output is identical for any number
of workers.

Each stored episode holds every observation key of :class:`RobosuiteEnv` (``obs[t]`` is the
observation the action ``action[t]`` was chosen from) plus ``action`` float32 (T, 7). It ends
``steps_after_success`` steps after the task first reports success, or at ``max_steps``.

``n_episodes`` counts successful demos. Failed attempts are dropped (``keep_failed=False``) or
stored with ``success=False`` in their metadata; generation goes on with new seeds until
``n_episodes`` successes or ``max_attempts`` attempts (default ``2 * n_episodes + 20``).
"""

from __future__ import annotations

import collections
import math
import multiprocessing as mp
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robopolicy.envs.experts import EXPERTS, ExpertNoise, check_variant, make_expert
from robopolicy.envs.robosuite_env import RobosuiteEnv, task_info, validate_cameras
from robopolicy.interrupts import GracefulStop, defer_interrupts, ignore_sigint
from robopolicy.outputs import check_output_dir, discard, is_episode_store, staging_dir, swap_in
from robopolicy.types import osc_pose_action_spec


@dataclass
class GenerateReport:
    """What a :func:`generate_demos` run did."""

    path: str
    task: str
    requested: int
    n_success: int = 0
    n_failed: int = 0
    n_attempts: int = 0
    n_written: int = 0
    n_steps: int = 0
    seconds: float = 0.0
    first_episode_seconds: float = 0.0
    failed_seeds: list[int] = field(default_factory=list)
    seed_start: int = 0
    next_seed: int = 0
    """First seed not yet attempted: ``--append`` continues from here."""
    interrupted: bool = False
    """Stopped by Ctrl-C before the requested count."""

    @property
    def success_rate(self) -> float:
        return self.n_success / self.n_attempts if self.n_attempts else float("nan")

    @property
    def steady_episodes_per_min(self) -> float:
        """Attempts per minute after the first one finished (excludes worker start-up)."""
        dt = self.seconds - self.first_episode_seconds
        return 60.0 * (self.n_attempts - 1) / dt if self.n_attempts > 1 and dt > 0 else float("nan")

    @property
    def complete(self) -> bool:
        """True when the requested number of successful demos was reached."""
        return self.n_success >= self.requested

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (rates that are undefined, e.g. with one attempt, are ``None``, not NaN)."""
        d = asdict(self)
        d["success_rate"] = _finite_or_none(self.success_rate)
        d["steady_episodes_per_min"] = _finite_or_none(self.steady_episodes_per_min)
        return d


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class _EpisodeJob:
    task: str
    cameras: tuple[str, ...]
    image_size: int
    max_steps: int | None
    noise: ExpertNoise
    steps_after_success: int
    variant: str | None = None


_WORKER: dict[str, Any] = {}


def _init_worker(job: _EpisodeJob) -> None:
    """Build the env once per process and reuse it for every episode (render patch applied inside)."""
    key = (job.task, job.cameras, job.image_size, job.max_steps)
    if _WORKER.get("key") == key:
        return
    if "env" in _WORKER:
        _WORKER.pop("env").close()
    _WORKER["env"] = RobosuiteEnv(job.task, cameras=job.cameras, image_size=job.image_size, max_steps=job.max_steps)
    _WORKER["key"] = key


def run_episode(env: RobosuiteEnv, job: _EpisodeJob, seed: int) -> tuple[bool, dict[str, np.ndarray]]:
    """One expert episode with env seed ``seed`` -> ``(success, {field: (T, ...)})``."""
    rng = np.random.default_rng([int(seed), 0x5EED])
    expert = make_expert(job.task, env, rng, noise=job.noise, variant=job.variant)
    obs = env.reset(seed)
    expert.reset(obs)
    frames: list[dict[str, np.ndarray]] = []
    actions: list[np.ndarray] = []
    success_at: int | None = None
    done = False
    while not done:
        action = env.validate_action(expert.act(obs))
        frames.append(obs)
        actions.append(action.astype(np.float32))
        obs, _, done, info = env.step(action)
        if success_at is None and expert.succeeded(info):
            success_at = env.t
        if success_at is not None and env.t >= success_at + job.steps_after_success:
            break
    data = {k: np.stack([f[k] for f in frames]) for k in frames[0]}
    data["action"] = np.stack(actions)
    return success_at is not None, data


def _pool_init(job: _EpisodeJob) -> None:
    ignore_sigint()  # Ctrl-C reaches the whole process group: the parent decides when to stop
    _init_worker(job)


def _worker_episode(job: _EpisodeJob, seed: int) -> tuple[int, bool, dict[str, np.ndarray]]:
    _init_worker(job)
    success, data = run_episode(_WORKER["env"], job, seed)
    return seed, success, data


def check_output_path(out: str | Path, overwrite: bool) -> Path:
    """ValueError if ``out`` may not be written (see :func:`robopolicy.outputs.check_output_dir`)."""
    return check_output_dir(out, "store", overwrite=overwrite)


def _append_plan(
    store: Any, task: str, cameras: tuple[str, ...], image_size: int, seed: int | None, variant: str | None = None
) -> tuple[int, int]:
    """``(first seed, successes already stored)`` to continue ``store``; ValueError if it was made otherwise."""
    attrs = store.attrs
    made_for = attrs.get("task") or str(attrs.get("source", "")).removeprefix("scripted:")
    if made_for != task:
        raise ValueError(f"--append: store {store.path} holds {made_for or 'unknown'!r} demos, not {task!r}")
    if attrs.get("expert_variant") != variant:
        raise ValueError(
            f"--append: store {store.path} holds expert variant {attrs.get('expert_variant')!r} demos, got {variant!r}"
        )
    if list(attrs.get("cameras", [])) != list(cameras):
        raise ValueError(
            f"--append: store {store.path} records cameras {attrs.get('cameras', [])}, got {list(cameras)}"
        )
    for k, z in store.fields.items():
        if k.startswith("image.") and tuple(z.shape[1:3]) != (image_size, image_size):
            raise ValueError(f"--append: store images are {z.shape[1]}x{z.shape[2]}, got --image-size {image_size}")
    metas = store.episodes_metadata
    used = [int(m["seed"]) for m in metas if "seed" in m]
    gen = attrs.get("generation") or {}
    first = max([int(gen.get("next_seed", 0)), *(s + 1 for s in used)], default=0)
    if seed is not None and seed < first:
        raise ValueError(f"--append: seeds below {first} are already used by {store.path}; pass --seed >= {first}")
    return (first if seed is None else seed), sum(bool(m.get("success")) for m in metas)


def generate_demos(
    task: str,
    n_episodes: int,
    out: str | Path,
    cameras: Sequence[str] = (),
    workers: int = 1,
    seed: int | None = None,
    noise: ExpertNoise | float = 0.05,
    keep_failed: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    image_size: int = 84,
    max_steps: int | None = None,
    steps_after_success: int = 10,
    max_attempts: int | None = None,
    append: bool = False,
    variant: str | None = None,
) -> GenerateReport:
    """Record ``n_episodes`` successful scripted-expert demos of ``task`` into a store at ``out``.

    ``noise`` is an :class:`ExpertNoise` or a scale (``ExpertNoise.from_scale``; the default 0.05
    is what the success rates in ``benchmarks/results/demos.md`` were measured with). All
    arguments and the output path are checked before anything is written. Returns a
    :class:`GenerateReport`; ``report.complete`` is False if ``max_attempts`` ran out first.

    Output modes:

    * new path: written in place; the store's ``generation`` attribute (requested count,
      seeds, ``complete``) is updated after every episode, so a killed run is visibly incomplete;
    * ``overwrite``: ``out`` must be an episode store or an empty directory; the new store is
      written to a hidden sibling and swapped in only when the run ends, so an interrupted or
      failed run leaves the old store as it was;
    * ``append``: adds ``n_episodes`` successful demos to the existing store ``out`` with seeds
      after every seed it already used (``seed`` may only move the start later).

    Ctrl-C stops at an episode boundary (``report.interrupted``): a new or appended store keeps
    every finished episode and stays valid; an overwrite is abandoned.

    ``variant``: an expert variant of the task (``experts.VARIANTS``), whose own rule says when
    a demo has succeeded; the store records it (``source: scripted:<task>:<variant>``).
    """
    from robopolicy.data.store import EpisodeStore

    task_info(task)
    if task not in EXPERTS:
        raise ValueError(f"no scripted expert for task {task!r}; experts exist for: {', '.join(EXPERTS)}")
    check_variant(task, variant)
    cameras = validate_cameras(task, cameras)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    max_attempts = 2 * n_episodes + 20 if max_attempts is None else int(max_attempts)
    if max_attempts < n_episodes:
        raise ValueError(f"max_attempts ({max_attempts}) must be >= n_episodes ({n_episodes})")
    noise = noise if isinstance(noise, ExpertNoise) else ExpertNoise.from_scale(float(noise))
    out = Path(out)
    if append and overwrite:
        raise ValueError("--append and --overwrite exclude each other")
    prior_success, seed_start = 0, seed or 0
    if append:
        if not is_episode_store(out):
            raise ValueError(f"--append: {out} is not an episode store")
        with EpisodeStore.open(out, mode="r") as existing:
            seed, prior_success = _append_plan(existing, task, cameras, int(image_size), seed, variant)
            seed_start = int((existing.attrs.get("generation") or {}).get("seed_start", seed))
        target = out
    else:
        check_output_path(out, overwrite)
        seed = seed or 0
        target = staging_dir(out) if out.exists() else out

    job = _EpisodeJob(task, cameras, int(image_size), max_steps, noise, int(steps_after_success), variant)
    report = GenerateReport(path=str(out), task=task, requested=n_episodes, seed_start=seed, next_seed=seed)
    generation = {"requested": prior_success + n_episodes, "seed_start": seed_start}

    def record_progress(store: EpisodeStore) -> None:
        done = prior_success + report.n_success
        generation.update(n_success=done, next_seed=report.next_seed, complete=done >= generation["requested"])
        store.set_attrs(generation=dict(generation))

    t0 = time.perf_counter()
    if append:
        store = EpisodeStore.open(target, mode="a")
    else:
        store = EpisodeStore.create(
            target,
            action_spec=osc_pose_action_spec(),
            control_rate=20.0,
            source=f"scripted:{task}" + (f":{variant}" if variant else ""),
        )
        store.set_attrs(task=task, cameras=list(cameras), expert_noise=asdict(noise), expert_variant=variant)
    record_progress(store)
    bar = _progress_bar(n_episodes, task, progress)

    def consume(s: int, success: bool, data: dict[str, np.ndarray]) -> None:
        if report.n_attempts == 0:
            report.first_episode_seconds = time.perf_counter() - t0
        report.n_attempts += 1
        report.n_success += success
        report.next_seed = s + 1
        if not success:
            report.n_failed += 1
            report.failed_seeds.append(s)
        with defer_interrupts():  # an episode and the attributes that count it are written whole
            if success or keep_failed:
                meta = {"seed": s, "success": bool(success), "teleop_device": "scripted", "task": task}
                if variant:
                    meta["expert_variant"] = variant
                store.add_episode(data, metadata=meta)
                report.n_written += 1
                report.n_steps += len(data["action"])
            record_progress(store)
        if bar is not None:
            bar.set_postfix_str(f"successes {report.n_success}/{report.n_attempts} attempts", refresh=not success)
            bar.update(int(success))

    seeds = iter(range(seed, seed + max_attempts))
    ok = False
    try:
        with GracefulStop(f"{task} demo generation", "the end of the current episode") as stop:
            finished = lambda: report.n_success >= n_episodes or stop.requested  # noqa: E731
            if workers == 1:
                for s in seeds:
                    if finished():
                        break
                    consume(*_worker_episode(job, s))
            else:
                _run_pool(job, seeds, workers, consume, finished)
            report.interrupted = stop.requested and report.n_success < n_episodes
        ok = True
    finally:
        if bar is not None:
            bar.close()
        store.close()
        if target != out:  # an overwrite: swap in only a finished run
            if ok and not report.interrupted:
                swap_in(target, out)
            else:
                discard(target)
    report.seconds = time.perf_counter() - t0
    return report


def _run_pool(job: _EpisodeJob, seeds, workers: int, consume, finished) -> None:
    """Run episodes on a spawn pool; results are consumed strictly in seed order."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_pool_init, initargs=(job,)) as pool:
        pending: collections.deque = collections.deque()

        def submit() -> None:
            s = next(seeds, None)
            if s is not None:
                pending.append(pool.apply_async(_worker_episode, (job, s)))

        for _ in range(2 * workers):
            submit()
        while pending and not finished():
            consume(*pending.popleft().get())
            if not finished():
                submit()
        pool.terminate()


def _progress_bar(total: int, task: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"{task} demos", unit="demo")


__all__ = ["GenerateReport", "generate_demos", "run_episode", "check_output_path"]
