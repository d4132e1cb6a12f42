"""``robopolicy run``: drive an arm closed-loop with a policy at a fixed rate, with telemetry.

    robopolicy run --checkpoint runs/lift --driver robosuite --task Lift --hz 20 \\
        [--strategy rtc] [--inject-latency-ms 200] [--ticks 400] [--seed 0] [--out DIR] [--video]
        [--priority auto] [--simulated-time] [--rtc-mode auto]

Writes to ``--out``: ``telemetry.jsonl`` (every tick, chunk, event and fault, flushed line by
line), ``summary.json``, ``telemetry.png`` and, with ``--video`` on robosuite, ``video.mp4``.
Exit code 0 when the run ended normally (success, the episode's end, --ticks), 1 when a fault
ended it (the arm held; the fault is in the summary), 2 for bad input, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from robopolicy.config import key_values
from robopolicy.control.scheduler import MergeStrategy

RUN_ROOT = Path("runs/control")
"""Where ``--out`` goes by default (``runs/control/<driver>_<task>_<time>``)."""
MOCK_TICKS = 200
"""``--ticks`` default for the mock arm (it has no episode end)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from robopolicy.control.drivers import known_drivers
    from robopolicy.eval.cli import add_engine_args, add_rtc_args

    p = subparsers.add_parser(
        "run",
        help="drive an arm (robosuite or the mock arm) closed-loop with a policy at a fixed rate; telemetry",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="policy dir, or run dir (uses RUN_DIR/best or RUN_DIR/latest)")
    p.add_argument(
        "--driver",
        default="robosuite",
        help=f"the arm: one of {', '.join(known_drivers())} (default robosuite; mock is a numpy arm for dry runs)",
    )
    p.add_argument("--task", default="Lift", help="robosuite task (default Lift; ignored by the mock arm)")
    p.add_argument("--hz", type=float, default=20.0, help="control rate in ticks per second (default 20)")
    p.add_argument(
        "--strategy",
        choices=[m.value for m in MergeStrategy],
        default=MergeStrategy.REPLACE.value,
        help="how a new chunk merges with the queue: replace; temporal_ensemble (ACT, infers every tick); "
        "rti (warm starts); rtc (inpainting toward the frozen prefix). rti and rtc need a denoising policy "
        "(default replace)",
    )
    p.add_argument(
        "--inject-latency-ms",
        type=float,
        default=0.0,
        help="artificial latency added to every inference call, in the inference thread (default 0)",
    )
    p.add_argument(
        "--ticks",
        type=int,
        default=None,
        help="end after N control periods, i.e. after tick index N-1 (ticks the loop skipped when over a period "
        f"late count; default: the episode's end on robosuite, {MOCK_TICKS} on the mock arm)",
    )
    p.add_argument("--seed", type=int, default=0, help="episode seed and the policy's noise seed (default 0)")
    p.add_argument(
        "--out", default=None, help=f"output directory, new or empty (default {RUN_ROOT}/<driver>_<task>_<time>)"
    )
    p.add_argument(
        "--video", action="store_true", help="record video.mp4 (robosuite only; rendering counts in each tick)"
    )
    p.add_argument("--video-camera", default="agentview", help="camera of the video (default agentview)")
    p.add_argument("--video-size", type=int, default=256, help="video frame size in pixels (default 256)")
    p.add_argument(
        "--n-action-steps",
        type=int,
        default=None,
        help="ticks between two requests' observations (default: the policy's Ta; 1 for temporal_ensemble)",
    )
    p.add_argument(
        "--chunk-deadline-ms",
        type=float,
        default=None,
        help="watchdog: hold and end when no fresh chunk came for this long (default: the time a chunk's "
        "actions last, kept actions / hz)",
    )
    p.add_argument(
        "--reading-deadline-ms",
        type=float,
        default=None,
        help="watchdog: hold and end when the driver gave no new frame for this long (default 5 ticks)",
    )
    p.add_argument(
        "--first-chunk-timeout-s", type=float, default=10.0, help="the first chunk must come within this (default 10)"
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up prediction before the loop")
    p.add_argument(
        "--priority",
        choices=("auto", "fifo", "nice", "none"),
        default="auto",
        help="scheduling priority of the loop: fifo (SCHED_FIFO loop thread, inference thread nice -10), nice "
        "(both nice -10), auto (the first the OS permits; needs CAP_SYS_NICE, e.g. root), none (default auto)",
    )
    p.add_argument(
        "--simulated-time",
        action="store_true",
        help="run on a simulated clock (robosuite or mock): inference inline, each chunk ready exactly "
        "--inject-latency-ms later, whatever the machine's load (reproducible sweeps, faster than real time)",
    )

    p.add_argument(
        "--profile",
        default=None,
        help="hardware profile in hardware/ (default the driver's: robosuite_panda, so101 for so101/so100, koch)",
    )
    p.add_argument(
        "--driver-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a driver option, repeatable (e.g. latency_s=0.002 or jitter_s=0.001 for the mock arm); an option "
        "the driver lacks is refused with the list of its options",
    )
    p.add_argument("--device", default=None, help="policy device (default: cuda if present, else cpu)")
    p.add_argument("--sampler", default=None, help="sampler override, if the policy supports it (e.g. ddim)")
    p.add_argument("--num-inference-steps", type=int, default=None, help="denoising steps override, if supported")
    p.add_argument(
        "--policy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any inference option of the policy, repeatable",
    )
    add_rtc_args(p)
    p.add_argument(
        "--rtc-schedule",
        choices=("exp", "linear", "ones", "zeros"),
        default="exp",
        help="rtc: the prefix weights' schedule (default exp, the paper's soft mask; zeros: hard masking)",
    )
    p.add_argument("--rti-steps", type=int, default=3, help="rti: sampler steps per warm-started chunk (default 3)")
    p.add_argument(
        "--rti-start-t", type=float, default=10.0, help="rti: start level as a training timestep (default 10)"
    )
    p.add_argument(
        "--rti-sigma-start",
        type=float,
        default=None,
        help="rti: start level as a noise level (views without timesteps)",
    )
    add_engine_args(p)
    p.set_defaults(func=_run)
    return p


def _check_args(args: argparse.Namespace) -> Path:
    """Everything that can be refused before a checkpoint is loaded or a simulator built; the out dir."""
    from robopolicy.control.drivers import driver_class

    driver_class(args.driver)  # ValueError naming the known drivers
    if not args.hz > 0:
        raise ValueError(f"--hz must be > 0, got {args.hz}")
    if args.ticks is not None and args.ticks < 1:
        raise ValueError(f"--ticks must be >= 1, got {args.ticks}")
    if args.inject_latency_ms < 0:
        raise ValueError(f"--inject-latency-ms must be >= 0, got {args.inject_latency_ms}")
    if args.video and args.driver != "robosuite":
        raise ValueError(f"--video needs --driver robosuite (driver {args.driver!r} renders nothing)")
    if args.driver == "robosuite":
        from robopolicy.envs.availability import require_sim
        from robopolicy.envs.robosuite_env import task_info, validate_video_camera

        require_sim("run --driver robosuite")
        task_info(args.task)  # ValueError naming the tasks
        if args.video:
            validate_video_camera(args.task, args.video_camera)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else RUN_ROOT / f"{args.driver}_{args.task}_{stamp}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty directory; choose a new one")
    return out


