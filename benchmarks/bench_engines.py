"""Inference engines on this CPU: one forward of the small low-dim U-Net, per engine, batch and
thread count, against the compute and memory bounds of that network; and one whole chunk
(DDIM-10, DDPM-100) per engine through ``policy.predict``.

Bounds, measured in the same run:

* compute: the forward's FLOPs (``torch.utils.flop_counter``) / the GFLOP/s this CPU sustains on
  the same network at batch 256 (its best use of the cores);
* memory: the weight bytes a forward must read / the read bandwidth of an array of that size
  (``tensor.sum()``, which is what streaming the weights from cache or memory costs).

    .venv/bin/python benchmarks/bench_engines.py      # writes benchmarks/results/engines.{json,md}

Timings on a shared 2-core machine are noisy: every number is a median over many calls, the rows
are interleaved (each round times every engine once), and the load is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from machine import machine_meta
from torch.utils.flop_counter import FlopCounterMode

from robopolicy.inference.bench import fake_obs, preset_policy
from robopolicy.inference.engine import EngineConfig, build_engine, cpu_threads

RESULTS = Path(__file__).resolve().parent / "results"
ENGINES = ("eager", "gemm", "compiled", "onnx")


def interleaved(fns: dict, rounds: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each fn, timing every fn once per round (reps calls each)."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[k].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def bounds(net: torch.nn.Module, threads: int) -> dict:
    x, g = torch.randn(1, 16, 7), torch.randn(1, 2, 20)
    with FlopCounterMode(display=False) as fc:
        net(x, torch.tensor([10.0]), g)
    flops = fc.get_total_flops()
    weight_bytes = sum(p.numel() * p.element_size() for p in net.parameters())
    with torch.no_grad(), cpu_threads(threads):
        xb, gb, tb = x.repeat(256, 1, 1), g.repeat(256, 1, 1), torch.full((256,), 10.0)
        t = interleaved({"b256": lambda: net(xb, tb, gb)}, rounds=5, reps=2)["b256"]
        peak = 256 * flops / t
        buf = torch.randn(weight_bytes // 4)
        bw = weight_bytes / interleaved({"read": lambda: buf.sum()}, rounds=10, reps=10)["read"]
    return {
        "flops": flops,
        "weight_bytes": weight_bytes,
        "gflops_per_s_at_batch_256": peak / 1e9,
        "read_gb_per_s": bw / 1e9,
        "compute_bound_ms": flops / peak * 1e3,
        "memory_bound_ms": weight_bytes / bw * 1e3,
    }


def forward_rows(policy, batches, threads_list) -> list[dict]:
    net = policy.model
    rows = []
    for threads in threads_list:
        for b in batches:
            x, cond = torch.randn(b, 16, 7), torch.randn(b, 2, 20)  # To 2 steps of the 20-D state
            fns = {}
            with torch.no_grad():
                for name in ENGINES:
                    eng = build_engine(net, EngineConfig(backend=name, threads=threads), torch.device("cpu"))
                    prepared = eng.prepare(cond)
                    fns[name] = lambda eng=eng, prepared=prepared, x=x: eng(x, 10.0, prepared)
                with cpu_threads(threads):
                    for _ in range(2):  # builds sessions / loads compiled packages outside the timing
                        for fn in fns.values():
                            fn()
                    med = interleaved(fns, rounds=15, reps=20)
            for name, t in med.items():
                rows.append({"threads": threads, "batch": b, "engine": name, "forward_ms": t * 1e3})
                print(f"forward  threads {threads} batch {b:>2} {name:<9} {t * 1e3:7.3f} ms", flush=True)
    return rows


def chunk_rows(policy, threads_list) -> list[dict]:
    rows = []
    obs = fake_obs(policy, 1)
    for threads in threads_list:
        for sampler, steps, rounds in (("ddim", 10, 15), ("ddpm", 100, 5)):
            opts = {"sampler": sampler, "num_inference_steps": steps}
            fns = {}
            for name in ENGINES:
                policy.set_engine({"backend": name, "threads": threads})
                eng = policy.network_engine(policy.model)
                fns[name] = lambda eng=eng, opts=opts: _predict_with(policy, eng, obs, opts)
            med = interleaved(fns, rounds=rounds, reps=1)
            for name, t in med.items():
                rows.append({"threads": threads, "sampler": f"{sampler}-{steps}", "engine": name, "chunk_ms": t * 1e3})
                print(f"chunk    threads {threads} {sampler}-{steps:<3} {name:<9} {t * 1e3:8.2f} ms", flush=True)
    return rows


def _predict_with(policy, engine, obs, opts):
    """predict() with this engine (several engines stay built side by side for interleaving)."""
    policy.__dict__["_engine_config"] = engine.config
    policy.__dict__["_engines"] = {(id(policy.model), False, "cpu"): engine}
    return policy.predict(obs, generator=torch.Generator().manual_seed(0), options=opts)


def markdown(res: dict) -> str:
    b = res["bounds"]
    lines = [
        "# Inference engines on this CPU (small low-dim U-Net, 4.56 M parameters)",
        "",
        f"{res['machine']['date']}, torch {res['machine']['torch']}, {os.cpu_count()} cores; load average "
        f"before/after {res['load_before'][0]:.2f}/{res['load_after'][0]:.2f}. Produced by "
        "`benchmarks/bench_engines.py`; rows interleaved round by round, medians.",
        "",
        "## Bounds of one batch-1 forward",
        "",
        f"- arithmetic: {b['flops'] / 1e9:.4f} GFLOP; this CPU sustains {b['gflops_per_s_at_batch_256']:.0f} "
        f"GFLOP/s on the same network at batch 256 -> compute bound **{b['compute_bound_ms']:.3f} ms**;",
        f"- weights: {b['weight_bytes'] / 1e6:.1f} MB; reading an array that size runs at "
        f"{b['read_gb_per_s']:.0f} GB/s -> memory bound **{b['memory_bound_ms']:.3f} ms**.",
        "",
        "## One forward (x, t, prepared condition), ms",
        "",
        "| threads | batch | " + " | ".join(ENGINES) + " | best vs eager | best / memory bound |",
        "|---|---|" + "---|" * len(ENGINES) + "---|---|",
    ]
    keyed = {(r["threads"], r["batch"], r["engine"]): r["forward_ms"] for r in res["forward"]}
    for threads, batch in sorted({(r["threads"], r["batch"]) for r in res["forward"]}):
        vals = [keyed[(threads, batch, e)] for e in ENGINES]
        best = min(vals[1:])
        lines.append(
            f"| {threads} | {batch} | "
            + " | ".join(f"{v:.3f}" for v in vals)
            + f" | {vals[0] / best:.2f}x | "
            + (f"{best / b['memory_bound_ms']:.1f}x |" if batch == 1 else "- |")
        )
    lines += ["", "## One chunk at batch 1 (policy.predict: obs in, env-unit actions out), ms", ""]
    lines += [
        "| threads | sampler | " + " | ".join(ENGINES) + " | best vs eager |",
        "|---|---|" + "---|" * len(ENGINES) + "---|",
    ]
    keyed = {(r["threads"], r["sampler"], r["engine"]): r["chunk_ms"] for r in res["chunk"]}
    for threads, sampler in sorted({(r["threads"], r["sampler"]) for r in res["chunk"]}):
        vals = [keyed[(threads, sampler, e)] for e in ENGINES]
        lines.append(
            f"| {threads} | {sampler} | "
            + " | ".join(f"{v:.1f}" for v in vals)
            + f" | {vals[0] / min(vals[1:]):.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batches", default="1,4,16")
    p.add_argument("--out", default=str(RESULTS / "engines.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    threads = [int(t) for t in args.threads.split(",")]
    load_before = os.getloadavg()
    policy = preset_policy("diffusion_unet_lowdim_small")
    res = {"machine": machine_meta(), "load_before": load_before}
    res["bounds"] = bounds(policy.model, max(threads))
    print(json.dumps(res["bounds"]), flush=True)
    res["forward"] = forward_rows(policy, [int(b) for b in args.batches.split(",")], threads)
    res["chunk"] = chunk_rows(policy, threads)
    res["load_after"] = os.getloadavg()
    out = Path(args.out)
    out.write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
