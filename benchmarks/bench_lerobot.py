"""lerobot's DiffusionPolicy in its own environment against ours on the same converted weights.

    .venv/bin/python benchmarks/bench_lerobot.py [--variant lowdim|image] [--runs 30] [--threads 1]
                                                 [--ours-engine NAME]   # -> benchmarks/results/lerobot.{json,md}

One driver (this script, main env) has lerobot save a DiffusionPolicy with seeded random weights
(``.venv-real``), converts it with ``import-checkpoint``, then starts two workers: one in
``.venv-real`` running lerobot's policy (its preprocessor, observation queues,
``predict_action_chunk``, postprocessor), one in ``.venv`` running ours (``Policy.load`` of the
converted checkpoint, ``policy.predict(obs, generator=..., options=...)``). For each sampler
(DDPM-100, DDIM-10) it alternates single timed chunk calls between them, batch 1, the order
flipping every run, the same observation window and the same seed for both; each worker times
its own call (``perf_counter`` around the call only) and sends back the executed actions. Both
set the same ``torch.set_num_threads``; ``OMP_WAIT_POLICY`` is left as it is (PASSIVE doubles
latency on an idle machine). Reported per sampler: p50 / p95 ms of each, the p50 ratio
lerobot / ours, and the largest |difference| of the actions (must be float noise).

Variants: ``lowdim`` (the required one): state 9 + environment state 11, 7-D action, U-Net
down_dims (64, 128, 256), horizon 16, 2 obs steps, 8 executed; ``image``: + two 84x84 cameras
(crop 76), one encoder per camera -- converted only once robopolicy's image encoder has
lerobot's output ReLU (the converter refuses it until then).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SAMPLERS = (("ddpm", 100), ("ddim", 10))
IDENTICAL_ATOL = 1e-4  # float32 through 100 steps gives ~1e-5 at most; a real difference is far larger
GOAL_RATIO = 3.0

VARIANTS = {
    "lowdim": dict(state_dim=9, env_dim=11, action_dim=7, down_dims=(64, 128, 256), horizon=16, n_obs_steps=2,
                   n_action_steps=8),
    "image": dict(state_dim=9, env_dim=None, action_dim=7, down_dims=(64, 128, 256), horizon=16, n_obs_steps=2,
                  n_action_steps=8, cameras=("agentview", "wrist"), image_shape=(3, 84, 84), crop_shape=(76, 76),
                  use_separate_rgb_encoder_per_camera=True),
}  # fmt: skip


# ---------------------------------------------------------------------------------- workers
def set_threads(n: int) -> dict:
    import torch

    torch.set_num_threads(n)
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "python": sys.executable,
    }


def apply_ours_engine(policy, name: str | None) -> tuple[object, str]:
    """HOOK for the inference engine another developer is adding: with ``--ours-engine NAME``,
    ``robopolicy.inference.engine.apply_engine(policy, NAME)`` if that function exists, else the
    policy's own ``set_engine(NAME)`` (the engine API as it stands); without a name, or without
    ``robopolicy.inference.engine``, the policy is used as it is (its default engine)."""
    if name is None:
        return policy, "default"
    try:
        engine = importlib.import_module("robopolicy.inference.engine")
    except ModuleNotFoundError:
        print(f"[ours] --ours-engine {name}: robopolicy.inference.engine does not exist; policy as is", file=sys.stderr)
        return policy, "as is (no robopolicy.inference.engine)"
    if hasattr(engine, "apply_engine"):
        return engine.apply_engine(policy, name), name
    if hasattr(policy, "set_engine"):
        return policy.set_engine(name), name
    raise SystemExit(
        f"--ours-engine {name}: robopolicy.inference.engine has no apply_engine and the policy no set_engine"
    )


def worker(kind: str, ckpt: Path, obs_file: Path, threads: int, engine: str | None) -> None:
    """Answer one JSON request per line on stdin ({"sampler", "steps", "seed"} or {"quit"}) with
    {"ms", "actions"}; library output goes to stderr, the protocol alone to stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    meta = set_threads(threads)
    import torch

    obs = dict(np.load(obs_file))
    if kind == "lerobot":
        from robopolicy.checkpoints.lerobot_reference import LerobotRunner

        runner = LerobotRunner(ckpt)
        lobs = runner.lerobot_obs(obs)

        def call(sampler: str, steps: int, seed: int):
            runner.set_sampler(sampler, steps)
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            a = runner.chunk(lobs)
            return time.perf_counter() - t0, a

        meta["engine"] = "lerobot"
    else:
        from robopolicy.policy import Policy

        policy, meta["engine"] = apply_ours_engine(Policy.load(ckpt), engine)
        executed = policy.config.timing.executed

        def call(sampler: str, steps: int, seed: int):
            opts = {"sampler": sampler, "num_inference_steps": steps}
            gen = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            a = policy.predict(obs, generator=gen, options=opts).actions
            return time.perf_counter() - t0, a[:, executed]

    meta["torch_threads_after_load"] = torch.get_num_threads()
    print(f"[{kind}] threads {meta['torch_threads']} (interop {meta['torch_interop_threads']}), torch {meta['torch']}",
          file=sys.stderr)  # fmt: skip
    proto.write(json.dumps({"ready": True, "meta": meta}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        dt, actions = call(req["sampler"], int(req["steps"]), int(req["seed"]))
        proto.write(json.dumps({"ms": 1e3 * dt, "actions": actions.tolist()}) + "\n")


class Worker:
    def __init__(self, kind: str, python: Path, ckpt: Path, obs: Path, threads: int, engine: str | None) -> None:
        cmd = [str(python), str(Path(__file__).resolve()), "--worker", kind, "--ckpt", str(ckpt), "--obs", str(obs)]
        cmd += ["--threads", str(threads)] + (["--ours-engine", engine] if engine else [])
        self.kind = kind
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.meta = self._read()["meta"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the {self.kind} worker exited (code {self.proc.wait()}); see its messages above")
        return json.loads(line)

    def chunk(self, sampler: str, steps: int, seed: int) -> tuple[float, np.ndarray]:
        self.proc.stdin.write(json.dumps({"sampler": sampler, "steps": steps, "seed": seed}) + "\n")
        out = self._read()
        return out["ms"], np.asarray(out["actions"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------------- driver
def make_inputs(variant: dict, path: Path) -> None:
    """One observation window (batch 1, To frames) in robopolicy's keys; images uint8 HWC."""
    rng = np.random.default_rng(0)
    to = variant["n_obs_steps"]
    obs = {"state": rng.normal(size=(1, to, variant["state_dim"])).astype(np.float32)}
    if variant.get("env_dim"):
        obs["environment_state"] = rng.normal(size=(1, to, variant["env_dim"])).astype(np.float32)
    for cam in variant.get("cameras", ()):
        c, h, w = variant["image_shape"]
        obs[f"image.{cam}"] = rng.integers(0, 256, (1, to, h, w, c), dtype=np.uint8)
    np.savez(path, **obs)


def prepare(args: argparse.Namespace, work: Path) -> tuple[Path, Path, Path]:
    """lerobot's checkpoint (made in its env), ours (converted here) and the inputs."""
    from robopolicy.checkpoints.lerobot import UnsupportedCheckpointError, import_lerobot_checkpoint

    lerobot_ckpt, ours_ckpt, obs = work / f"lerobot_{args.variant}", work / f"ours_{args.variant}", work / "obs.npz"
    if not (lerobot_ckpt / "config.json").is_file():
        cmd = [str(args.lerobot_python), str(Path(__file__).resolve()), "--make-checkpoint", str(lerobot_ckpt)]
        subprocess.run(cmd + ["--variant", args.variant], check=True, stdout=sys.stderr)
    try:
        import_lerobot_checkpoint(lerobot_ckpt, ours_ckpt, overwrite=True)
    except UnsupportedCheckpointError as e:
        raise SystemExit(f"the {args.variant} variant cannot be converted: {e}") from None
    make_inputs(VARIANTS[args.variant], obs)
    return lerobot_ckpt, ours_ckpt, obs


def make_checkpoint(path: Path, variant: str) -> None:
    from robopolicy.checkpoints.lerobot_reference import make_random_checkpoint

    set_threads(1)
    make_random_checkpoint(path, seed=0, **VARIANTS[variant])


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def measure(ours: Worker, lerobot: Worker, runs: int, warmup: int, gap_s: float = 0.0) -> list[dict]:
    rows = []
    for sampler, steps in SAMPLERS:
        for i in range(warmup):
            ours.chunk(sampler, steps, seed=i)
            lerobot.chunk(sampler, steps, seed=i)
        times = {"ours": [], "lerobot": []}
        diff = 0.0
        for i in range(runs):
            seed = 1000 + i
            order = (ours, lerobot) if i % 2 == 0 else (lerobot, ours)
            got = {}
            for w in order:
                time.sleep(gap_s)  # the other stack's spinning worker threads go idle first
                ms, got[w.kind] = w.chunk(sampler, steps, seed)
                times[w.kind].append(ms)
            diff = max(diff, float(np.abs(got["ours"] - got["lerobot"]).max()))
        p50 = {k: statistics.median(v) for k, v in times.items()}
        row = {"sampler": sampler, "steps": steps, "runs": runs, "max_abs_diff": diff}
        for k, v in times.items():
            row[f"{k}_p50_ms"], row[f"{k}_p95_ms"] = p50[k], percentile(v, 95)
        row["speedup_p50"] = p50["lerobot"] / p50["ours"]
        row["identical"] = diff <= IDENTICAL_ATOL
        row["goal_met"] = row["identical"] and row["speedup_p50"] >= GOAL_RATIO
        rows.append(row)
        print(f"{sampler}-{steps}: ours p50 {p50['ours']:.1f} ms, lerobot p50 {p50['lerobot']:.1f} ms, "
              f"x{row['speedup_p50']:.2f}, max |diff| {diff:.2e}", file=sys.stderr)  # fmt: skip
    return rows


def markdown(results: dict) -> str:
    lines = ["# lerobot's DiffusionPolicy against ours, same converted weights", ""]
    lines += [
        "Produced by `benchmarks/bench_lerobot.py`: a lerobot 0.4 DiffusionPolicy with seeded random weights, saved by "
        "lerobot and converted by `robopolicy import-checkpoint lerobot`; one worker process per stack (lerobot in "
        "`.venv-real`, ours in `.venv`), single chunk calls interleaved (order flipped every run), batch 1, the same "
        "observation window and seed for both. lerobot's call: preprocessor + observation queues + "
        "`predict_action_chunk` + postprocessor; ours: `policy.predict` (checks, normalization, encoding, sampling, "
        "unnormalization). Speedup = lerobot p50 / ours p50; goal: >= 3x at equal steps with identical actions "
        f"(max |diff| <= {IDENTICAL_ATOL:g}).",
        "",
    ]
    for name, res in results["variants"].items():
        m, w = res["machine"], res["workers"]
        lines += [f"## {name}: {res['description']}", ""]
        lines += [
            f"{m['date']}; {m['cpu_count']} cores, load average before/after {m['loadavg_before'][0]:.1f}/"
            f"{res['loadavg_after'][0]:.1f}; OMP_WAIT_POLICY={m['omp_wait_policy'] or 'unset'}. "
            f"ours: torch {w['ours']['torch']}, {w['ours']['torch_threads']} threads, engine {w['ours']['engine']}; "
            f"lerobot: torch {w['lerobot']['torch']}, {w['lerobot']['torch_threads']} threads."
            + (f" {res['note']}" if res.get("note") else ""),
            "",
            "| sampler | runs | ours p50 ms | ours p95 ms | lerobot p50 ms | lerobot p95 ms | speedup (p50) "
            "| max abs diff | goal |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['sampler']}-{r['steps']} | {r['runs']} | {r['ours_p50_ms']:.1f} | {r['ours_p95_ms']:.1f} | "
                f"{r['lerobot_p50_ms']:.1f} | {r['lerobot_p95_ms']:.1f} | {r['speedup_p50']:.2f}x | "
                f"{r['max_abs_diff']:.2e} | {'met' if r['goal_met'] else 'not met'} |"
            )
        lines.append("")
    return "\n".join(lines)


def describe(variant: str) -> str:
    v = VARIANTS[variant]
    parts = [f"state {v['state_dim']}"]
    if v.get("env_dim"):
        parts.append(f"environment state {v['env_dim']}")
    if v.get("cameras"):
        c, h, w = v["image_shape"]
        parts.append(f"{len(v['cameras'])} cameras {h}x{w} (crop {v['crop_shape'][0]})")
    return (
        f"{' + '.join(parts)}, {v['action_dim']}-D action; U-Net down_dims {list(v['down_dims'])}, "
        f"horizon {v['horizon']}, {v['n_obs_steps']} obs steps"
    )


def run_workers(args: argparse.Namespace, work: Path) -> tuple[dict, dict, list[dict]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import machine_meta

    lerobot_ckpt, ours_ckpt, obs = prepare(args, work)
    meta = machine_meta(args.threads)
    ours = Worker("ours", args.ours_python, ours_ckpt, obs, args.threads, args.ours_engine)
    try:
        lerobot = Worker("lerobot", args.lerobot_python, lerobot_ckpt, obs, args.threads, None)
        try:
            rows = measure(ours, lerobot, args.runs, args.warmup, args.gap_ms / 1000.0)
            return meta, {"ours": ours.meta, "lerobot": lerobot.meta}, rows
        finally:
            lerobot.close()
    finally:
        ours.close()


LOAD_BEFORE = [None]


def drive(args: argparse.Namespace) -> None:
    LOAD_BEFORE[0] = os.getloadavg()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench_lerobot_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        measured = run_workers(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    meta, workers, rows = measured
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "lerobot.json"
    results = json.loads(path.read_text()) if path.is_file() else {"variants": {}}
    key = f"{args.variant}, ours: engine {args.ours_engine or 'default'}, {args.threads} thread(s)"
    results["variants"][key] = {
        "variant": args.variant,
        "ours_engine": args.ours_engine,
        "threads": args.threads,
        "gap_ms": args.gap_ms,
        "note": args.note,
        "loadavg_before": LOAD_BEFORE[0],
        "description": describe(args.variant),
        "machine": meta,
        "loadavg_after": os.getloadavg(),
        "workers": workers,
        "rows": rows,
    }
    path.write_text(json.dumps(results, indent=2))
    (out / "lerobot.md").write_text(markdown(results))
    print(markdown({"variants": {key: results["variants"][key]}}))
    print(f"wrote {path} and lerobot.md", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=sorted(VARIANTS), default="lowdim")
    p.add_argument("--runs", type=int, default=30, help="timed chunk calls per sampler and stack")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per sampler and stack first")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in both workers")
    p.add_argument(
        "--gap-ms",
        type=float,
        default=200.0,
        help="idle pause before each timed call, so that neither stack's spinning threads (OpenMP, ONNX Runtime) "
        "still hold a core while the other is timed (default 200)",
    )
    p.add_argument("--ours-engine", default=None, help="inference engine of ours (passed to the engine hook)")
    p.add_argument("--note", default=None, help="conditions worth recording (e.g. the load), printed with the section")
    p.add_argument("--out-dir", default=str(RESULTS), help="where lerobot.json / lerobot.md go")
    p.add_argument("--work-dir", default=None, help="checkpoints and inputs (default: a new temporary directory)")
    p.add_argument("--lerobot-python", type=Path, default=ROOT / ".venv-real" / "bin" / "python")
    p.add_argument("--ours-python", type=Path, default=ROOT / ".venv" / "bin" / "python")
    p.add_argument("--worker", choices=["ours", "lerobot"], help=argparse.SUPPRESS)
    p.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--obs", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--make-checkpoint", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.make_checkpoint:
        make_checkpoint(args.make_checkpoint, args.variant)
    elif args.worker:
        worker(args.worker, args.ckpt, args.obs, args.threads, args.ours_engine)
    else:
        if not args.lerobot_python.is_file():  # `make bench` runs every benchmark: skip, do not fail
            print(f"bench_lerobot skipped: {args.lerobot_python} not found (build it with `make real-env`)")
            return
        if args.runs < 1:
            raise SystemExit("--runs must be >= 1")
        drive(args)


if __name__ == "__main__":
    main()
