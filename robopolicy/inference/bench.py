"""``robopolicy bench inference``: latency of one action chunk on this machine, per engine,
sampler and step count, batch size and device, with the thread settings that decide it.

    robopolicy bench inference --checkpoint runs/lift/latest
    robopolicy bench inference --preset diffusion_unet_lowdim_small --engines eager,gemm,onnx
    robopolicy bench inference --checkpoint DIR --device cuda --dtypes float32,bfloat16 --cuda-graph both

A chunk is one ``policy.predict`` call: observation in env units (checked, normalized,
encoded), the whole denoising loop, env-unit actions out. Each row reports p50 / p95 over
``--runs`` timed calls after ``--warmup`` untimed ones (CUDA is synchronized per call), and the
largest difference of its actions from the ``eager`` float32 engine's for the same noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robopolicy.inference.engine import Backend, EngineConfig, backends_for, thread_settings
from robopolicy.types import FieldKind

ROOT = Path(__file__).resolve().parents[2]


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure this machine: inference latency per chunk")
    bsub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bsub.required = True
    p = bsub.add_parser(
        "inference",
        help="latency per chunk (p50/p95) per engine, sampler, batch and device",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="policy directory (config.json + model.safetensors)")
    src.add_argument(
        "--preset",
        help="a configs/policies preset with random weights (a 20-D state; --cameras adds 84x84 images)",
    )
    p.add_argument("--cameras", type=int, default=0, help="with --preset: number of 84x84 cameras (default 0)")
    p.add_argument("--samplers", default="ddpm:100,ddim:10", help="sampler:steps list (default ddpm:100,ddim:10)")
    p.add_argument("--batch", default="1,8", help="batch sizes (default 1,8)")
    p.add_argument("--engines", default=None, help="engine backends (default: every one the network has)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--dtypes", default="float32", help="CUDA network precisions, e.g. float32,bfloat16")
    p.add_argument("--cuda-graph", choices=["off", "on", "both"], default="off", help="CUDA graphs (default off)")
    p.add_argument("--threads", default=None, help="CPU thread counts to try, e.g. 1,2 (default: torch's)")
    p.add_argument("--runs", type=int, default=20, help="timed chunks per row (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed chunks per row (default 3)")
    p.add_argument("--json", help="also write the rows and settings to this JSON file")
    p.set_defaults(func=run)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"error: expected positive integers, got {text!r}")
    return values


def _samplers(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if not steps.isdigit():
            raise SystemExit(f"error: --samplers items are sampler:steps (e.g. ddim:10), got {item!r}")
        out.append((name, int(steps)))
    return out


def load_policy(args: argparse.Namespace) -> Any:
    from robopolicy.policy import Policy

    if args.checkpoint:
        path = Path(args.checkpoint)
        if not (path / "config.json").is_file():
            raise SystemExit(f"error: {path} is not a policy directory (no config.json)")
        return Policy.load(path).eval()
    return preset_policy(args.preset, args.cameras)


def preset_policy(preset: str, cameras: int = 0, state_dim: int = 20, seed: int = 0) -> Any:
    """A Diffusion Policy preset with random weights on a state of ``state_dim`` (+ cameras)."""
    from robopolicy.policies.diffusion import DiffusionConfig, DiffusionPolicy
    from robopolicy.types import FieldSpec, ObservationSpec, osc_pose_action_spec

    path = Path(preset)
    if not path.is_file():
        path = ROOT / "configs" / "policies" / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (ROOT / "configs" / "policies").glob("*.yaml"))
        raise SystemExit(f"error: no preset {preset!r}; known: {known}")
    fields = [FieldSpec("state", (state_dim,))]
    fields += [FieldSpec(f"image.cam{i}", (84, 84, 3), FieldKind.IMAGE) for i in range(cameras)]
    torch.manual_seed(seed)
    cfg = DiffusionConfig.from_preset(path, ObservationSpec(tuple(fields)), osc_pose_action_spec())
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(seed)
    policy.fit_normalizer(
        {"state": rng.normal(size=(1000, state_dim)), "action": rng.uniform(-1, 1, (1000, cfg.action_spec.dim))}
    )
    return policy.eval()


def fake_obs(policy: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Observations of the policy's spec: uint8 noise images, low-dim values inside the data range."""
    rng = np.random.default_rng(seed)
    to = policy.config.n_obs_steps
    obs = {}
    for f in policy.config.obs_spec.fields:
        if f.kind is FieldKind.IMAGE:
            obs[f.key] = rng.integers(0, 256, (batch, to, *f.shape), dtype=np.uint8)
        else:
            obs[f.key] = rng.uniform(-0.5, 0.5, (batch, to, *f.shape)).astype(np.float32)
    return obs


