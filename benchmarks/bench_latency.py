"""Latency sweep (issue 11): closed-loop success and chunk-boundary jumps of every chunk-merge
strategy under injected inference latency, through the real-time controller.

Each episode is one ``Controller`` run on robosuite at ``--hz`` (20) in **simulated time**
(``ControllerConfig.simulated_time``): the loop, the chunk scheduler, the safety filter and the
telemetry are the code a wall-clock run uses, but the clock is one that only the loop's sleeps
move, inference runs inline, and each chunk becomes ready ``latency`` after its request. The
delay is therefore exactly ``ceil(latency / period)`` ticks (0, 2, 4, 6 at 20 Hz for 0 / 100 /
200 / 300 ms) whatever the machine's load, so the figures are reproducible and the sweep can
run beside other jobs (its wall time is recorded, not measured as a figure).

Strategies (one checkpoint for all; see ``configs/train/*_transformer_rtc.yaml``: a DP-T trained
with training-time action conditioning, which at d = 0 is an ordinary DP-T):

=================  ===============================================================
replace            the new chunk replaces the queue from its first fresh action
temporal_ensemble  ACT's ensembling (m = 0.01), a request every tick the thread is free
rti                RTI warm starts (3 steps from t = 10), replace
rtc                RTC guided inpainting (the paper's soft mask, beta 5)
rtc_trained        training-time action conditioning: the frozen prefix given, no guidance
=================  ===============================================================

    python benchmarks/bench_latency.py --task Lift --checkpoint runs/lift_ttc \\
        --latencies 0,100,200,300 --episodes 50 --workers 2

Per-episode rows go to ``benchmarks/results/latency_<task>.jsonl`` as they finish (a rerun skips
the rows already there), the table to ``latency_<task>.json`` / ``latency.md`` and a plot to
``latency_<task>.png``. Success has a Wilson 95 % interval; the jump is the norm of the change
of the planned action where a new chunk takes over, over the 6 pose dimensions (the gripper's
open/close flips are counted apart), averaged over every boundary of every episode.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_meta  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STRATEGIES: dict[str, tuple[str, str | None]] = {
    "replace": ("replace", None),
    "temporal_ensemble": ("temporal_ensemble", None),
    "rti": ("rti", None),
    "rtc": ("rtc", "guided"),
    "rtc_trained": ("rtc", "trained"),
}
"""Row name -> (controller strategy, RTC mode)."""

_STATE: dict[str, Any] = {}


def _init_worker(checkpoint: str, task: str, hz: int, threads: int) -> None:
    import torch

    from robopolicy.control.controller import SimulatedClock
    from robopolicy.control.drivers import make_driver
    from robopolicy.eval.runner import resolve_checkpoint
    from robopolicy.policy import Policy

    torch.set_num_threads(threads)
    policy = Policy.load(resolve_checkpoint(checkpoint), device="cpu")
    policy.set_engine("eager")
    sim = SimulatedClock()
    driver = make_driver("robosuite", task=task, control_hz=hz, realtime=False, seed=0, clock=sim.now, sleep=sim.sleep)
    driver.connect()
    _STATE.update(policy=policy.eval(), sim=sim, driver=driver, hz=hz)


def _actor(policy: Any, name: str) -> Any:
    from robopolicy.inference.options import InferenceOptions
    from robopolicy.inference.rtc import RTCConfig

    strategy, mode = STRATEGIES[name]
    if strategy == "rti":
        return InferenceOptions(method="rti").build(policy)
    if strategy == "rtc":
        return InferenceOptions(method="rtc", rtc=RTCConfig(mode=mode)).build(policy)
    return policy


def run_episode(job: tuple[str, float, int]) -> dict[str, Any]:
    """One closed-loop episode; returns its row."""
    from robopolicy.control.controller import Controller, ControllerConfig

    name, latency_ms, seed = job
    policy, sim, driver, hz = _STATE["policy"], _STATE["sim"], _STATE["driver"], _STATE["hz"]
    strategy, _ = STRATEGIES[name]
    config = ControllerConfig(
        hz=float(hz),
        strategy=strategy,
        inject_latency_ms=float(latency_ms),
        seed=int(seed),
        simulated_time=True,
        warmup=False,
        first_chunk_timeout_s=60.0,
    )
    t0 = time.perf_counter()
    ctl = Controller(_actor(policy, name), driver, config, clock=sim.now, sleep=sim.sleep)
    res = ctl.run()
    jumps = ctl.scheduler.jumps
    pose = [float(np.linalg.norm(j.delta[:6])) for j in jumps]
    grip = [abs(float(j.delta[6])) > 0.5 for j in jumps]
    chunks = [r for r in ctl.telemetry.records if r["type"] == "chunk"]  # type: ignore[union-attr]
    s = res.summary
    return {
        "strategy": name,
        "latency_ms": float(latency_ms),
        "seed": int(seed),
        "success": bool(res.success),
        "end_reason": res.end_reason,
        "ticks": res.ticks,
        "faults": [f["kind"] for f in res.faults],
        "delay_ticks": sorted({c["delay_ticks"] for c in chunks}),
        "chunks": len(chunks),
        "jumps": len(jumps),
        "jump_pose_sum": float(sum(pose)),
        "jump_pose_max": float(max(pose, default=0.0)),
        "gripper_flips_at_boundary": int(sum(grip)),
        "empty_ticks": s["empty_queue_ticks"],
        "stale_dropped": s["dropped_stale_actions"],
        "safety_events": s["safety_events"],
        "inference_ms_p50": s["inference_ms"]["p50"],
        "wall_s": time.perf_counter() - t0,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from robopolicy.eval.metrics import wilson_interval

    table: dict[str, dict[str, Any]] = {}
    for name in STRATEGIES:
        for lat in sorted({r["latency_ms"] for r in rows}):
            sel = [r for r in rows if r["strategy"] == name and r["latency_ms"] == lat]
            if not sel:
                continue
            k, n = sum(r["success"] for r in sel), len(sel)
            lo, hi = wilson_interval(k, n)
            nj = sum(r["jumps"] for r in sel)
            table.setdefault(name, {})[f"{lat:g}"] = {
                "successes": k,
                "episodes": n,
                "success_rate": k / n,
                "ci95": [lo, hi],
                "jump_pose_mean": sum(r["jump_pose_sum"] for r in sel) / nj if nj else None,
                "jump_pose_max": max(r["jump_pose_max"] for r in sel),
                "boundaries": nj,
                "gripper_flips_at_boundary": sum(r["gripper_flips_at_boundary"] for r in sel),
                "delay_ticks": sorted({d for r in sel for d in r["delay_ticks"]}),
                "mean_ticks": float(np.mean([r["ticks"] for r in sel])),
                "faults": sum(bool(r["faults"]) for r in sel),
                "inference_ms_p50": float(np.median([r["inference_ms_p50"] for r in sel if r["inference_ms_p50"]])),
            }
    return table


def markdown(task: str, table: dict[str, Any], meta: dict[str, Any]) -> str:
    lats = sorted({float(k) for v in table.values() for k in v})
    head = "| strategy | " + " | ".join(f"{lat:g} ms (d = {_d(table, lat)})" for lat in lats) + " |"
    lines = [
        f"### {task}: success (95 % CI) and mean pose jump at chunk boundaries",
        "",
        head,
        "|---|" + "---|" * len(lats),
    ]
    for name, cols in table.items():
        cells = []
        for lat in lats:
            c = cols.get(f"{lat:g}")
            if c is None:
                cells.append("-")
                continue
            lo, hi = c["ci95"]
            jump = "-" if c["jump_pose_mean"] is None else f"{c['jump_pose_mean']:.3f}"
            cells.append(f"{c['successes']}/{c['episodes']} ({100 * lo:.0f}-{100 * hi:.0f} %), jump {jump}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Checkpoint `{meta['checkpoint']}`, {meta['hz']} Hz, seeds from {meta['seed_start']}, "
        f"simulated time; wall {meta['wall_s']:.0f} s with {meta['workers']} workers.",
    ]
    return "\n".join(lines) + "\n"


def _d(table: dict[str, Any], lat: float) -> str:
    ds = sorted({d for cols in table.values() for d in cols.get(f"{lat:g}", {}).get("delay_ticks", [])})
    return ",".join(map(str, ds)) or "?"


def plot(task: str, table: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, cols in table.items():
        lats = sorted(float(k) for k in cols)
        rate = [100 * cols[f"{lat:g}"]["success_rate"] for lat in lats]
        lo = [100 * cols[f"{lat:g}"]["ci95"][0] for lat in lats]
        hi = [100 * cols[f"{lat:g}"]["ci95"][1] for lat in lats]
        line = ax1.plot(lats, rate, marker="o", label=name)[0]
        ax1.fill_between(lats, lo, hi, color=line.get_color(), alpha=0.12)
        jumps = [cols[f"{lat:g}"]["jump_pose_mean"] for lat in lats]
        ax2.plot(lats, [np.nan if j is None else j for j in jumps], marker="o", label=name)
    ax1.set(xlabel="injected inference latency (ms)", ylabel="success (%)", title=f"{task}: success, 95 % CI")
    ax2.set(xlabel="injected inference latency (ms)", ylabel="mean pose jump", title="chunk-boundary jump")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="Lift")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--hz", type=int, default=20)
    p.add_argument("--latencies", default="0,100,200,300", help="injected latencies in ms, comma-separated")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"from {list(STRATEGIES)}")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed-start", type=int, default=100000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    names = [s for s in args.strategies.split(",") if s]
    for n in names:
        if n not in STRATEGIES:
            p.error(f"unknown strategy {n!r}; choose from {list(STRATEGIES)}")
    lats = [float(v) for v in args.latencies.split(",") if v]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / f"latency_{args.task.lower()}.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {(r["strategy"], r["latency_ms"], r["seed"]) for r in rows}
    seeds = range(args.seed_start, args.seed_start + args.episodes)
    # seed-major, so a partial sweep already covers every cell with its first seeds
    jobs = [(n, lat, s) for s in seeds for lat in lats for n in names if (n, lat, s) not in done]
    print(f"{args.task}: {len(jobs)} episodes to run ({len(done)} already in {rows_path})", flush=True)
    t0 = time.perf_counter()
    init = (args.checkpoint, args.task, args.hz, args.threads)
    if jobs:
        from tqdm import tqdm

        ctx = mp.get_context("spawn")
        with ctx.Pool(args.workers, initializer=_init_worker, initargs=init) as pool, rows_path.open("a") as f:
            for row in tqdm(pool.imap_unordered(run_episode, jobs), total=len(jobs), desc=f"{args.task} sweep"):
                f.write(json.dumps(row) + "\n")
                f.flush()
                rows.append(row)
    wall = time.perf_counter() - t0
    rows = [r for r in rows if r["strategy"] in names and r["latency_ms"] in lats and r["seed"] in seeds]
    table = summarize(rows)
    meta = {
        "task": args.task,
        "checkpoint": args.checkpoint,
        "hz": args.hz,
        "seed_start": args.seed_start,
        "episodes": args.episodes,
        "workers": args.workers,
        "wall_s": wall,
        "clock": "simulated (delay = ceil(latency / period) ticks, independent of load)",
        "machine": machine_meta(args.threads),
        "load": os.getloadavg(),
    }
    (out / f"latency_{args.task.lower()}.json").write_text(json.dumps({"meta": meta, "table": table}, indent=2))
    md = markdown(args.task, table, meta)
    (out / f"latency_{args.task.lower()}.md").write_text(md)
    png = plot(args.task, table, out / f"latency_{args.task.lower()}.png")
    print(md)
    print(f"wrote {rows_path}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
