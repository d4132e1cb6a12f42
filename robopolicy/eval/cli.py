"""``robopolicy eval``: roll a checkpoint out on a simulated benchmark suite.

    robopolicy eval --checkpoint runs/lift --suite sim/lift_lowdim.yaml --episodes 50 \\
        --workers 2 --out reports/lift [--sampler ddim --num-inference-steps 10] \\
        [--inference rti --rti-steps 3 --rti-start-t 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from robopolicy.config import key_values
from robopolicy.eval.runner import evaluate
from robopolicy.inference.options import InferenceOptions
from robopolicy.inference.rtc import RTCConfig
from robopolicy.inference.rti import RTIConfig
from robopolicy.outputs import discard, is_report_dir, staging_dir, swap_in


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a policy in simulation (success rate, CI, latency, videos)",
        description="Roll a policy out on a sim/*.yaml suite. --checkpoint is a policy directory or a run "
        "directory (its best/, else latest/).",
    )
    p.add_argument("--checkpoint", required=True, help="policy dir, or run dir (uses RUN_DIR/best or RUN_DIR/latest)")
    p.add_argument("--suite", required=True, help="suite YAML, e.g. sim/lift_lowdim.yaml")
    p.add_argument("--out", required=True, help="report directory (report.json, report.md, videos/)")
    p.add_argument("--episodes", type=int, default=None, help="episodes (default: the suite's)")
    p.add_argument("--workers", type=int, default=2, help="simulator processes (default 2)")
    p.add_argument("--seed-offset", type=int, default=0, help="added to the suite's seed_start")
    p.add_argument("--videos", type=int, default=3, help="episodes recorded as mp4 (default 3)")
    p.add_argument(
        "--video-camera",
        default="agentview",
        help="camera of the videos: one of the task's cameras, e.g. agentview, frontview, birdview, sideview "
        "(default agentview)",
    )
    p.add_argument(
        "--grid",
        type=int,
        default=None,
        help="side-by-side video videos/grid.mp4 of the first N episodes, SUCCESS/FAILURE and seed on each tile "
        "(default: as many as --videos; 0: none; its episodes are recorded too)",
    )
    p.add_argument("--device", default=None, help="policy device (default: cuda if present, else cpu)")
    p.add_argument("--sampler", default=None, help="sampler override, if the policy supports it (e.g. ddim)")
    p.add_argument("--num-inference-steps", type=int, default=None, help="denoising steps override, if supported")
    p.add_argument(
        "--policy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any inference option of the policy, repeatable (e.g. guidance_weight=2 for BESO, dynamic=true "
        "for EBT-Policy); an option the policy lacks is refused before the simulators start",
    )
    p.add_argument(
        "--inference",
        choices=("native", "rti", "rtc"),
        default="native",
        help="native: the policy's own sampler; rti: Real-Time Iteration warm starts through the denoiser "
        "view (no retraining; the first chunk of each episode is sampled natively); rtc: each chunk inpainted "
        "toward the previous one with --rtc-delay actions frozen (0: plain sampling)",
    )
    p.add_argument(
        "--rtc-delay",
        type=int,
        default=0,
        help="RTC: actions of each new chunk frozen to the previous chunk's (the delay in steps; default 0)",
    )
    add_rtc_args(p)
    p.add_argument("--rti-steps", type=int, default=3, help="RTI: sampler steps per warm-started chunk (default 3)")
    p.add_argument(
        "--rti-start-t",
        type=float,
        default=10.0,
        help="RTI: start level as a training timestep of the model (default 10; see benchmarks/bench_rti.py "
        "--estimate to measure one)",
    )
    p.add_argument(
        "--rti-sigma-start",
        type=float,
        default=None,
        help="RTI: start level as a noise level of the policy's view (overrides --rti-start-t; needed for "
        "views without a timestep grid, e.g. BESO's EDM view)",
    )
    p.add_argument("--rti-method", default="ddim", help="RTI: sampler of the warm steps (ddim, ddpm, euler, ...)")
    p.add_argument(
        "--rti-init",
        choices=("guess", "renoise"),
        default="guess",
        help="RTI: the shifted guess as the iterate as is (reference), or renoised to the start level",
    )
    p.add_argument(
        "--rti-gripper",
        choices=("reset", "keep"),
        default="reset",
        help="RTI: reset the guess's gripper to +-value (any checkpoint) or keep it (gripper-scaled training)",
    )
    p.add_argument(
        "--rti-gripper-value",
        type=float,
        default=None,
        help="RTI: gripper magnitude of the guess, normalized (default 0.1, or the policy's discrete_action_scale "
        "if smaller; 1 left PickPlaceCan's gripper open: benchmarks/results/rti.md)",
    )
    p.add_argument(
        "--n-action-steps",
        type=int,
        default=None,
        help="actions executed per chunk (default: the policy's Ta; 1 replans every step)",
    )
    add_engine_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p


def add_rtc_args(p: argparse.ArgumentParser) -> None:
    """RTC's mode, guidance cap and guided steps, shared by ``eval`` and ``run``."""
    p.add_argument(
        "--rtc-mode",
        choices=("auto", "guided", "trained"),
        default="auto",
        help="RTC: guided inpainting, or the prefix given to a policy trained with it (train_max_delay); "
        "auto: trained when the policy was (default auto)",
    )
    p.add_argument("--rtc-max-guidance", type=float, default=5.0, help="RTC: the guidance cap beta (default 5)")
    p.add_argument(
        "--rtc-steps",
        type=int,
        default=None,
        help="RTC: denoising steps of a guided chunk (default: the policy's); each costs a forward and a "
        "backward pass, so fewer steps cut RTC's latency on a CPU",
    )


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """``--engine`` / ``--dtype`` / ``--cuda-graph`` / ``--threads``: how the network runs."""
    p.add_argument(
        "--engine",
        default=None,
        help="inference engine: auto (default; CPU: onnx up to batch 2, gemm above; CUDA: eager), eager, "
        "gemm, onnx, compiled (the fastest at batch 1 on a CPU after a build of about a minute per "
        "checkpoint, batch size and thread count, cached on disk; for deployments); robopolicy bench "
        "inference measures them on this machine",
    )
    p.add_argument("--dtype", default=None, help="network precision on CUDA: float32 (default), bfloat16, float16")
    p.add_argument("--cuda-graph", action="store_true", help="replay each chunk's denoising loop as a CUDA graph")
    p.add_argument("--threads", type=int, default=None, help="CPU threads while predicting (default: torch's)")


