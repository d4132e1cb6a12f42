"""SeedPolicy vs Diffusion Policy: parameters, compute and CPU latency per chunk against the
observation horizon (issue 13).

Diffusion Policy sees history only by stacking frames: at horizon ``h`` it conditions on
``To = h`` frames. SeedPolicy keeps a short window (``To = 2``) and carries the rest in its SEGA
state, so its cost per chunk should not depend on ``h``; its row at ``To = h`` (SEGA over all
``h`` frames) is shown too. For each policy and horizon, on the low-dim NutAssemblySquare shapes
(``state`` 23-D, 7-D actions, Ta 8, H 32 for every row so that ``To = 16`` fits), low-dim and
with one 84 px camera (the image rows: the camera encoder runs once per frame of the window):

* parameters;
* FLOPs per chunk (``torch.utils.flop_counter``, DDIM-10, batch 1): exact and load-independent;
* latency per chunk (DDIM-10, batch 1, 1 thread, the default ``onnx`` engine): the median of ``--reps`` calls, the policies
  interleaved so that machine load hits them alike.

    python benchmarks/bench_seed.py --out benchmarks/results/seed_compute.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_meta  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from robopolicy.config import load_yaml  # noqa: E402
from robopolicy.policy import get_policy_class  # noqa: E402
from robopolicy.types import ActionSpec, FieldKind, FieldSpec, ObservationSpec, osc_pose_action_spec  # noqa: E402

PRESETS = {
    "dp_unet": "configs/policies/diffusion_unet_lowdim_small.yaml",
    "seed_unet": "configs/policies/seed_unet_lowdim_small.yaml",
    "dp_transformer": "configs/policies/diffusion_transformer_lowdim.yaml",
    "seed_transformer": "configs/policies/seed_transformer_lowdim.yaml",
    "dp_unet_image": "configs/policies/diffusion_unet_image_small.yaml",
    "seed_unet_image": "configs/policies/seed_unet_image_small.yaml",
}
IMAGE = FieldSpec("image.agentview", (84, 84, 3), FieldKind.IMAGE)


def build(name: str, to: int, obs: ObservationSpec, act: ActionSpec, horizon: int):
    preset = REPO / PRESETS[name]
    data = load_yaml(preset)
    cls = get_policy_class(data["policy"])
    cfg = cls.config_class.from_preset(preset, obs, act, [f"n_obs_steps={to}", f"horizon={horizon}"])
    torch.manual_seed(0)
    policy = cls(cfg)
    rng = np.random.default_rng(0)
    policy.fit_normalizer({"state": rng.normal(size=(64, 23)), "action": rng.uniform(-1, 1, (64, act.dim))})
    return policy.eval()


def observation(spec: ObservationSpec, to: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        f.key: rng.integers(0, 255, (1, to, *f.shape), dtype=np.uint8)
        if f.kind is FieldKind.IMAGE
        else rng.normal(size=(1, to, *f.shape)).astype(np.float32)
        for f in spec.fields
    }


def one_chunk(policy, obs) -> None:
    policy.reset()
    with torch.inference_mode():
        policy.predict(
            obs,
            env_ids=[0],
            generator=torch.Generator().manual_seed(0),
            options={"sampler": "ddim", "num_inference_steps": 10},
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--horizons", default="2,4,8,16")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--chunk", type=int, default=32, help="H for every row (To - 1 + Ta <= H at To = 16)")
    ap.add_argument(
        "--policies", default="dp_unet,seed_unet,dp_transformer,seed_transformer,dp_unet_image,seed_unet_image"
    )
    ap.add_argument("--engine", default="onnx", help="inference engine for the latency (robopolicy.inference.engine)")
    ap.add_argument("--out", default="benchmarks/results/seed_compute.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    obs_spec = ObservationSpec((FieldSpec("state", (23,)),))
    act = osc_pose_action_spec()
    horizons = [int(h) for h in args.horizons.split(",")]
    rows = []
    for h in horizons:
        cases = []
        for name in args.policies.split(","):
            windows = [h] if name.startswith("dp") else sorted({2, h})
            for to in windows:
                spec = ObservationSpec((*obs_spec.fields, IMAGE)) if name.endswith("image") else obs_spec
                p = build(name, to, spec, act, args.chunk)
                o = observation(spec, to)
                p.set_engine("eager")  # FLOPs of the network itself (an ONNX session hides them)
                with FlopCounterMode(display=False) as fc:
                    one_chunk(p, o)
                p.set_engine(args.engine)
                one_chunk(p, o)  # warm (builds the engine)
                cases.append({"name": name, "p": p, "o": o, "to": to, "flops": fc.get_total_flops(), "ms": []})
        for _ in range(args.reps):  # interleaved
            for c in cases:
                t = time.perf_counter()
                one_chunk(c["p"], c["o"])
                c["ms"].append((time.perf_counter() - t) * 1e3)
        for c in cases:
            row = {
                "horizon": h,
                "policy": c["name"],
                "window_to": c["to"],
                "params": sum(x.numel() for x in c["p"].parameters()),
                "sega_params": sum(x.numel() for x in c["p"].sega.parameters()) if hasattr(c["p"], "sega") else 0,
                "gflops_per_chunk": c["flops"] / 1e9,
                "ms_p50": float(np.median(c["ms"])),
                "ms_p90": float(np.percentile(c["ms"], 90)),
            }
            rows.append(row)
            print(
                f"h={h:2d} {row['policy']:16s} To={row['window_to']:2d} params {row['params'] / 1e6:6.2f} M "
                f"(SEGA {row['sega_params'] / 1e6:5.2f} M)  {row['gflops_per_chunk']:7.3f} GFLOP/chunk  "
                f"{row['ms_p50']:7.1f} ms p50",
                flush=True,
            )
    out = {"meta": {**machine_meta(), "args": vars(args)}, "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
