"""RTI against cold-start sampling on the same checkpoints and held-out seeds.

Three parts (run them separately: success needs simulation, latency needs an idle machine):

    # 1. the start level from held-out windows and the contractivity condition
    .venv/bin/python benchmarks/bench_rti.py estimate --checkpoint runs/lift --data runs/lift.zarr --out benchmarks/results/rti_lift_estimate.json
    # 2. success over 50 held-out seeds per row, with NFE per control step
    .venv/bin/python benchmarks/bench_rti.py success --checkpoint runs/lift --suite sim/lift_lowdim.yaml --out benchmarks/results/rti_lift.json
    # 3. CPU latency per chunk (batch 1, p50/p95), and DDIM-10 through diffusers' scheduler loop
    #    (the path before the view rework) against DDIM-10 through the view, in the same run
    .venv/bin/python benchmarks/bench_rti.py latency --checkpoint runs/lift --data runs/lift.zarr --out benchmarks/results/rti_lift_latency.json

Rows: DDPM-100, DDIM-10, RTI-2 and RTI-3 (DDIM warm steps from the estimated start level),
all executing Ta actions per chunk as the checkpoint was trained. ``benchmarks/results/rti.md``
collects the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_meta

from robopolicy.inference.options import InferenceOptions
from robopolicy.inference.rti import RTI, RTIConfig, estimate_start_level
from robopolicy.policy import Policy

GRIPPER_VALUE = [None]  # --gripper-value (None: the policy's discrete_action_scale)
GRIPPER_MODE = ["reset"]  # --gripper: reset the guess's gripper, or keep it (gripper-scaled training)
ROWS = {
    "ddpm100": lambda t: InferenceOptions(policy={"sampler": "ddpm", "num_inference_steps": 100}),
    "ddim10": lambda t: InferenceOptions(policy={"sampler": "ddim", "num_inference_steps": 10}),
    "rti2": lambda t: InferenceOptions(
        method="rti",
        policy={"sampler": "ddim", "num_inference_steps": 10},
        rti=RTIConfig(steps=2, start_t=t, gripper=GRIPPER_MODE[0], gripper_value=GRIPPER_VALUE[0]),
    ),
    "rti3": lambda t: InferenceOptions(
        method="rti",
        policy={"sampler": "ddim", "num_inference_steps": 10},
        rti=RTIConfig(steps=3, start_t=t, gripper=GRIPPER_MODE[0], gripper_value=GRIPPER_VALUE[0]),
    ),
}


def machine() -> dict:
    return {**machine_meta(), "loadavg": os.getloadavg()}


def held_out_windows(policy: Policy, data: str, n: int, seed: int = 0):
    """Pairs of obs windows one chunk (Ta steps) apart from the store's validation-like episodes."""
    from robopolicy.data.store import EpisodeStore

    store = EpisodeStore.open(data)
    to, ta = policy.config.n_obs_steps, policy.config.n_action_steps
    keys = policy.config.obs_spec.keys
    rng = np.random.default_rng(seed)
    eps = rng.permutation(store.n_episodes)[: max(1, n // 4)]
    w0, w1 = [], []
    for e in eps:
        ep = store.episode(int(e), keys)
        length = len(ep[keys[0]])
        for t in rng.choice(np.arange(to, max(to + 1, length - ta)), size=4):
            idx0 = np.clip(np.arange(t - to + 1, t + 1), 0, length - 1)
            idx1 = np.clip(idx0 + ta, 0, length - 1)
            w0.append({k: ep[k][idx0] for k in keys})
            w1.append({k: ep[k][idx1] for k in keys})
    return w0[:n], w1[:n]


def cmd_estimate(args) -> dict:
    policy = Policy.load(
        args.checkpoint if (Path(args.checkpoint) / "config.json").exists() else Path(args.checkpoint) / "latest"
    )
    w0, w1 = held_out_windows(policy, args.data, args.windows)
    out = {}
    for steps in (2, 3):
        est = estimate_start_level(policy, w0, w1, steps=steps)
        out[f"rti{steps}"] = est.to_dict()
        print(f"RTI-{steps}: {est}")
    return {"checkpoint": args.checkpoint, "estimates": out, "machine": machine()}


def cmd_success(args) -> dict:
    from robopolicy.eval.runner import evaluate

    rows = {}
    for name in args.rows.split(","):
        t0 = time.perf_counter()
        rep = evaluate(
            args.checkpoint,
            args.suite,
            episodes=args.episodes,
            workers=args.workers,
            n_videos=0,
            progress=False,
            inference=ROWS[name](args.start_t),
        )
        rows[name] = {
            k: rep[k]
            for k in ("successes", "episodes", "success_rate", "ci95", "nfe_per_step", "mean_length", "latency_ms")
        }
        rows[name]["wall_s"] = time.perf_counter() - t0
        print(name, json.dumps(rows[name]))
    return {
        "checkpoint": args.checkpoint,
        "suite": args.suite,
        "start_t": args.start_t,
        "gripper": args.gripper,
        "gripper_value": args.gripper_value,
        "rows": rows,
        "machine": machine(),
    }


def _timed(fn, reps: int) -> list[float]:
    fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _stats(ms: list[float]) -> dict:
    q = np.percentile(ms, [50, 95])
    return {"p50": float(q[0]), "p95": float(q[1]), "mean": statistics.fmean(ms), "n": len(ms)}


@torch.no_grad()
def cmd_latency(args) -> dict:
    from robopolicy.diffusion.schedulers import make_ddim

    torch.set_num_threads(args.threads)
    policy = Policy.load(
        args.checkpoint if (Path(args.checkpoint) / "config.json").exists() else Path(args.checkpoint) / "latest"
    )
    w0, _ = held_out_windows(policy, args.data, 8)
    obs = {k: np.asarray(v)[None] for k, v in w0[0].items()}
    res = {}
    for name in args.rows.split(","):
        opts = ROWS[name](args.start_t)
        actor = opts.build(policy)
        gen = [torch.Generator().manual_seed(0)]
        if isinstance(actor, RTI):
            actor.predict(obs, env_ids=[0], generator=gen, options=opts.policy)  # the cold first chunk

            def call(actor=actor, opts=opts, gen=gen):
                actor.predict(obs, env_ids=[0], generator=gen, options=opts.policy)
        else:

            def call(actor=actor, opts=opts, gen=gen):
                actor.predict(obs, env_ids=[0], generator=gen, options=opts.policy)

        res[name] = _stats(_timed(call, args.reps if name != "ddpm100" else max(5, args.reps // 10)))
        print(name, res[name])
    # DDIM-10 before the view rework: diffusers' DDIMScheduler loop on the same network and noise
    view = policy.denoiser_view()
    sched = make_ddim(policy.config.noise)

    def ddim_diffusers():
        cond = view.encode(obs)
        x = torch.randn(1, *view.action_shape, generator=torch.Generator().manual_seed(0))
        sched.set_timesteps(10)
        for t in sched.timesteps:
            x = sched.step(policy.model(x, t, cond), t, x).prev_sample
        return view.to_action(x, snap=True)

    def ddim_view():
        return policy.predict(
            obs, generator=[torch.Generator().manual_seed(0)], options={"sampler": "ddim", "num_inference_steps": 10}
        ).actions

    a, b = [], []
    for _ in range(args.reps):  # alternate, so load changes hit both alike
        a += _timed(ddim_diffusers, 1)
        b += _timed(ddim_view, 1)
    res["ddim10_diffusers_loop"], res["ddim10_view"] = _stats(a), _stats(b)
    res["ddim10_view_over_diffusers_p50"] = res["ddim10_view"]["p50"] / res["ddim10_diffusers_loop"]["p50"]
    print("ddim10 diffusers loop", res["ddim10_diffusers_loop"], "view", res["ddim10_view"])
    return {"checkpoint": args.checkpoint, "batch": 1, "start_t": args.start_t, "rows": res, "machine": machine()}


RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"ddpm100": "DDPM-100", "ddim10": "DDIM-10", "rti2": "RTI-2", "rti3": "RTI-3"}


def cmd_table(results: Path) -> str:
    """The table of benchmarks/results/rti.md from rti_<task>.json and rti_<task>_latency.json."""
    lines = [
        "| task | row | success (50 held-out seeds) | 95 % CI | NFE per env step | latency per chunk p50 / p95 (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for task in ("lift", "can"):
        succ, lat = results / f"rti_{task}.json", results / f"rti_{task}_latency.json"
        if not succ.is_file():
            continue
        rows = json.loads(succ.read_text())["rows"]
        lrows = json.loads(lat.read_text())["rows"] if lat.is_file() else {}
        for name, r in rows.items():
            lo, hi = r["ci95"]
            l_ = lrows.get(name)
            lat_s = f"{l_['p50']:.1f} / {l_['p95']:.1f}" if l_ else "n/a"
            lines.append(
                f"| {task} | {NAMES.get(name, name)} | {r['successes']}/{r['episodes']} = {r['success_rate']:.0%} "
                f"| {lo:.1%} – {hi:.1%} | {r['nfe_per_step']:.2f} | {lat_s} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("estimate", "success", "latency", "table"))
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data", help="the training store (held-out windows for estimate / latency)")
    p.add_argument("--suite")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rows", default="ddpm100,ddim10,rti2,rti3")
    p.add_argument("--start-t", type=float, default=10.0, help="RTI start level as a training timestep")
    p.add_argument("--gripper-value", type=float, default=None, help="RTI gripper reset magnitude (normalized)")
    p.add_argument("--gripper", choices=("reset", "keep"), default="reset", help="RTI gripper treatment")
    p.add_argument("--start-t-from", help="read --start-t from an estimate JSON (its rti3 start_t)")
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    GRIPPER_VALUE[0] = args.gripper_value
    GRIPPER_MODE[0] = args.gripper
    if args.start_t_from:
        args.start_t = float(json.loads(Path(args.start_t_from).read_text())["estimates"]["rti3"]["start_t"])
    if args.part == "table":
        Path(args.out).write_text(cmd_table(RESULTS))
        print(Path(args.out).read_text())
        return
    if args.checkpoint is None:
        p.error(f"{args.part} needs --checkpoint")
    result = {"estimate": cmd_estimate, "success": cmd_success, "latency": cmd_latency}[args.part](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
