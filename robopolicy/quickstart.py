"""``robopolicy quickstart``: the main job, end to end on a CPU.

1. generate scripted Lift demonstrations into a Zarr store,
2. train the small low-dim Diffusion Policy on them,
3. evaluate it in robosuite on held-out seeds,
4. print the success rate and where the checkpoint, report and videos are.

Run it again after a Ctrl-C and it picks up where it stopped: an unfinished demo generation is
completed with fresh seeds (``demos generate --append``) and training resumes from its newest
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TRAIN = "configs/train/lift_lowdim_small.yaml"
DEFAULT_SUITE = "sim/lift_lowdim.yaml"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quickstart",
        help="generate Lift demos, train a small Diffusion Policy on CPU, evaluate it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/quickstart", help="folder for the store, run and report")
    p.add_argument("--episodes", type=int, default=100, help="scripted demos to generate")
    p.add_argument("--eval-episodes", type=int, default=50, help="evaluation episodes (held-out seeds)")
    p.add_argument("--workers", type=int, default=2, help="simulation worker processes")
    p.add_argument("--train-config", default=DEFAULT_TRAIN, help="training preset")
    p.add_argument("--suite", default=DEFAULT_SUITE, help="evaluation suite")
    p.add_argument("overrides", nargs="*", help="training overrides, dotted.key=value")
    p.set_defaults(func=run)


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.exists() or p.is_absolute() else REPO / p


def _missing_demos(store: Path) -> int | None:
    """None: no store yet; else how many demos its recorded generation still lacks (0: done)."""
    from robopolicy.data.store import EpisodeStore

    if not store.exists():
        return None
    with EpisodeStore.open(store, mode="r") as s:
        gen = s.attrs.get("generation") or {}
    return max(0, int(gen.get("requested", 0)) - int(gen.get("n_success", 0)))


def run(args: argparse.Namespace) -> int:
    from robopolicy.envs.availability import require_sim
    from robopolicy.envs.generate import generate_demos
    from robopolicy.eval.runner import evaluate
    from robopolicy.eval.training import make_eval_fn
    from robopolicy.train import train
    from robopolicy.train.checkpoint import latest_complete
    from robopolicy.train.config import load_train_config

    require_sim("quickstart")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; it must be a folder")
    store, run_dir, report_dir = out / "lift.zarr", out / "run", out / "report"
    for path, what in ((store, "an episode store"), (run_dir, "a run directory"), (report_dir, "a report")):
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; the quick start needs it to be {what}")
    config = load_train_config(_resolve(args.train_config), list(args.overrides))
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    missing = _missing_demos(store)
    if missing == 0:
        print(f"[1/3] using existing demonstrations in {store}")
    elif missing is None:
        print(f"[1/3] generating {args.episodes} scripted Lift demonstrations -> {store}")
        report = generate_demos("Lift", args.episodes, str(store), workers=args.workers, seed=0)
        if report.interrupted:
            raise KeyboardInterrupt
    else:  # an earlier quick start was interrupted: finish its generation
        print(f"[1/3] continuing the unfinished generation in {store}: {missing} more demonstrations")
        report = generate_demos("Lift", missing, str(store), workers=args.workers, append=True)
        if report.interrupted:
            raise KeyboardInterrupt
    timings["demos_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    resume = latest_complete(run_dir) is not None
    print(f"[2/3] training {args.train_config} -> {run_dir}" + (" (resuming)" if resume else ""))
    summary = train(config, str(store), str(run_dir), resume=resume, eval_fn_factory=make_eval_fn)
    if summary.get("interrupted"):
        raise KeyboardInterrupt
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    print(f"[3/3] evaluating on {args.eval_episodes} held-out seeds ({args.suite})")
    report = evaluate(
        str(run_dir), str(_resolve(args.suite)), episodes=args.eval_episodes, workers=args.workers, out=str(report_dir)
    )
    timings["eval_s"] = time.perf_counter() - t0
    timings["total_s"] = sum(timings.values())

    sr = report["success_rate"]
    lo, hi = report["ci95"]
    result = {"success_rate": sr, "ci95": [lo, hi], "timings": timings, "train": summary, "eval": report}
    (out / "quickstart.json").write_text(json.dumps(result, indent=2, default=str))
    print()
    print(f"Lift success: {sr:.0%} ({report['successes']}/{report['episodes']}, 95% CI {lo:.0%}-{hi:.0%})")
    print(f"time: demos {timings['demos_s']:.0f}s, train {timings['train_s']:.0f}s, eval {timings['eval_s']:.0f}s")
    print(f"checkpoint: {run_dir}")
    print(f"report:     {report_dir / 'report.md'}")
    videos = report.get("videos") or []
    if videos:
        print(f"videos:     {', '.join(str(v) for v in videos)}")
    return 0
