"""Diffusion Policy speed on CPU: inference latency per chunk and training throughput.

Inference: one chunk at batch 1 (obs in env units -> env-unit actions, normalization and obs
encoding included), median and p95 over ``--runs`` calls, for the U-Net and transformer at the
reference low-dim sizes, the small low-dim preset and the small image preset; samplers DDPM-100,
DDIM-16, DDIM-10. Training: ``compute_loss`` + backward + AdamW step at batch 64.

    .venv/bin/python benchmarks/bench_inference.py            # writes benchmarks/results/inference.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os

# On a shared, oversubscribed CPU, spinning OpenMP workers collapse multi-thread throughput
# (measured 3.5x slower than passive waiting at load 5 on 2 cores); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_meta

from robopolicy.policies.diffusion import DiffusionConfig, DiffusionPolicy
from robopolicy.types import FieldKind, FieldSpec, ObservationSpec, osc_pose_action_spec

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "configs" / "policies"
LOW_DIM = 20  # robosuite-like state: object + eef pose + gripper
CAMERAS = ("image.agentview", "image.wrist")


def build(preset: str, images: bool) -> DiffusionPolicy:
    fields = [FieldSpec("state", (LOW_DIM,))]
    if images:
        fields += [FieldSpec(k, (84, 84, 3), FieldKind.IMAGE) for k in CAMERAS]
    cfg = DiffusionConfig.from_preset(
        PRESETS / f"{preset}.yaml", ObservationSpec(tuple(fields)), osc_pose_action_spec()
    )
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(0)
    policy.fit_normalizer({"state": rng.normal(size=(1000, LOW_DIM)), "action": rng.uniform(-1, 1, (1000, 7))})
    return policy


def fake_obs(policy: DiffusionPolicy, b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    to = policy.config.n_obs_steps
    obs = {}
    for f in policy.config.obs_spec.fields:
        if f.kind is FieldKind.IMAGE:
            obs[f.key] = rng.integers(0, 256, (b, to, *f.shape), dtype=np.uint8)
        else:
            obs[f.key] = rng.normal(size=(b, to, *f.shape)).astype(np.float32)
    return obs


def time_inference(policy: DiffusionPolicy, sampler: str, steps: int, runs: int) -> dict:
    policy.eval()
    obs = fake_obs(policy, 1, np.random.default_rng(0))
    gen = torch.Generator().manual_seed(0)
    policy.predict_action_chunk(obs, generator=gen, sampler="ddim", num_inference_steps=2)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        policy.predict_action_chunk(obs, generator=gen, sampler=sampler, num_inference_steps=steps)
        times.append(1e3 * (time.perf_counter() - t0))
    return {"median_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95)), "runs": runs}


def time_training(policy: DiffusionPolicy, batch: int, iters: int) -> dict:
    policy.train()
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    data = {"obs": fake_obs(policy, batch, rng), "action": rng.uniform(-1, 1, (batch, policy.config.horizon, 7))}

    def step() -> None:
        loss, _ = policy.compute_loss(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    dt = time.perf_counter() - t0
    return {"it_per_s": iters / dt, "samples_per_s": batch * iters / dt, "batch": batch, "iters": iters}


def n_params(policy: DiffusionPolicy) -> float:
    return sum(p.numel() for p in policy.parameters()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--ddpm-runs", type=int, default=3, help="DDPM-100 is slow on the big models")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    samplers = [("ddpm", 100), ("ddim", 16), ("ddim", 10)]
    models = [
        ("diffusion_unet_lowdim", False),
        ("diffusion_unet_lowdim_small", False),
        ("diffusion_transformer_lowdim", False),
        ("diffusion_unet_image_small", True),
    ]
    results = {"inference": [], "training": [], "meta": meta(args)}
    for preset, images in models:
        policy = build(preset, images)
        for sampler, steps in samplers:
            runs = args.ddpm_runs if sampler == "ddpm" else args.runs
            r = time_inference(policy, sampler, steps, runs)
            row = {"preset": preset, "params_M": round(n_params(policy), 2), "sampler": f"{sampler}-{steps}", **r}
            results["inference"].append(row)
            print(f"infer {preset:32s} {row['sampler']:9s} median {r['median_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f} ms")
    for preset, images, iters in [
        ("diffusion_unet_lowdim_small", False, 20),
        ("diffusion_unet_lowdim", False, 5),
        ("diffusion_unet_image_small", True, 3),
    ]:
        policy = build(preset, images)
        r = time_training(policy, 64, iters)
        results["training"].append({"preset": preset, "params_M": round(n_params(policy), 2), **r})
        print(f"train {preset:32s} {r['it_per_s']:6.2f} it/s  {r['samples_per_s']:8.1f} samples/s (batch 64)")
    results["meta"]["loadavg_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "inference.json").write_text(json.dumps(results, indent=2))
    (args.out / "inference.md").write_text(markdown(results))
    print(f"wrote {args.out / 'inference.json'} and inference.md")


def meta(args: argparse.Namespace) -> dict:
    return {
        **machine_meta(args.threads),
        "obs": f"state {LOW_DIM}-D (+ 2 cameras 84x84 for image presets), action 7-D (OSC_POSE), To 2",
    }


def markdown(res: dict) -> str:
    m = res["meta"]
    lines = [
        "# Diffusion Policy on CPU",
        "",
        f"{m['date']}, torch {m['torch']}, {m['threads']} threads (OMP_WAIT_POLICY={m['omp_wait_policy']}), "
        f"{m['cpu_count']} cores; "
        f"load average before/after {m['loadavg_before'][0]:.1f}/{m['loadavg_after'][0]:.1f} "
        "(the machine is shared: a load above the core count inflates the figures).",
        f"Obs: {m['obs']}. Produced by `benchmarks/bench_inference.py`.",
        "",
        "## Inference, one chunk at batch 1 (obs encode + denoising + unnormalize)",
        "",
        "| preset | params (M) | sampler | median ms | p95 ms |",
        "|---|---|---|---|---|",
    ]
    for r in res["inference"]:
        lines.append(f"| {r['preset']} | {r['params_M']} | {r['sampler']} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} |")
    lines += ["", "## Training, batch 64 (loss + backward + AdamW)", "", "| preset | params (M) | it/s | samples/s |"]
    lines.append("|---|---|---|---|")
    for r in res["training"]:
        lines.append(f"| {r['preset']} | {r['params_M']} | {r['it_per_s']:.2f} | {r['samples_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
