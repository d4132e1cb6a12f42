"""Horizon scaling (issue 13): success against the observation horizon h for Diffusion Policy and
SeedPolicy, on NutAssemblySquare and on the LiftCue memory task.

Each cell is one training run and one evaluation on the task's held-out suite (seeds from
100000). Diffusion Policy sees a horizon of h frames by stacking them (To = h). SeedPolicy is run
two ways: To = 2 with the rest of the history in its SEGA state (``--mode state``, one run, its
history does not depend on h), and To = h (SEGA over the whole window, ``--mode window``).

The chunk H is 16 where To - 1 + Ta <= 16 (h = 2, 4, 8) and 24 at h = 16 (To - 1 + Ta = 23);
Ta = 8 in every cell, so the controller executes the same amount of each chunk.

    # one cell: train, evaluate 50 episodes, write benchmarks/results/horizon_scaling/<cell>.json
    python benchmarks/horizon_scaling.py run --task lift_cue --policy dp --h 4
    python benchmarks/horizon_scaling.py run --task lift_cue --policy seed --mode state
    # every recorded cell into benchmarks/results/horizon_scaling.md (with a plot)
    python benchmarks/horizon_scaling.py report

A cell that already has a result is skipped unless ``--force``; an interrupted training run is
resumed from its newest checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from machine import machine_meta  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "horizon_scaling"
HORIZONS = (2, 4, 8, 16)
N_ACTION_STEPS = 8

TASKS = {
    "lift_cue": {
        "data": "datasets/lift_cue.zarr",
        "suite": "sim/lift_cue_lowdim.yaml",
        "configs": {"dp": "configs/train/lift_cue_lowdim_dp.yaml", "seed": "configs/train/lift_cue_lowdim_seed.yaml"},
        "title": "LiftCue (memory), low-dim",
    },
    "square": {
        "data": "datasets/square.zarr",
        "suite": "sim/square_lowdim.yaml",
        "configs": {"dp": "configs/train/square_lowdim_dp.yaml", "seed": "configs/train/square_lowdim_seed.yaml"},
        "title": "NutAssemblySquare, low-dim",
    },
}


def chunk_for(to: int) -> int:
    """The smallest H in steps of 8, at least 16, that holds To - 1 + Ta."""
    need = to - 1 + N_ACTION_STEPS
    return max(16, -(-need // 8) * 8)


def cell_name(task: str, policy: str, h: int, mode: str, tag: str | None = None) -> str:
    name = f"{task}_seed_state" if policy == "seed" and mode == "state" else f"{task}_{policy}_h{h}"
    return f"{name}_{tag}" if tag else name


def run_cell(args: argparse.Namespace) -> int:
    task = TASKS[args.task]
    to = 2 if (args.policy == "seed" and args.mode == "state") else args.h
    name = cell_name(args.task, args.policy, args.h, args.mode, args.tag)
    out_json = RESULTS / f"{name}.json"
    if out_json.exists() and not (args.force or args.reeval):
        print(f"{name}: already measured ({out_json}); --reeval to evaluate again, --force to redo all")
        return 0
    run_dir = REPO / args.runs / name
    lock = take_lock(run_dir.with_name(f"{name}.lock"))
    if lock is None:
        print(f"{name}: another process is running this cell; skipped")
        return 0
    try:
        return _run_cell(args, task, name, to, run_dir, out_json)
    finally:
        lock.unlink(missing_ok=True)


def take_lock(path: Path) -> Path | None:
    """Claim a cell for this process (two queues may list it); None if a live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text() or 0), 0)
                return None  # held by a live process
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)  # a dead holder's lock
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return path
    return None


