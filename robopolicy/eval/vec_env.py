"""Pipe-based vector of robosuite envs, one per ``spawn`` subprocess.

Each worker owns one :class:`~robopolicy.envs.robosuite_env.RobosuiteEnv` (fast-render patch
applied first) and runs whole action slices, so one round trip moves an env through a chunk::

    main process                         worker w
    ------------                         --------
    reset(seed, video[, shove[, goal]])──▶  env.reset(seed); first frame if recording
    run(actions (n, Da))       ──────▶   step until n done, success or max_steps (a suite's
                                         scripted shove replaces the actions of its steps; with
                                         a goal, success is the suite's goals.success)
                               ◀──────   {"obs": [per-step obs], "success", "done", "t", ...}

Calls to several workers are sent first and received after (:meth:`SubprocVecEnv.call`), so
the envs step in parallel while the policy runs batched in the main process.

Video frames come from :meth:`RobosuiteEnv.render_frame` of ``video_camera`` at
``video_size`` pixels: rendered as robosuite renders the camera observations.
"""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from robopolicy.interrupts import ignore_sigint


class _Episode:
    """Worker-side state of the running episode."""

    def __init__(
        self,
        video: str | None,
        perturbation: dict[str, Any] | None = None,
        goal: tuple[Any, dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.video = video
        self.frames: list[np.ndarray] = []
        self.success = False
        self.task_success = False
        self.reward = 0.0
        self.perturbation = perturbation
        self.perturbed_steps = 0
        self.goal = goal  # (GoalSource, goal frames) or None
        self.goal_distance = float("inf")
        self.goal_reached_t: int | None = None

    def update(self, t: int, obs: dict[str, Any], task_success: bool) -> None:
        """Success after env step ``t`` (the suite's goal rule when there is a goal)."""
        self.task_success = self.task_success or task_success
        if self.goal is None:
            self.success = self.task_success
            return
        source, frames = self.goal
        if source.tolerance is not None and self.goal_reached_t is None:
            self.goal_distance = min(self.goal_distance, source.distance(obs, frames))
            if self.goal_distance <= source.tolerance:
                self.goal_reached_t = t
        reached = self.goal_reached_t is not None
        self.success = reached if source.success == "goal" else reached or self.task_success

    def action(self, t: int, a: np.ndarray) -> np.ndarray:
        """The action executed at env step ``t``: the policy's, or the scripted shove's."""
        p = self.perturbation
        if p is None or not p["at_step"] <= t < p["at_step"] + p["steps"]:
            return a
        self.perturbed_steps += 1
        grip = a[-1] if p["gripper"] is None else p["gripper"]
        return np.asarray([*p["action"], grip], dtype=np.float64)


def _run(env: Any, ep: _Episode, actions: np.ndarray, fps: int, video_size: int, camera: str) -> dict[str, Any]:
    obs_list, done = [], False
    for a in actions:
        obs, reward, done, info = env.step(ep.action(env.t, a))
        obs_list.append(obs)
        ep.reward += reward
        ep.update(env.t, obs, bool(info["success"]))
        if ep.video:
            ep.frames.append(env.render_frame(camera=camera, size=video_size))
        if ep.success or done:
            done = True
            break
    out = {
        "obs": obs_list,
        "success": ep.success,
        "task_success": ep.task_success,
        "goal_distance": ep.goal_distance,
        "goal_reached_t": ep.goal_reached_t,
        "done": done,
        "t": env.t,
        "reward": ep.reward,
        "video": None,
        "perturbed_steps": ep.perturbed_steps,
        "outcome": env.outcome() if done else None,
    }
    if done and ep.video:
        from robopolicy.eval.video import write_mp4

        out["video"] = str(write_mp4(ep.video, ep.frames, fps=fps))
        ep.frames = []
    return out


def worker_main(conn: Connection, env_kwargs: dict[str, Any], video_size: int, video_camera: str = "agentview") -> None:
    """Subprocess entry: build the env, then serve ``(command, argument)`` messages.

    A terminal's Ctrl-C reaches every process of the group: the workers ignore it and let the
    main process decide (it closes them, or a training run lets the evaluation finish)."""
    ignore_sigint()
    env = None
    try:
        from robopolicy.envs.render import apply_fast_render_patch

        apply_fast_render_patch()
        from robopolicy.envs.robosuite_env import RobosuiteEnv, validate_video_camera

        env = RobosuiteEnv(**env_kwargs)
        validate_video_camera(env.task, video_camera)
        conn.send(("ok", env.observation_shapes()))
        ep = _Episode(None)
        while True:
            cmd, arg = conn.recv()
            if cmd == "reset":
                seed, video, *rest = arg  # (seed, video or None[, shove or None[, (GoalSource, frames) or None]])
                ep = _Episode(video, *rest)
                obs = env.reset(int(seed))
                if video:
                    ep.frames.append(env.render_frame(camera=video_camera, size=video_size))
                conn.send(("ok", obs))
            elif cmd == "run":
                fps = env_kwargs.get("control_freq", 20)
                conn.send(("ok", _run(env, ep, np.asarray(arg), fps, video_size, video_camera)))
            elif cmd == "close":
                conn.send(("ok", None))
                break
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
    except (KeyboardInterrupt, EOFError):
        pass
    except Exception:  # report to the main process, which raises
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
    finally:
        if env is not None:
            env.close()
        conn.close()


class SubprocVecEnv:
    """``n`` robosuite envs in ``spawn`` subprocesses; ``observation_shapes`` of the first.

    Episodes reset with a video path record ``video_camera`` frames of ``video_size`` pixels.
    """

    def __init__(
        self,
        n: int,
        env_kwargs: dict[str, Any],
        video_size: int = 256,
        start_timeout: float = 300.0,
        video_camera: str = "agentview",
    ) -> None:
        if n < 1:
            raise ValueError(f"need at least one worker, got {n}")
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[mp.Process] = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, dict(env_kwargs), video_size, video_camera), daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)
        try:
            shapes = [self._recv(i, start_timeout) for i in range(n)]
        except BaseException:
            self.close()
            raise
        self.observation_shapes: dict[str, tuple[tuple[int, ...], Any]] = shapes[0]

    @property
    def n(self) -> int:
        return len(self.conns)

    def call(self, calls: Sequence[tuple[int, str, Any]]) -> list[Any]:
        """Send every ``(worker, command, argument)`` first, then collect the replies in order."""
        for i, cmd, arg in calls:
            self.conns[i].send((cmd, arg))
        return [self._recv(i) for i, _, _ in calls]

    def _recv(self, i: int, timeout: float | None = None) -> Any:
        conn = self.conns[i]
        if timeout is not None and not conn.poll(timeout):
            raise TimeoutError(f"env worker {i} did not answer within {timeout:.0f} s")
        try:
            status, payload = conn.recv()
        except EOFError:
            raise RuntimeError(f"env worker {i} died (exit code {self.procs[i].exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"env worker {i} failed:\n{payload}")
        return payload

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for p, conn in zip(self.procs, self.conns):
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
            conn.close()
        self.conns, self.procs = [], []

    def __enter__(self) -> SubprocVecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
