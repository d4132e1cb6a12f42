"""Few-step policies against Diffusion Policy on the same data and held-out seeds (issue 10).

Rows (each a checkpoint plus how it is run):

    dp_ddpm100  Diffusion Policy, DDPM 100 steps        dp_ddim10  Diffusion Policy, DDIM 10 steps
    dp_rti3     RTI on Diffusion Policy (3 warm DDIM steps from the estimated start level)
    beso3       BESO, 3 first-order DPM-Solver steps    beso3_rti  BESO-3 cold, then RTI-2 warm chunks
    ebt2        EBT-Policy, 2 gradient steps            ebt_dyn    EBT-Policy, dynamic steps (<= 20)

Parts:

    latency  batch 1, ``--threads`` threads (default 1), every row called in turn in each round
             (interleaved, so load changes hit all rows alike); p50 / p95 per chunk, network
             evaluations per chunk (a gradient step counts as a forward plus a backward) and
             parameter count. RTI rows time a warm chunk. ``--dp-engine compiled`` runs the
             Diffusion Policy rows on that inference engine (default: the policy's, ``auto``).
    success  ``--episodes`` held-out episodes per row on ``--suite`` (50: seeds 100000-100049),
             written row by row to ``--out`` (a row already there is kept unless ``--redo``).
    table    the markdown table of few_step.md from the JSON files.

    python benchmarks/bench_few_step.py latency --task lift --dp runs/lift --beso runs/lift_beso \\
        --ebt runs/lift_ebt --data runs/lift.zarr --out benchmarks/results/few_step_lift_latency.json
    python benchmarks/bench_few_step.py success --task lift --suite sim/lift_lowdim.yaml ... \\
        --out benchmarks/results/few_step_lift.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_rti import held_out_windows  # noqa: E402
from benchmarks.machine import machine_meta  # noqa: E402
from robopolicy.inference.options import InferenceOptions  # noqa: E402
from robopolicy.inference.rti import RTIConfig, estimate_start_level  # noqa: E402
from robopolicy.policy import Policy  # noqa: E402

ROWS = ("dp_ddpm100", "dp_ddim10", "dp_rti3", "beso3", "beso3_rti", "ebt2", "ebt_dyn")
NAMES = {
    "dp_ddpm100": "Diffusion Policy DDPM-100",
    "dp_ddim10": "Diffusion Policy DDIM-10",
    "dp_rti3": "RTI-3 on Diffusion Policy",
    "beso3": "BESO-3",
    "beso3_rti": "BESO-3 + RTI-2",
    "ebt2": "EBT-2",
    "ebt_dyn": "EBT dynamic (<= 20 steps)",
}


def policy_dir(path: str) -> Path:
    p = Path(path)
    return p if (p / "config.json").is_file() else p / "latest"


def row_spec(name: str, args: argparse.Namespace) -> tuple[str | None, InferenceOptions]:
    """(checkpoint, inference options) of a row; checkpoint None when its run was not given."""
    if name.startswith("dp_"):
        if name == "dp_rti3":
            t = args.dp_start_t
            rti = RTIConfig(steps=3, start_t=t) if t is not None else RTIConfig(steps=3)
            return args.dp, InferenceOptions(
                method="rti", policy={"sampler": "ddim", "num_inference_steps": 10}, rti=rti
            )
        sampler, steps = ("ddpm", 100) if name == "dp_ddpm100" else ("ddim", 10)
        return args.dp, InferenceOptions(policy={"sampler": sampler, "num_inference_steps": steps})
    if name.startswith("beso"):
        if name == "beso3_rti":
            return args.beso, InferenceOptions(method="rti", rti=RTIConfig(steps=2, sigma_start=args.beso_sigma))
        return args.beso, InferenceOptions()
    if name == "ebt_dyn":
        return args.ebt, InferenceOptions(policy={"dynamic": True})
    return args.ebt, InferenceOptions()


def resolve_levels(args: argparse.Namespace) -> None:
    """RTI start levels: DP's from ``--dp-start-t-from`` (bench_rti estimate JSON); BESO's
    measured here by the same estimator on held-out windows of ``--data`` (unless ``--beso-sigma``)."""
    if args.dp_start_t is None and args.dp_start_t_from:
        est = json.loads(Path(args.dp_start_t_from).read_text())["estimates"]["rti3"]
        args.dp_start_t = float(est["start_t"])
    if args.beso and args.beso_sigma is None and args.data:
        policy = Policy.load(policy_dir(args.beso))
        w0, w1 = held_out_windows(policy, args.data, 64)
        est = estimate_start_level(policy, w0, w1, steps=2)
        args.beso_sigma = est.sigma_start
        print(f"BESO RTI-2 start level: sigma {est.sigma_start:.4g} (shift error rms {est.shift_error_rms:.4g})")
    if args.beso and args.beso_sigma is None:
        args.beso_sigma = 0.1


def _stats(ms: list[float]) -> dict[str, float]:
    q = np.percentile(ms, [50, 95])
    return {"p50": float(q[0]), "p95": float(q[1]), "mean": statistics.fmean(ms), "n": len(ms)}


def cmd_latency(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    resolve_levels(args)
    calls, meta = {}, {}
    obs = None
    for name in args.rows.split(","):
        ckpt, opts = row_spec(name, args)
        if ckpt is None:
            continue
        policy = Policy.load(policy_dir(ckpt))
        if name.startswith("dp_") and args.dp_engine:
            policy.set_engine(args.dp_engine)
        if obs is None:
            w0, _ = held_out_windows(policy, args.data, 8)
            obs = {k: np.asarray(v)[None] for k, v in w0[0].items()}
        actor = opts.build(policy)
        gen = [torch.Generator().manual_seed(0)]
        out = actor.predict(obs, env_ids=[0], generator=gen, options=opts.policy)  # cold (RTI: the first chunk)
        if opts.method.value == "rti":
            out = actor.predict(obs, env_ids=[0], generator=gen, options=opts.policy)  # a warm chunk

        def call(actor=actor, opts=opts, gen=gen, obs=obs):
            return actor.predict(obs, env_ids=[0], generator=gen, options=opts.policy)

        nfe = out.info.get("nfe")
        meta[name] = {
            "checkpoint": str(policy_dir(ckpt)),
            "policy": policy.name,
            "parameters": int(sum(p.numel() for p in policy.parameters())),
            "engine": policy.engine_config.backend.value,
            "nfe_per_chunk": float(nfe.float().mean()) if torch.is_tensor(nfe) else nfe,
            "inference": opts.to_dict(),
        }
        if "steps" in out.info:
            meta[name]["steps"] = float(torch.as_tensor(out.info["steps"]).float().mean())
        calls[name] = call
        call()  # warm-up (engine build, caches)
    times: dict[str, list[float]] = {n: [] for n in calls}
    for r in range(args.reps):
        for name, call in calls.items():
            if name == "dp_ddpm100" and r % 10:  # 100 network calls: every 10th round
                continue
            t0 = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - t0) * 1000)
    rows = {n: {**meta[n], **_stats(times[n])} for n in calls}
    base = rows.get("dp_ddim10")
    for name, r in rows.items():
        if base:
            r["speedup_vs_ddim10_p50"] = base["p50"] / r["p50"]
        print(
            f"{name:12s} p50 {r['p50']:8.2f} ms  p95 {r['p95']:8.2f} ms  nfe {r['nfe_per_chunk']}  params {r['parameters']}"
        )
    return {
        "task": args.task,
        "batch": 1,
        "threads": args.threads,
        "rows": rows,
        "machine": {**machine_meta(), "loadavg_after": os.getloadavg()},
    }


def cmd_success(args: argparse.Namespace) -> dict[str, Any]:
    from robopolicy.eval.runner import evaluate

    resolve_levels(args)
    out_path = Path(args.out)
    res = json.loads(out_path.read_text()) if out_path.is_file() else {"rows": {}}
    res.update(task=args.task, suite=args.suite)
    for name in args.rows.split(","):
        ckpt, opts = row_spec(name, args)
        if ckpt is None or (name in res["rows"] and not args.redo):
            continue
        t0 = time.perf_counter()
        rep = evaluate(
            policy_dir(ckpt),
            args.suite,
            episodes=args.episodes,
            workers=args.workers,
            n_videos=0,
            progress=False,
            inference=opts,
            out=Path(args.reports) / f"{args.task}_{name}" if args.reports else None,
        )
        keep = ("successes", "episodes", "success_rate", "ci95", "nfe_per_step", "mean_length", "latency_ms")
        row = {k: rep[k] for k in keep}
        for k in ("goals", "energy"):
            if k in rep:
                row[k] = rep[k]
        row.update(checkpoint=str(policy_dir(ckpt)), inference=opts.to_dict(), wall_s=time.perf_counter() - t0)
        res["rows"][name] = row
        res["machine"] = {**machine_meta(), "loadavg": os.getloadavg()}
        out_path.write_text(json.dumps(res, indent=2))  # row by row: an interrupted run keeps its rows
        print(name, json.dumps({k: row[k] for k in ("successes", "episodes", "nfe_per_step")}), flush=True)
    return res


DP_SUCCESS = {  # Diffusion Policy's success rows, measured for issue 7 on the same checkpoints and seeds
    "lift": {
        "dp_ddpm100": ("rti_lift.json", "ddpm100"),
        "dp_ddim10": ("rti_lift.json", "ddim10"),
        "dp_rti3": ("rti_lift_g01.json", "rti3"),
    },
    # RTI rows with the default gripper guess (+-0.1); rti_can.json's used +-1 (0/50)
    "can": {
        "dp_ddpm100": ("rti_can.json", "ddpm100"),
        "dp_ddim10": ("rti_can.json", "ddim10"),
        "dp_rti3": ("rti_can_g01.json", "rti3"),
    },
}


def success_rows(results: Path, task: str) -> dict[str, dict[str, Any]]:
    """This task's success rows: ``few_step_<task>.json``, with Diffusion Policy's rows taken
    from the RTI benchmark's files where this benchmark did not run them."""
    f = results / f"few_step_{task}.json"
    rows = json.loads(f.read_text())["rows"] if f.is_file() else {}
    for name, (file, key) in DP_SUCCESS.get(task, {}).items():
        src = results / file
        if name not in rows and src.is_file():
            row = json.loads(src.read_text())["rows"].get(key)
            if row is not None:
                rows[name] = {**row, "source": file}
    return rows