def time_chunks(policy: Any, obs: dict, options: dict, runs: int, warmup: int) -> tuple[list[float], torch.Tensor]:
    """Seconds per ``predict`` call (synchronized on CUDA) and the first call's actions."""
    cuda = policy.device.type == "cuda"
    first = None
    times = []
    for i in range(warmup + runs):
        gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        actions = policy.predict(obs, generator=gen, options=options).actions
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if first is None:
            first = actions.detach().cpu()
        if i >= warmup:
            times.append(dt)
    return times, first


def run(args: argparse.Namespace) -> int:
    policy = load_policy(args)
    samplers = _samplers(args.samplers)
    batches = _ints(args.batch)
    threads = _ints(args.threads) if args.threads else [torch.get_num_threads()]
    device = EngineConfig(device=args.device).resolve_device(policy.device)
    engines = args.engines.split(",") if args.engines else backends_for(policy.model)
    known = [b.value for b in Backend]
    bad = [e for e in engines if e not in known]
    if bad:
        raise SystemExit(f"error: unknown engine(s) {bad}; choose from {known}")
    if device.type == "cuda":
        engines = ["eager"]
    dtypes = args.dtypes.split(",") if device.type == "cuda" else ["float32"]
    graphs = (
        {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graph] if device.type == "cuda" else [False]
    )
    settings = {**thread_settings(), "device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        settings["gpu"] = torch.cuda.get_device_name(device)
    print(f"# {type(policy).__name__}, {sum(p.numel() for p in policy.parameters()) / 1e6:.2f} M parameters")
    print("# " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    rows: list[dict[str, Any]] = []
    print(
        f"{'engine':<10} {'dtype':<9} {'graph':<5} {'thr':>3} {'batch':>5} {'sampler':<9} {'p50 ms':>9} {'p95 ms':>9} {'max|da|':>9}"
    )
    for batch in batches:
        obs = fake_obs(policy, batch)
        for sampler, steps in samplers:
            options = {"sampler": sampler, "num_inference_steps": steps}
            policy.set_engine({"backend": "eager", "device": str(device)})
            ref = policy.predict(obs, generator=torch.Generator().manual_seed(0), options=options).actions.cpu()
            for engine in engines:
                for dtype in dtypes:
                    for graph in graphs:
                        for n_threads in threads:
                            cfg = {"backend": engine, "device": str(device), "dtype": dtype, "cuda_graph": graph}
                            if device.type == "cpu":
                                cfg["threads"] = n_threads
                            try:
                                policy.set_engine(cfg)
                                times, actions = time_chunks(policy, obs, options, args.runs, args.warmup)
                            except (ImportError, RuntimeError, ValueError) as e:
                                print(f"{engine:<10} {dtype:<9} skipped: {e}", file=sys.stderr)
                                continue
                            ms = sorted(t * 1e3 for t in times)
                            row = {
                                "engine": engine,
                                "dtype": dtype,
                                "cuda_graph": graph,
                                "threads": n_threads if device.type == "cpu" else None,
                                "batch": batch,
                                "sampler": sampler,
                                "steps": steps,
                                "p50_ms": statistics.median(ms),
                                "p95_ms": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))],
                                "max_abs_diff_vs_eager": float((actions - ref).abs().max()),
                            }
                            rows.append(row)
                            print(
                                f"{engine:<10} {dtype:<9} {('on' if graph else 'off'):<5} "
                                f"{(n_threads if device.type == 'cpu' else '-'):>3} {batch:>5} "
                                f"{sampler + '-' + str(steps):<9} {row['p50_ms']:>9.2f} {row['p95_ms']:>9.2f} "
                                f"{row['max_abs_diff_vs_eager']:>9.2g}",
                                flush=True,
                            )
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    return 0
