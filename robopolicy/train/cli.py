"""``robopolicy train``: train a policy on an episode store.

    robopolicy train --config configs/train/lift_lowdim_small.yaml --data datasets/lift.zarr \\
        --out runs/lift [--resume] [batch_size=128 policy.inference.num_inference_steps=10 ...]

Multi-GPU / multi-node: ``accelerate launch -m robopolicy.cli train ...`` (same arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from robopolicy.outputs import is_run_dir
from robopolicy.train.config import TrainConfig, load_train_config
from robopolicy.train.run import train

__all__ = ["add_parser", "train"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a policy on a Zarr episode store",
        description="Train a policy. Overrides are dotted keys of the train config, e.g. "
        "batch_size=128 num_steps=2000 ema.power=0.75 policy.horizon=16 policy.backbone.down_dims=[64,128,256].",
    )
    p.add_argument("--config", help="train preset YAML (configs/train/*.yaml); on --resume defaults to the run's")
    p.add_argument("--data", help="episode store (Zarr); on --resume defaults to the run's")
    p.add_argument("--out", help="run directory (checkpoints, metrics, summary)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="RUN_DIR",
        help="continue a run from its newest checkpoint (RUN_DIR, or --out)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted-key config overrides")
    p.set_defaults(func=_run)
    return p


def _resolve_out(args: argparse.Namespace) -> Path:
    """``--resume RUN_DIR`` or ``--resume --out RUN_DIR``; a ``k=v`` after --resume is an override."""
    if args.resume and "=" in args.resume and not Path(args.resume).is_dir():
        args.overrides.insert(0, args.resume)
        args.resume = ""
    if args.resume and args.out and Path(args.resume) != Path(args.out):
        raise ValueError(f"--resume {args.resume} and --out {args.out} name different runs")
    out = args.resume or args.out
    if not out:
        raise ValueError("--out is required (or --resume RUN_DIR)")
    args.resume = args.resume is not None
    return Path(out)


def check_run_dir(out: Path, resume: bool) -> None:
    """Refuse, before any work, a run directory that this command may not write."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; it must be a run directory")
    if resume:
        if not out.is_dir():
            raise FileNotFoundError(f"--resume: run directory {out} does not exist")
        if not (out / "train_config.yaml").is_file():
            raise ValueError(f"--resume: {out} is not a run directory (it has no train_config.yaml)")
        return
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue it or choose another --out")
    if out.is_dir() and not is_run_dir(out) and any(out.iterdir()):
        raise ValueError(f"--out {out} is a directory of other files, not a run directory; choose a new or empty one")


def _run(args: argparse.Namespace) -> int:
    out = _resolve_out(args)
    if not args.resume and args.config is None:
        raise ValueError("--config is required (unless --resume)")
    if not args.resume and args.data is None:
        raise ValueError("--data is required (unless --resume)")
    check_run_dir(out, args.resume)
    if args.data is not None and not Path(args.data).exists():
        raise FileNotFoundError(f"data store not found: {args.data}")
    config: TrainConfig | None = None
    if args.config is not None:
        config = load_train_config(args.config, args.overrides)
    from robopolicy.eval.training import make_eval_fn  # the CLI layer wires evaluation into training

    summary = train(
        config,
        args.data,
        out,
        resume=args.resume,
        progress=not args.no_progress,
        overrides=args.overrides,
        eval_fn_factory=make_eval_fn,
    )
    print(json.dumps({k: summary[k] for k in ("steps", "wall_time_s", "samples_per_s", "final_loss", "best")}))
    print(f"policy: {summary['latest_policy']}")
    if summary.get("interrupted"):
        print(
            f"interrupted at step {summary['steps']}: checkpoint saved; continue with: robopolicy train --resume {out}",
            file=sys.stderr,
        )
        return 130
    if summary.get("time_limit_reached"):
        print(
            f"time limit reached at step {summary['steps']}: checkpoint saved; continue with: "
            f"robopolicy train --resume {out}",
            file=sys.stderr,
        )
    return 0