def cmd_table(results: Path) -> str:
    """Success (95 % CI), NFE per chunk, latency p50 / p95 and parameters per task and row."""
    lines = [
        "| task | row | success (50 held-out seeds) | 95 % CI | NFE per chunk | CPU latency per chunk, 1 thread, "
        "p50 / p95 (ms) | x faster than DDIM-10 (p50) | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in ("lift", "can"):
        lat_f = results / f"few_step_{task}_latency.json"
        succ = success_rows(results, task)
        lat = json.loads(lat_f.read_text())["rows"] if lat_f.is_file() else {}
        for name in ROWS:
            s, la = succ.get(name), lat.get(name)
            if s is None and la is None:
                continue
            cell = f"{s['successes']}/{s['episodes']} = {s['success_rate']:.0%}" if s else "not run"
            if s and "source" in s:
                cell += f" ({s['source']})"
            ci = f"{s['ci95'][0]:.1%} – {s['ci95'][1]:.1%}" if s else ""
            nfe = f"{la['nfe_per_chunk']:g}" if la else ""
            lat_s = f"{la['p50']:.1f} / {la['p95']:.1f}" if la else "n/a"
            sp = f"{la['speedup_vs_ddim10_p50']:.1f}x" if la and "speedup_vs_ddim10_p50" in la else ""
            params = f"{la['parameters'] / 1e6:.2f} M" if la else ""
            lines.append(f"| {task} | {NAMES[name]} | {cell} | {ci} | {nfe} | {lat_s} | {sp} | {params} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("latency", "success", "table"))
    p.add_argument("--task", default="lift", help="a label: lift or can")
    p.add_argument("--dp", help="Diffusion Policy run or policy dir")
    p.add_argument("--beso", help="BESO run or policy dir")
    p.add_argument("--ebt", help="EBT-Policy run or policy dir")
    p.add_argument("--data", help="the training store (held-out windows for latency and BESO's RTI level)")
    p.add_argument("--suite")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dp-engine", help="latency: the inference engine of the Diffusion Policy rows (default: auto)")
    p.add_argument("--dp-start-t", type=float, default=None, help="DP RTI start timestep")
    p.add_argument("--dp-start-t-from", help="read it from a bench_rti estimate JSON (its rti3 start_t)")
    p.add_argument("--beso-sigma", type=float, default=None, help="BESO RTI start sigma (default: estimated)")
    p.add_argument("--reports", help="also write each row's evaluation report under this folder")
    p.add_argument("--redo", action="store_true", help="success: re-run rows already in --out")
    p.add_argument("--out")
    args = p.parse_args()
    if args.part == "table":
        print(cmd_table(Path(__file__).resolve().parent / "results"))
        return
    res = cmd_latency(args) if args.part == "latency" else cmd_success(args)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
        print("wrote", args.out)


if __name__ == "__main__":
    main()
