"""Loop quality of the real-time controller (issue 11): tick lateness while other processes load
both cores.

Runs ``robopolicy run --driver mock`` (the numpy arm: what is measured is the loop, not the
simulator) with a trained policy, once per rate, while ``--load`` busy processes (a float64
matrix product in a loop, one thread each) compete for the CPU. An idle baseline at the first
rate runs first, with fewer ticks. Each run's ``summary.json`` gives tick lateness p50 / p99 /
max, the loop body time and the deadline misses; this script collects them::

    python benchmarks/bench_loop.py --checkpoint runs/lift --rates 20,50 --ticks 10000 \\
        --out benchmarks/results/loop_quality.json

The goal in the issue is p99 lateness <= 2 ms at 50 Hz under load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_meta  # noqa: E402

LOAD = "import numpy as np\na = np.random.rand(300, 300)\nwhile True:\n    a = (a @ a) / 300.0\n"


def start_load(n: int) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return [subprocess.Popen([sys.executable, "-c", LOAD], env=env) for _ in range(n)]


def stop_load(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def run_loop(checkpoint: str, hz: float, ticks: int, threads: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "robopolicy.cli", "run", "--checkpoint", checkpoint, "--driver", "mock"]
        cmd += ["--hz", str(hz), "--ticks", str(ticks), "--threads", str(threads), "--out", str(out), *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"robopolicy run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        summary = json.loads((out / "summary.json").read_text())
        summary["wall_s"] = time.perf_counter() - t0
        summary["exit_code"] = proc.returncode
        return summary


KEEP = (
    "ticks",
    "hz_measured",
    "lateness_ms",
    "body_ms",
    "deadline_misses",
    "skipped_ticks",
    "empty_queue_ticks",
    "inference_ms",
    "delay_ticks",
    "faults",
    "end_reason",
    "priority",
    "wall_s",
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a trained policy (run dir or policy dir)")
    p.add_argument("--rates", default="20,50", help="control rates in Hz, comma-separated")
    p.add_argument("--ticks", type=int, default=10000, help="ticks per loaded run")
    p.add_argument("--baseline-ticks", type=int, default=2000, help="ticks of the idle baseline (0: none)")
    p.add_argument("--load", type=int, default=2, help="busy processes during the loaded runs")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the policy")
    p.add_argument("--out", help="results JSON")
    p.add_argument("--priority", default="auto", help="robopolicy run --priority of the measured runs")
    p.add_argument(
        "--compare-priority",
        default="none",
        help="a second priority measured loaded at the fastest rate, for a same-session comparison ('' to skip)",
    )
    p.add_argument("--compare-ticks", type=int, default=3000, help="ticks of the comparison run")
    p.add_argument("run_args", nargs="*", help="extra arguments for robopolicy run (after --)")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    extra = ["--priority", args.priority, *args.run_args]
    res: dict = {
        "checkpoint": args.checkpoint,
        "load_processes": args.load,
        "threads": args.threads,
        "priority": args.priority,
        "runs": {},
    }
    res["machine"] = machine_meta(args.threads)
    if args.baseline_ticks:
        s = run_loop(args.checkpoint, rates[0], args.baseline_ticks, args.threads, extra)
        res["runs"][f"idle_{rates[0]:g}hz"] = {k: s.get(k) for k in KEEP}
        print(f"idle {rates[0]:g} Hz:", json.dumps(s["lateness_ms"]), flush=True)
    runs = [(hz, args.priority, args.ticks, f"loaded_{hz:g}hz") for hz in rates]
    if args.compare_priority:
        fast = max(rates)
        runs.append((fast, args.compare_priority, args.compare_ticks, f"loaded_{fast:g}hz_{args.compare_priority}"))
    for hz, priority, ticks, name in runs:
        load = start_load(args.load)
        try:
            time.sleep(1.0)
            s = run_loop(args.checkpoint, hz, ticks, args.threads, ["--priority", priority, *args.run_args])
            s["loadavg_after"] = os.getloadavg()
        finally:
            stop_load(load)
        res["runs"][name] = {
            **{k: s.get(k) for k in KEEP},
            "priority_requested": priority,
            "loadavg_after": s["loadavg_after"],
        }
        lat = s["lateness_ms"]
        print(
            f"{name} (priority {priority}): lateness p50 {lat['p50']:.3f} p99 {lat['p99']:.3f} max {lat['max']:.3f} "
            f"ms; deadline misses {s['deadline_misses']}, skipped {s['skipped_ticks']}",
            flush=True,
        )
        if args.out:  # run by run: an interrupted benchmark keeps what it measured
            Path(args.out).write_text(json.dumps(res, indent=2))
    if args.out:
        print("wrote", args.out)


if __name__ == "__main__":
    main()
