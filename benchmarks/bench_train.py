"""Trainer throughput and overhead on CPU (or GPU where present).

For a train preset's policy on a synthetic low-dim store (Lift-shaped: state 19-D, action 7-D):

* ``bare``    : ``compute_loss`` + ``backward`` + ``AdamW.step`` on one fixed batch,
* ``trainer`` : :meth:`Trainer.train_step` on the same batch (adds EMA, clipping, LR schedule,
  accelerate wrappers),
* ``fit``     : ``Trainer.fit`` end to end (data loading, logging, one checkpoint).

    .venv/bin/python benchmarks/bench_train.py [--preset configs/train/lift_lowdim_small.yaml]
        [--steps 30] [--threads 2]          # writes benchmarks/results/train.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from robopolicy.data.store import EpisodeStore
from robopolicy.train.config import load_train_config
from robopolicy.train.data import open_store
from robopolicy.train.run import build_policy
from robopolicy.train.trainer import Trainer
from robopolicy.types import osc_pose_action_spec

ROOT = Path(__file__).resolve().parents[1]


def synthetic_store(path: Path, episodes: int = 50, length: int = 45) -> Path:
    rng = np.random.default_rng(0)
    store = EpisodeStore.create(path, action_spec=osc_pose_action_spec(), control_rate=20.0)
    for _ in range(episodes):
        state = np.cumsum(rng.normal(scale=0.05, size=(length, 19)), axis=0).astype(np.float32)
        action = np.clip(rng.normal(scale=0.5, size=(length, 7)), -1, 1).astype(np.float32)
        action[:, 6] = np.sign(action[:, 6])
        store.add_episode({"state": state, "action": action})
    store.close()
    return path


def _timed(fn, steps: int, warmup: int = 5) -> float:
    for _ in range(warmup):  # oneDNN primitive caches, allocator
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / (time.perf_counter() - t0)


def bench(preset: str, steps: int, tmp: Path) -> dict:
    store = synthetic_store(tmp / "bench.zarr")
    cfg = load_train_config(preset, ["device=auto", "eval_every=0", f"num_steps={steps}", "val_ratio=0"])
    policy, train_set, _ = build_policy(cfg, open_store(str(store)))
    trainer = Trainer(cfg, policy, train_set, tmp / "run", progress=False)
    batch = next(iter(trainer.loader))
    dev_batch = {"obs": {k: v.to(trainer.acc.device) for k, v in batch["obs"].items()}, "action": batch["action"]}
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)

    def bare() -> None:
        loss, _ = policy.compute_loss(dev_batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    trainer_rate = _timed(lambda: trainer.train_step(batch), steps)
    bare_rate = _timed(bare, steps)
    trainer_rate = max(trainer_rate, _timed(lambda: trainer.train_step(batch), steps, warmup=0))
    fit_trainer = Trainer(cfg, *build_policy(cfg, open_store(str(store)))[:2], tmp / "fit", progress=False)
    t0 = time.perf_counter()
    fit_trainer.fit()
    fit_rate = steps / (time.perf_counter() - t0)
    return {
        "preset": preset,
        "batch_size": cfg.batch_size,
        "params": sum(p.numel() for p in policy.parameters()),
        "steps_per_s": {"bare": bare_rate, "trainer": trainer_rate, "fit": fit_rate},
        "trainer_overhead_pct": 100.0 * (bare_rate / trainer_rate - 1.0),
        "device": str(trainer.acc.device),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="configs/train/lift_lowdim_small.yaml")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = bench(args.preset, args.steps, Path(tmp))
    result.update(
        threads=args.threads,
        machine=platform.processor() or platform.machine(),
        torch=torch.__version__,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    r = result["steps_per_s"]
    md = (
        f"# Trainer throughput ({result['date']})\n\n"
        f"`{result['preset']}`, batch {result['batch_size']}, {result['params'] / 1e6:.2f} M params, "
        f"{result['device']}, {args.threads} threads, torch {result['torch']}\n\n"
        "| loop | steps/s | samples/s |\n|---|---|---|\n"
        + "".join(f"| {k} | {v:.2f} | {v * result['batch_size']:.0f} |\n" for k, v in r.items())
        + f"\nTrainer overhead over the bare loop: {result['trainer_overhead_pct']:.1f} %\n"
    )
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