def _run_cell(args: argparse.Namespace, task: dict, name: str, to: int, run_dir: Path, out_json: Path) -> int:
    horizon = chunk_for(to)
    overrides = [f"policy.n_obs_steps={to}", f"policy.horizon={horizon}", f"policy.n_action_steps={N_ACTION_STEPS}"]
    overrides += [f"num_steps={args.steps}"] if args.steps else []
    overrides += [f"batch_size={args.batch}"] if args.batch else []
    overrides += list(args.set or [])
    exe = str(REPO / ".venv" / "bin" / "robopolicy")
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    load_before = os.getloadavg()
    if (run_dir / "summary.json").exists() and not args.force:
        print(f"{name}: training already finished in {run_dir}")
    else:
        if (run_dir / "checkpoints").exists() and not args.force:
            cmd = [exe, "train", "--resume", str(run_dir), "--no-progress"]
        else:
            cmd = [
                exe,
                "train",
                "--config",
                task["configs"][args.policy],
                "--data",
                task["data"],
                "--out",
                str(run_dir),
                "--no-progress",
                *overrides,
            ]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
    summary = json.loads((run_dir / "summary.json").read_text())
    report_dir = run_dir / "eval"
    cmd = [
        exe,
        "eval",
        "--checkpoint",
        str(run_dir),
        "--suite",
        task["suite"],
        "--out",
        str(report_dir),
        "--episodes",
        str(args.episodes),
        "--workers",
        str(args.eval_workers),
        "--videos",
        "2",
        "--no-progress",
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    report = json.loads((report_dir / "report.json").read_text())
    params = count_params(run_dir)
    result = {
        "cell": name,
        "task": args.task,
        "policy": args.policy,
        "mode": args.mode if args.policy == "seed" else "window",
        "h": None if args.policy == "seed" and args.mode == "state" else args.h,
        "tag": args.tag,
        "n_obs_steps": to,
        "horizon": horizon,
        "n_action_steps": N_ACTION_STEPS,
        "overrides": overrides,
        "train": {k: summary.get(k) for k in ("steps", "wall_time_s", "steps_per_s", "final_loss", "final_val_loss")},
        "batch": args.batch or train_batch(run_dir),
        "params": params,
        "eval": {
            k: report.get(k)
            for k in (
                "episodes",
                "successes",
                "success_rate",
                "ci95",
                "mean_length",
                "wall_time_s",
                "latency_ms",
                "outcomes",
            )
        },
        "seeds": report.get("suite_config", {}).get("seed_start"),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine_meta(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    ev = result["eval"]
    print(
        f"{name}: {ev['successes']}/{ev['episodes']} (95 % {ev['ci95'][0]:.2f}-{ev['ci95'][1]:.2f}), "
        f"trained {summary['steps']} steps in {summary['wall_time_s'] / 60:.1f} min -> {out_json}"
    )
    return 0


def train_batch(run_dir: Path) -> int | None:
    import yaml

    cfg = run_dir / "train_config.yaml"
    return yaml.safe_load(cfg.read_text()).get("batch_size") if cfg.exists() else None


def count_params(run_dir: Path) -> int:
    from robopolicy.policy import Policy

    latest = run_dir / "latest"
    policy = Policy.load(
        latest if latest.exists() else json.loads((run_dir / "summary.json").read_text())["latest_policy"]
    )
    return int(sum(p.numel() for p in policy.parameters()))


def fmt_cell(r: dict | None) -> str:
    if r is None:
        return "–"
    ev = r["eval"]
    lo, hi = ev["ci95"]
    return f"{ev['successes']}/{ev['episodes']} ({100 * lo:.0f}–{100 * hi:.0f})"


def report(args: argparse.Namespace) -> int:
    cells = {json.loads(p.read_text())["cell"]: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    if not cells:
        print(f"no results in {RESULTS}", file=sys.stderr)
        return 1
    lines = [
        "# Horizon scaling: success against the observation horizon (issue 13)",
        "",
        "`benchmarks/horizon_scaling.py` (one training run and one evaluation per cell; the per-cell",
        "JSON files in `benchmarks/results/horizon_scaling/` hold the settings, the training time, the",
        "load average before and after and the machine).",
        "",
        "- **Diffusion Policy, To = h**: it sees h frames by stacking them.",
        "- **SeedPolicy, To = 2 + state**: a window of 2 frames; everything older lives in its SEGA",
        "  state, so one run serves every h (its history is the whole episode).",
        "- **SeedPolicy, To = h**: SEGA over an h-frame window, plus the state.",
        "- Ta = 8 everywhere; H = 16, and 24 at h = 16 (To - 1 + Ta = 23). Success is over the suite's",
        "  held-out seeds (from 100000); brackets are Wilson 95 % intervals in %.",
        "",
    ]
    for task, spec in TASKS.items():
        rows = {k: v for k, v in cells.items() if v["task"] == task}
        if not rows:
            continue
        lines += [f"## {spec['title']}", "", "| policy | h = 2 | h = 4 | h = 8 | h = 16 |", "|---|---|---|---|---|"]
        lines.append(
            "| Diffusion Policy (To = h) | "
            + " | ".join(fmt_cell(rows.get(f"{task}_dp_h{h}")) for h in HORIZONS)
            + " |"
        )
        state = rows.get(f"{task}_seed_state")
        lines.append(
            "| SeedPolicy (To = 2 + state) | "
            + " | ".join([fmt_cell(state)] + ["same run" if state else "–"] * 3)
            + " |"
        )
        seed_h = [rows.get(f"{task}_seed_h{h}") for h in HORIZONS]
        seed_h[0] = seed_h[0] or state
        lines.append("| SeedPolicy (To = h) | " + " | ".join(fmt_cell(r) for r in seed_h) + " |")
        for _, r in sorted(rows.items()):
            if r.get("tag"):
                what = "To = 2 + state" if r["h"] is None else f"To = {r['n_obs_steps']}"
                if r["h"] is None:
                    cells_ = [fmt_cell(r)] + ["same run"] * (len(HORIZONS) - 1)
                else:
                    cells_ = [fmt_cell(r) if r["h"] == h else "–" for h in HORIZONS]
                who = {"dp": "Diffusion Policy", "seed": "SeedPolicy"}[r["policy"]]
                lines.append(
                    f"| {who} ({what}; {r['tag']}: {' '.join(r['overrides'][3:])}) | " + " | ".join(cells_) + " |"
                )
        lines += [
            "",
            "| cell | To | H | steps × batch | training time | steps/s | final loss | params | load before → after |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in sorted(rows.items()):
            t = r["train"]
            lb, la = r["load_before"][0], r["load_after"][0]
            lines.append(
                f"| {name} | {r['n_obs_steps']} | {r['horizon']} | {t['steps']} × {r.get('batch') or r.get('batch_size') or 'cfg'} | "
                f"{t['wall_time_s'] / 60:.1f} min | {t['steps_per_s']:.2f} | {t['final_loss']:.4f} | "
                f"{r['params'] / 1e6:.2f} M | {lb:.1f} → {la:.1f} |"
            )
        outcomes = {n: r["eval"].get("outcomes") for n, r in sorted(rows.items()) if r["eval"].get("outcomes")}
        if outcomes:
            keys = sorted({(k, v) for o in outcomes.values() for k, vs in o.items() for v in vs})
            lines += [
                "",
                "Where the episodes ended (the task's outcome at the end of each episode):",
                "",
                "| cell | " + " | ".join(f"{k} = {v}" for k, v in keys) + " |",
            ]
            lines.append("|---|" + "---|" * len(keys))
            for n, o in outcomes.items():
                lines.append(f"| {n} | " + " | ".join(str(o.get(k, {}).get(v, 0)) for k, v in keys) + " |")
        lines.append("")
    out = REPO / "benchmarks" / "results" / "horizon_scaling.md"
    if args.notes and Path(args.notes).exists():
        lines += [Path(args.notes).read_text().rstrip(), ""]
    out.write_text("\n".join(lines))
    plot(cells, out.with_suffix(".png"))
    print(out.read_text())
    return 0


def plot(cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(v["task"] == t for v in cells.values())]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for label, key, style in (("DP (To = h)", "dp_h{}", "o-"), ("Seed (To = h)", "seed_h{}", "s-")):
            pts = [(h, cells.get(f"{task}_" + key.format(h))) for h in HORIZONS]
            if key.startswith("seed"):
                pts[0] = (2, pts[0][1] or cells.get(f"{task}_seed_state"))
            pts = [(h, r) for h, r in pts if r]
            if pts:
                xs = [h for h, _ in pts]
                ys = [r["eval"]["success_rate"] for _, r in pts]
                lo = [r["eval"]["success_rate"] - r["eval"]["ci95"][0] for _, r in pts]
                hi = [r["eval"]["ci95"][1] - r["eval"]["success_rate"] for _, r in pts]
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3, label=label)
        state = cells.get(f"{task}_seed_state")
        if state:
            ax.axhline(state["eval"]["success_rate"], color="tab:green", ls="--", label="Seed (To = 2 + state)")
        for _, r in sorted(cells.items()):
            if r["task"] == task and r.get("tag") and r["h"] is None:
                ax.axhline(
                    r["eval"]["success_rate"], color="tab:purple", ls=":", label=f"Seed (To = 2 + state, {r['tag']})"
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(HORIZONS), [str(h) for h in HORIZONS])
        ax.set_xlim(1.6, 20)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("observation horizon h (frames)")
        ax.set_ylabel("success (50 held-out episodes)")
        ax.set_title(TASKS[task]["title"])
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and evaluate one cell")
    r.add_argument("--task", choices=sorted(TASKS), required=True)
    r.add_argument("--policy", choices=("dp", "seed"), required=True)
    r.add_argument("--h", type=int, choices=HORIZONS, default=2, help="observation horizon (To = h)")
    r.add_argument(
        "--mode",
        choices=("window", "state"),
        default="window",
        help="seed only: To = h (window) or To = 2 with the history in the state (state)",
    )
    r.add_argument("--steps", type=int, default=None, help="training steps (default: the train config's)")
    r.add_argument("--batch", type=int, default=None, help="batch size (default: the train config's)")
    r.add_argument("--set", nargs="*", help="more KEY=VALUE train overrides (give the cell a --tag)")
    r.add_argument("--tag", default=None, help="suffix of the cell's name, for a variant (e.g. bptt4)")
    r.add_argument("--episodes", type=int, default=50)
    r.add_argument("--eval-workers", type=int, default=1)
    r.add_argument("--runs", default="runs/scaling", help="where the training runs go")
    r.add_argument("--force", action="store_true", help="train and evaluate again")
    r.add_argument("--reeval", action="store_true", help="evaluate a finished run again (no training)")
    p = sub.add_parser("report", help="tabulate every measured cell")
    p.add_argument("--notes", default=str(RESULTS / "notes.md"), help="markdown appended to the report")
    args = ap.parse_args()
    return run_cell(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
