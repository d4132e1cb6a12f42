"""Cost of the contract's input and output checks on ``predict_action_chunk``, on CPU.

``Policy`` wraps every policy's ``predict_action_chunk`` in ``check_obs`` (shapes, frame count,
finite and in-range values after normalization) and ``check_predicted_actions`` (shape, finite
actions). This measures, per call:

* ``checks``    : ``check_obs(obs)`` + ``check_predicted_actions(actions, B)`` alone (the whole
  added cost), median over blocks of many calls;
* ``predict``   : a DDIM-10 chunk through the public (checked) ``predict_action_chunk``;
* ``unchecked`` : the same chunk through the policy's own, unwrapped method (``__wrapped__``);

for the small low-dim U-Net preset (state 20-D) and a tiny image config (state + two 84x84 uint8
cameras; uint8 images are bounded by their type, so only their shape is checked), at batch 1
and 8, plus the check alone with float32 images (the worst case: every pixel is scanned).
The share is ``checks / predict``; ``predict - unchecked`` is the same quantity measured the
noisy way (two medians of a much longer call), shown for comparison only.

    .venv/bin/python benchmarks/bench_input_checks.py     # writes benchmarks/results/input_checks.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os

# As in bench_inference.py: passive OpenMP waits on a shared, oversubscribed CPU.
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
LOW_DIM = 20
CAMERAS = ("image.agentview", "image.wrist")
STEPS = 10  # DDIM-10


def build(name: str) -> DiffusionPolicy:
    rng = np.random.default_rng(0)
    fields = [FieldSpec("state", (LOW_DIM,))]
    if name == "unet_lowdim_small":
        cfg = DiffusionConfig.from_preset(
            PRESETS / "diffusion_unet_lowdim_small.yaml", ObservationSpec(tuple(fields)), osc_pose_action_spec()
        )
    else:  # tiny image config: the contract tests' tiny U-Net, with two 84x84 cameras
        fields += [FieldSpec(k, (84, 84, 3), FieldKind.IMAGE) for k in CAMERAS]
        cfg = DiffusionPolicy.tiny_configs(ObservationSpec(tuple(fields)), osc_pose_action_spec())["unet"]
    policy = DiffusionPolicy(cfg)
    policy.fit_normalizer({"state": rng.normal(size=(1000, LOW_DIM)), "action": rng.uniform(-1, 1, (1000, 7))})
    return policy.eval()


def fake_obs(policy: DiffusionPolicy, b: int, float_images: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    to, obs = policy.config.n_obs_steps, {}
    for f in policy.config.obs_spec.fields:
        if f.kind is FieldKind.IMAGE:
            img = rng.integers(0, 256, (b, to, *f.shape), dtype=np.uint8)
            obs[f.key] = img.astype(np.float32) if float_images else img
        else:
            obs[f.key] = rng.normal(size=(b, to, *f.shape)).astype(np.float32)
    return obs


def per_call_us(fn, calls: int, blocks: int) -> float:
    """Median over ``blocks`` of the mean time of ``calls`` back-to-back calls, in microseconds."""
    fn()
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def measure(name: str, policy: DiffusionPolicy, b: int, args: argparse.Namespace) -> dict:
    obs = fake_obs(policy, b)
    gen = torch.Generator().manual_seed(0)
    kwargs = dict(generator=gen, sampler="ddim", num_inference_steps=STEPS)
    actions = policy.predict_action_chunk(obs, **kwargs)
    unwrapped = type(policy).predict_action_chunk.__wrapped__

    def checks() -> None:
        policy.check_predicted_actions(actions, policy.check_obs(obs))

    check_us = per_call_us(checks, args.check_calls, args.blocks)
    # checked and unchecked calls alternate, so drifting machine load hits both alike
    checked, unchecked = [], []
    for _ in range(args.runs):
        for fn, out in ((policy.predict_action_chunk, checked), (unwrapped.__get__(policy), unchecked)):
            t0 = time.perf_counter()
            fn(obs, **kwargs)
            out.append((time.perf_counter() - t0) * 1e3)
    predict_ms, unchecked_ms = statistics.median(checked), statistics.median(unchecked)
    row = {
        "model": name,
        "batch": b,
        "checks_us": round(check_us, 1),
        "predict_ms": round(predict_ms, 2),
        "unchecked_ms": round(unchecked_ms, 2),
        "checks_pct_of_predict": round(100 * check_us / 1e3 / predict_ms, 3),
    }
    if policy.config.obs_spec.images:
        fobs = fake_obs(policy, b, float_images=True)
        row["checks_float_images_us"] = round(
            per_call_us(lambda: policy.check_predicted_actions(actions, policy.check_obs(fobs)), 50, args.blocks), 1
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=15, help="DDIM-10 chunks timed per row")
    ap.add_argument("--check-calls", type=int, default=500, help="check calls per timed block")
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    res = {"rows": [], "meta": meta(args)}
    for name in ("unet_lowdim_small", "unet_image_tiny"):
        policy = build(name)
        for b in (1, 8):
            r = measure(name, policy, b, args)
            res["rows"].append(r)
            extra = f"  (float32 images: {r['checks_float_images_us']:.0f} us)" if "checks_float_images_us" in r else ""
            print(
                f"{name:18s} B={b}  checks {r['checks_us']:7.1f} us  predict DDIM-{STEPS} {r['predict_ms']:7.2f} ms"
                f"  unchecked {r['unchecked_ms']:7.2f} ms  share {r['checks_pct_of_predict']:.3f} %{extra}"
            )
    res["meta"]["loadavg_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "input_checks.json").write_text(json.dumps(res, indent=2))
    (args.out / "input_checks.md").write_text(markdown(res))
    print(f"wrote {args.out / 'input_checks.json'} and input_checks.md")


def meta(args: argparse.Namespace) -> dict:
    return {
        **machine_meta(args.threads),
        "runs": args.runs,
        "check_calls_x_blocks": [args.check_calls, args.blocks],
        "obs": f"state {LOW_DIM}-D float32 (+ 2 cameras 84x84 uint8 for the image config), action 7-D, To 2",
    }


def markdown(res: dict) -> str:
    m = res["meta"]
    la, lb = m["loadavg_before"], m["loadavg_after"]
    lines = [
        "# Cost of the contract's input/output checks on predict_action_chunk",
        "",
        f"{m['date']}, torch {m['torch']}, {m['threads']} thread(s) (OMP_WAIT_POLICY={m['omp_wait_policy']}), "
        f"{m['cpu_count']} cores; load average (1/5/15 min) before {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, "
        f"after {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} (shared machine: a load above the core count inflates "
        "every figure). Produced by `benchmarks/bench_input_checks.py`.",
        f"Obs: {m['obs']}. `checks` = `check_obs` + `check_predicted_actions`, the whole added cost "
        f"(median of {m['check_calls_x_blocks'][1]} blocks of {m['check_calls_x_blocks'][0]} calls); "
        f"`predict` = a DDIM-{STEPS} chunk through the checked `predict_action_chunk`, `unchecked` = the same "
        f"through the policy's own unwrapped method (medians of {m['runs']} alternating calls). Their "
        "difference is a far noisier estimate of the same cost (two medians of calls 1000x longer than the "
        "checks, on a loaded machine), so the share uses the directly timed `checks`.",
        "",
        "| model | batch | checks (us) | predict DDIM-10 (ms) | unchecked (ms) | checks / predict | checks, float32 images (us) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        fl = f"{r['checks_float_images_us']:.0f}" if "checks_float_images_us" in r else "-"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['checks_us']:.1f} | {r['predict_ms']:.2f} | {r['unchecked_ms']:.2f} "
            f"| {r['checks_pct_of_predict']:.3f} % | {fl} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