def _load_policy(args: argparse.Namespace) -> Any:
    import torch

    from robopolicy.eval.cli import engine_config
    from robopolicy.eval.runner import resolve_checkpoint
    from robopolicy.policy import Policy

    ckpt = resolve_checkpoint(args.checkpoint)
    policy = Policy.load(ckpt, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    engine = engine_config(args)
    if engine is not None:
        policy.set_engine(engine)
    return ckpt, policy


def _actor(args: argparse.Namespace, policy: Any, options: dict[str, Any]) -> Any:
    from robopolicy.inference.options import InferenceOptions
    from robopolicy.inference.rtc import RTCConfig
    from robopolicy.inference.rti import RTIConfig

    if args.strategy not in ("rti", "rtc"):
        return policy
    if not hasattr(policy, "denoiser_view"):
        raise ValueError(
            f"--strategy {args.strategy} needs a denoising policy (one with a denoiser view); "
            f"{policy.name!r} has none: use replace or temporal_ensemble"
        )
    return InferenceOptions(
        method=args.strategy,
        policy=options,
        rti=RTIConfig(steps=args.rti_steps, start_t=args.rti_start_t, sigma_start=args.rti_sigma_start),
        rtc=RTCConfig(
            schedule=args.rtc_schedule, max_guidance=args.rtc_max_guidance, mode=args.rtc_mode, steps=args.rtc_steps
        ),
    ).build(policy)


def _driver(args: argparse.Namespace, policy: Any, clock: Any = None) -> Any:
    from robopolicy.control.drivers import make_driver
    from robopolicy.types import IMAGE_PREFIX

    kwargs: dict[str, Any] = {} if args.profile is None else {"profile": args.profile}
    if clock is not None:
        kwargs.update(clock=clock.now, sleep=clock.sleep)
    fields = policy.config.obs_spec.fields
    if args.driver == "robosuite":
        images = [f for f in fields if f.key.startswith(IMAGE_PREFIX)]
        if not float(args.hz).is_integer():
            raise ValueError(f"--driver robosuite steps at a whole number of Hz, got --hz {args.hz}")
        kwargs.update(task=args.task, control_hz=int(args.hz), realtime=False, seed=args.seed)
        if images:
            kwargs.update(cameras=[f.key[len(IMAGE_PREFIX) :] for f in images], image_size=int(images[0].shape[0]))
    elif args.driver == "mock":
        shapes = {f.key: f.shape for f in fields}
        if "object" in shapes:
            kwargs["object_dim"] = int(shapes["object"][0])
        elif "state" in shapes:
            kwargs["object_dim"] = int(shapes["state"][0]) - 9  # eef_pos 3 + eef_quat 4 + gripper_qpos 2
        kwargs["seed"] = args.seed
    kwargs.update(key_values(args.driver_option, "--driver-option"))
    return make_driver(args.driver, **kwargs)


def _run(args: argparse.Namespace) -> int:
    from robopolicy.control.controller import Controller, ControllerConfig, SimulatedClock

    out = _check_args(args)
    sim = SimulatedClock() if args.simulated_time else None
    options = {"sampler": args.sampler, "num_inference_steps": args.num_inference_steps}
    options = {k: v for k, v in options.items() if v is not None}
    options.update(key_values(args.policy_option, "--policy-option"))
    ckpt, policy = _load_policy(args)
    actor = _actor(args, policy, options)
    driver = _driver(args, policy, sim)
    ms = lambda v: None if v is None else v / 1e3  # noqa: E731
    config = ControllerConfig(
        hz=args.hz,
        strategy=args.strategy,
        inject_latency_ms=args.inject_latency_ms,
        n_action_steps=args.n_action_steps,
        max_ticks=args.ticks if args.ticks is not None else (MOCK_TICKS if args.driver == "mock" else None),
        chunk_deadline_s=ms(args.chunk_deadline_ms),
        reading_deadline_s=ms(args.reading_deadline_ms),
        first_chunk_timeout_s=args.first_chunk_timeout_s,
        warmup=not args.no_warmup,
        seed=args.seed,
        priority=args.priority,
        simulated_time=args.simulated_time,
    )
    frames: list = []

    def record_frame(tick: int) -> None:
        frames.append(driver.env.render_frame(camera=args.video_camera, size=args.video_size))

    controller = Controller(
        actor,
        driver,
        config,
        options=options,
        telemetry_path=out / "telemetry.jsonl",
        meta={"checkpoint": str(ckpt), "task": args.task if args.driver == "robosuite" else None, "command": "run"},
        after_tick=record_frame if args.video else None,
        **({} if sim is None else {"clock": sim.now, "sleep": sim.sleep}),
    )
    out.mkdir(parents=True, exist_ok=True)
    if args.video:  # build the sim and its render context (a second or more) before the clock starts
        driver.connect()
        record_frame(-1)
    try:
        result = controller.run()
    finally:
        driver.disconnect()
    (out / "summary.json").write_text(json.dumps(result.summary, indent=2))
    written = [out / "telemetry.jsonl", out / "summary.json"]
    written.append(controller.telemetry.plot(out / "telemetry.png"))  # type: ignore[union-attr]
    if frames:
        from robopolicy.eval.video import write_mp4

        written.append(write_mp4(out / "video.mp4", frames, fps=int(round(args.hz))))
    print(format_summary(result.summary))
    print("wrote: " + ", ".join(str(p) for p in written))
    if result.end_reason == "interrupted":
        return 130
    return 1 if result.end_reason == "fault" else 0


def _f(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def format_summary(s: dict[str, Any]) -> str:
    """The telemetry summary as a few readable lines."""
    lat, body, inf, d = s["lateness_ms"], s["body_ms"], s["inference_ms"], s["delay_ticks"]
    lines = [
        f"end: {s['end_reason']} (success: {s['success']}) after {s['ticks']} ticks, "
        f"{_f(s['hz_measured'])} Hz measured of {_f(s['hz'], 'g')}",
        f"tick lateness ms: p50 {_f(lat['p50'], '.3f')}  p99 {_f(lat['p99'], '.3f')}  max {_f(lat['max'], '.3f')}; "
        f"loop body ms: p50 {_f(body['p50'], '.3f')}  p99 {_f(body['p99'], '.3f')}; "
        f"deadline misses {s['deadline_misses']}, skipped ticks {s['skipped_ticks']}",
        f"inference ms: p50 {_f(inf['p50'], '.1f')}  p95 {_f(inf['p95'], '.1f')}  max {_f(inf['max'], '.1f')}; "
        f"delay ticks p50 {_f(d['p50'], '.0f')} max {_f(d['max'], '.0f')}; chunks {s['chunks']}; "
        f"empty-queue ticks {s['empty_queue_ticks']}; dropped stale actions {s['dropped_stale_actions']}",
        f"chunk-boundary jumps: mean {_f(s['jump_mean'], '.3f')}  max {_f(s['jump_max'], '.3f')} ({s['jumps']}); "
        f"watchdog trips {s['watchdog_trips']}; e-stops {s['estops']}",
    ]
    if s.get("energy_mean") is not None:
        lines.append(f"policy energy: mean {s['energy_mean']:.4g}")
    if s.get("value_mean") is not None:
        lines.append(f"policy value: mean {s['value_mean']:.4g}")
    if s["faults"]:
        for f in s["faults"]:
            lines.append(
                f"FAULT {f['kind']} at tick {f['tick']}: {f['message']} "
                f"(fault to hold {_f(f['fault_to_hold_ms'], '.1f')} ms, hold {'ok' if f['hold_ok'] else 'FAILED: ' + str(f['hold_error'])})"
            )
    else:
        lines.append("faults: none")
    return "\n".join(lines)


__all__ = ["add_parser", "format_summary"]
