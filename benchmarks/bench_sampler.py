"""Episode store append and sequence-sampler throughput.

Two synthetic stores in a temp dir:

* low-dim: 100k steps (500 episodes x 200), ``state`` (19,) f32 + ``action`` (7,) f32;
* image: 20k frames (100 episodes x 200), two 84x84 uint8 cameras + ``state`` + ``action``.
  Frames are smooth random blobs plus noise (compress ~like camera frames, not like white noise).

Measures append throughput (steps/s, MB/s of raw data) and ``EpisodeDataset`` windows/s
(To=2, H=16, Ta=8) single-process with random access, and through a torch DataLoader
(num_workers=2, batch 64, shuffled; steady state after the first batch).

    .venv/bin/python benchmarks/bench_sampler.py [--quick]

Writes benchmarks/results/sampler.json and sampler.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from robopolicy.data.dataset import EpisodeDataset
from robopolicy.data.store import EpisodeStore

RESULTS = Path(__file__).resolve().parent / "results"
H, TO, TA, BATCH = 16, 2, 8, 64
TRAINER_IT_S = {"low-dim": 5.6, "image": 1.0}  # DP training rate at batch 64 on this CPU


def smooth_images(rng: np.random.Generator, n: int, size: int = 84) -> np.ndarray:
    """(n, size, size, 3) uint8: 12x12 random colors upsampled 7x, plus +-8 noise."""
    coarse = rng.integers(0, 256, (n, size // 7, size // 7, 3)).astype(np.int16)
    img = coarse.repeat(7, axis=1).repeat(7, axis=2)
    img += rng.integers(-8, 9, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_store(path: Path, n_episodes: int, ep_len: int, cameras: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    store = EpisodeStore.create(path, control_rate=20.0, source="bench")
    write_s, raw_bytes = 0.0, 0
    for _ in range(n_episodes):
        ep = {
            "state": rng.standard_normal((ep_len, 19)).astype(np.float32),
            "action": rng.uniform(-1, 1, (ep_len, 7)).astype(np.float32),
        }
        for c in range(cameras):
            ep[f"image.cam{c}"] = smooth_images(rng, ep_len)
        raw_bytes += sum(a.nbytes for a in ep.values())
        t0 = time.perf_counter()
        store.add_episode(ep, {"success": True})
        write_s += time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    steps = n_episodes * ep_len
    return {
        "steps": steps,
        "episodes": n_episodes,
        "append_s": round(write_s, 2),
        "append_steps_per_s": round(steps / write_s),
        "append_MB_per_s": round(raw_bytes / write_s / 1e6, 1),
        "raw_MB": round(raw_bytes / 1e6, 1),
        "disk_MB": round(disk / 1e6, 1),
    }


def bench_single(ds: EpisodeDataset, n: int) -> float:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ds), n)
    ds[int(idx[0])]  # warm (zarr metadata)
    t0 = time.perf_counter()
    for i in idx:
        ds[int(i)]
    return n / (time.perf_counter() - t0)


def bench_loader(ds: EpisodeDataset, n_batches: int, workers: int = 2) -> tuple[float, float]:
    """(windows/s in steady state, seconds to the first batch)."""
    g = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=workers, generator=g, persistent_workers=False
    )
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)  # worker start-up and first batch excluded
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    rate = n_batches * BATCH / (time.perf_counter() - t0)
    del it
    return rate, startup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10x smaller stores, fewer samples")
    args = ap.parse_args()
    q = 10 if args.quick else 1
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_sampler_"))
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "config": {"horizon": H, "n_obs_steps": TO, "n_action_steps": TA, "batch": BATCH, "workers": 2},
        "stores": {},
    }
    try:
        cases = {
            "low-dim": dict(n_episodes=500 // q, ep_len=200, cameras=0, keys=["state"], single=20000 // q, batches=60),
            "image": dict(
                n_episodes=100 // q,
                ep_len=200,
                cameras=2,
                keys=["state", "image.cam0", "image.cam1"],
                single=3000 // q,
                batches=30,
            ),
        }
        for name, c in cases.items():
            path = tmp / f"{name}.zarr"
            t0 = time.perf_counter()
            r = build_store(path, c["n_episodes"], c["ep_len"], c["cameras"])
            r["create_total_s"] = round(time.perf_counter() - t0, 1)
            ds = EpisodeDataset(path, c["keys"], horizon=H, n_obs_steps=TO, n_action_steps=TA)
            r["windows"] = len(ds)
            t0 = time.perf_counter()
            r["single_windows_per_s"] = round(bench_single(ds, c["single"]))
            r["single_total_s"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            rate, startup = bench_loader(ds, c["batches"])
            r["loader_windows_per_s"], r["loader_first_batch_s"] = round(rate), round(startup, 2)
            r["loader_total_s"] = round(time.perf_counter() - t0, 1)
            need = TRAINER_IT_S[name] * BATCH
            r["trainer_needs_windows_per_s"] = need
            r["headroom_single"] = round(r["single_windows_per_s"] / need, 1)
            r["headroom_loader"] = round(r["loader_windows_per_s"] / need, 1)
            results["stores"][name] = r
            print(name, json.dumps(r))
            shutil.rmtree(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.quick:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "sampler.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "sampler.md").write_text(to_markdown(results))
    print(to_markdown(results))


def to_markdown(results: dict) -> str:
    rows = [
        "# Episode store and sampler throughput",
        "",
        f"CPU: {results['machine']['cpus']} cores (shared), torch {results['machine']['torch']}. "
        f"Windows: To={TO}, H={H}, Ta={TA}; DataLoader: 2 workers, batch {BATCH}. "
        "Produced by `benchmarks/bench_sampler.py`.",
        "",
        "| store | steps | append steps/s | append MB/s | disk MB (raw MB) | windows/s 1 proc | windows/s loader "
        "| trainer needs | headroom (loader) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["stores"].items():
        rows.append(
            f"| {name} | {r['steps']} | {r['append_steps_per_s']} | {r['append_MB_per_s']} | "
            f"{r['disk_MB']} ({r['raw_MB']}) | {r['single_windows_per_s']} | {r['loader_windows_per_s']} | "
            f"{r['trainer_needs_windows_per_s']:.0f} | {r['headroom_loader']}x |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