def engine_config(args: argparse.Namespace) -> Any:
    """The EngineConfig of the command line (None: the policy's default)."""
    from robopolicy.inference.engine import EngineConfig

    fields = {"backend": args.engine, "dtype": args.dtype, "threads": args.threads}
    if args.cuda_graph:
        fields["cuda_graph"] = True
    fields = {k: v for k, v in fields.items() if v is not None}
    return EngineConfig.parse(fields) if fields else None


def check_report_dir(out: Path) -> None:
    """Refuse, before any rollout, an ``--out`` that is a file or a directory of other files."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; it must be a report directory")
    if out.is_dir() and not is_report_dir(out) and any(out.iterdir()):
        raise ValueError(
            f"--out {out} is a directory of other files, not an evaluation report; choose a new or empty one"
        )


def _run(args: argparse.Namespace) -> int:
    from robopolicy.envs.availability import require_sim

    require_sim("eval")
    inference_options(args)  # bad option values are refused before anything runs
    engine_config(args)
    out = Path(args.out)
    check_report_dir(out)
    # replacing an earlier report: evaluate into a hidden sibling, swap it in only when complete
    target = staging_dir(out) if out.exists() and any(out.iterdir()) else out
    try:
        report = _evaluate(args, target)
    except BaseException:
        if target != out:
            discard(target)
        raise
    if target != out:
        swap_in(target, out)
        report = _relocate(report, target, out)
    keys = ("suite", "episodes", "successes", "success_rate", "ci95", "mean_length", "latency_ms")
    print(json.dumps({k: report[k] for k in keys}))
    print(f"report: {args.out}/report.md")
    return 0


def _relocate(report: dict[str, Any], staged: Path, out: Path) -> dict[str, Any]:
    """Paths of the report written in ``staged`` as they are after the swap (report.json too)."""
    moved = lambda p: None if p is None else str(out / Path(p).relative_to(staged))  # noqa: E731
    report = {**report, "videos": [moved(v) for v in report["videos"]], "grid_video": moved(report.get("grid_video"))}
    report["per_episode"] = [{**e, "video": moved(e.get("video"))} for e in report["per_episode"]]
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The typed inference options of the command line."""
    rti = RTIConfig(
        steps=args.rti_steps,
        start_t=args.rti_start_t,
        sigma_start=args.rti_sigma_start,
        method=args.rti_method,
        gripper=args.rti_gripper,
        gripper_value=args.rti_gripper_value,
        init=args.rti_init,
    )
    policy = {"sampler": args.sampler, "num_inference_steps": args.num_inference_steps}
    policy = {k: v for k, v in policy.items() if v is not None}  # only what was asked for
    policy.update(key_values(getattr(args, "policy_option", None) or [], "--policy-option"))
    rtc = RTCConfig(
        delay=getattr(args, "rtc_delay", 0),
        mode=getattr(args, "rtc_mode", "auto"),
        max_guidance=getattr(args, "rtc_max_guidance", 5.0),
        steps=getattr(args, "rtc_steps", None),
    )
    return InferenceOptions(method=args.inference, policy=policy, rti=rti, rtc=rtc, n_action_steps=args.n_action_steps)


def _evaluate(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    return evaluate(
        args.checkpoint,
        args.suite,
        episodes=args.episodes,
        workers=args.workers,
        seed_offset=args.seed_offset,
        out=str(out),
        n_videos=args.videos,
        progress=not args.no_progress,
        inference=inference_options(args),
        device=args.device,
        video_camera=args.video_camera,
        grid=args.grid,
        engine=engine_config(args),
    )
