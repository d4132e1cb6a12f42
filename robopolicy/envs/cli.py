"""``robopolicy demos``: generate scripted-expert demos, record teleoperation.

    robopolicy demos generate --task Lift --episodes 100 --out datasets/lift.zarr \\
        [--cameras agentview,robot0_eye_in_hand] [--workers 2] [--seed 0] [--noise 0.05] \\
        [--keep-failed] [--overwrite | --append]
    robopolicy demos record --task Lift --device keyboard --out datasets/lift_teleop.zarr [--cameras ...]
    robopolicy demos record --driver so101 --driver-option port=/dev/ttyACM1 \
        --teleop so101_leader --teleop-option port=/dev/ttyACM0 --out datasets/so101.zarr   (real env)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robopolicy.envs.experts import EXPERTS
from robopolicy.envs.robosuite_env import TASKS


def _cameras(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demos`` command group (``generate``, ``record``)."""
    p = subparsers.add_parser("demos", help="generate scripted demos or record teleoperation into a Zarr store")
    sub = p.add_subparsers(dest="demos_command", metavar="SUBCOMMAND")
    sub.required = True

    g = sub.add_parser(
        "generate",
        help="record scripted-expert demos (robosuite) into a new store, or append to one",
        description="Exit codes: 0 all requested demos recorded; 1 the attempt cap ran out first; "
        "2 bad arguments or output path (nothing written); 130 interrupted by Ctrl-C (finished episodes kept, "
        "continue with --append; an interrupted --overwrite leaves the old store untouched).",
    )
    g.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)} (experts: {', '.join(EXPERTS)})")
    g.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="number of successful demos to record (with --append: to add; default there: what the store's "
        "generation still lacks)",
    )
    g.add_argument("--out", required=True, help="output store directory (e.g. datasets/lift.zarr)")
    g.add_argument("--cameras", type=_cameras, default=(), help="comma-separated camera names to record as images")
    g.add_argument("--image-size", type=int, default=84, help="camera image size in pixels (default 84)")
    g.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        help="first env seed; attempt i uses seed+i (default 0; with --append: after every seed the store used)",
    )
    g.add_argument(
        "--noise", type=float, default=0.05, help="expert noise scale: action std, waypoint std = noise/10 m (0.05)"
    )
    g.add_argument(
        "--variant",
        default=None,
        help="expert variant: Lift place4 (put the cube down on one of four spots: several outcomes, for goal suites)",
    )
    g.add_argument("--max-steps", type=int, default=None, help="episode step limit (default: the task's)")
    g.add_argument("--max-attempts", type=int, default=None, help="attempt cap (default 2*episodes+20)")
    g.add_argument("--keep-failed", action="store_true", help="also store failed attempts, flagged success=false")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it is an episode store (or an empty directory); the old store is kept until "
        "the new one is complete",
    )
    mode.add_argument("--append", action="store_true", help="add demos to the existing store --out (same task/cameras)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=_generate)

    r = sub.add_parser(
        "record",
        help="record teleoperated demos: robosuite Keyboard / SpaceMouse, or a real arm led by a lerobot "
        "leader arm (--driver, --teleop); needs a display for the keys",
        description="Keys: n = new episode, Enter = save, Backspace = discard, Esc = quit. "
        "Appends to --out if it exists. Simulator: --task and --device. Real arm (the real env, "
        "`make real-env`): --driver (so101, so100, koch, lerobot) with --driver-option port=... "
        "[robot_id=... calibration_dir=...], and --teleop (default the profile's leader) with "
        "--teleop-option port=... [teleop_id=... calibration_dir=...].",
    )
    r.add_argument("--task", default=None, help=f"simulator: one of {', '.join(TASKS)}; real arm: the task's text")
    r.add_argument("--device", default=None, choices=("keyboard", "spacemouse"), help="simulator input device")
    r.add_argument("--driver", default=None, help="real arm: a lerobot driver (so101, so100, koch, lerobot)")
    r.add_argument("--profile", default=None, help="real arm: hardware profile (default the driver's)")
    r.add_argument(
        "--driver-option", action="append", default=[], metavar="KEY=VALUE", help="real arm: a driver option"
    )
    r.add_argument("--teleop", default=None, help="real arm: lerobot leader type (default the profile's)")
    r.add_argument(
        "--teleop-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="real arm: a leader option (port, teleop_id, calibration_dir)",
    )
    r.add_argument("--max-episodes", type=int, default=None, help="stop after this many saved episodes")
    r.add_argument("--out", required=True, help="store directory (created, or appended to)")
    r.add_argument("--cameras", type=_cameras, default=(), help="comma-separated camera names to record")
    r.add_argument("--image-size", type=int, default=84)
    r.add_argument("--seed", type=int, default=0, help="env seed of the first episode")
    r.add_argument("--operator", default="", help="operator name stored in the episode metadata")
    r.add_argument("--pos-sensitivity", type=float, default=1.0)
    r.add_argument("--rot-sensitivity", type=float, default=1.0)
    r.set_defaults(func=_record)


def _episodes_to_append(out: str) -> int:
    """What the store's recorded generation still lacks (``--append`` without ``--episodes``)."""
    from robopolicy.data.store import EpisodeStore
    from robopolicy.outputs import is_episode_store

    if not is_episode_store(Path(out)):
        raise ValueError(f"--append: {out} is not an episode store")
    with EpisodeStore.open(out, mode="r") as store:
        gen = store.attrs.get("generation") or {}
    missing = int(gen.get("requested", 0)) - int(gen.get("n_success", 0))
    if missing < 1:
        raise ValueError(f"--append: {out} records no unfinished generation; pass --episodes N to add N demos")
    return missing


def _generate(args: argparse.Namespace) -> int:
    from robopolicy.envs.availability import require_sim
    from robopolicy.envs.generate import generate_demos

    require_sim("demos generate")
    if args.episodes is None:
        if not args.append:
            raise ValueError("--episodes is required (except with --append on an unfinished generation)")
        args.episodes = _episodes_to_append(args.out)
    report = generate_demos(
        args.task,
        args.episodes,
        args.out,
        cameras=args.cameras,
        workers=args.workers,
        seed=args.seed,
        noise=args.noise,
        keep_failed=args.keep_failed,
        overwrite=args.overwrite,
        append=args.append,
        progress=not args.no_progress,
        image_size=args.image_size,
        max_steps=args.max_steps,
        max_attempts=args.max_attempts,
        variant=args.variant,
    )
    print(json.dumps(report.to_dict()))
    if report.interrupted:
        kept = "the old store is unchanged" if args.overwrite else f"{report.n_written} new episodes kept in {args.out}"
        hint = (
            ""
            if args.overwrite
            else f"; continue with: robopolicy demos generate --task {args.task} --append --out {args.out}"
        )
        print(f"interrupted: {kept}{hint}", file=sys.stderr)
        return 130
    if not report.complete:
        print(
            f"warning: only {report.n_success}/{args.episodes} successful demos after {report.n_attempts} attempts",
        )
        return 1
    return 0


def _record_arm(args: argparse.Namespace) -> int:
    from robopolicy.config import key_values
    from robopolicy.control.drivers import make_driver
    from robopolicy.control.teleop import KEYS_HELP, LerobotLeader, record_arm_teleop
    from robopolicy.envs.teleop import DeviceUnavailableError, KeyboardControls

    if args.device is not None:
        raise ValueError("--device is for the simulator; a real arm is led by --teleop")
    kwargs = key_values(args.driver_option, "--driver-option")
    if args.profile is not None:
        kwargs["profile"] = args.profile
    driver = make_driver(args.driver, **kwargs)
    topts = key_values(args.teleop_option, "--teleop-option")
    unknown = sorted(set(topts) - {"port", "teleop_id", "calibration_dir"})
    if unknown:
        raise ValueError(f"--teleop-option: unknown {unknown}; options: port, teleop_id, calibration_dir")
    leader = LerobotLeader(driver.profile, args.teleop, **topts)
    try:
        controls = KeyboardControls()
    except DeviceUnavailableError as e:
        raise ValueError(str(e)) from None
    try:
        print(KEYS_HELP)
        report = record_arm_teleop(
            driver,
            leader,
            controls,
            args.out,
            device_name=leader.teleop_type,
            task=args.task or "",
            operator=args.operator,
            max_episodes=args.max_episodes,
        )
    finally:
        controls.close()
    print(json.dumps(report.__dict__))
    return 0


def _record(args: argparse.Namespace) -> int:
    from robopolicy.envs.availability import require_sim
    from robopolicy.envs.robosuite_env import RobosuiteEnv, task_info, validate_cameras
    from robopolicy.envs.teleop import KEYS_HELP, DeviceUnavailableError, KeyboardControls, make_device, record_teleop
    from robopolicy.outputs import is_episode_store

    out = Path(args.out)
    if out.exists() and not is_episode_store(out):
        kind = "a file" if not out.is_dir() else "a directory that is not an episode store"
        raise ValueError(f"--out {out} is {kind}; record into a new path or an existing store")
    if args.driver is not None:
        return _record_arm(args)
    if args.teleop is not None or args.driver_option or args.teleop_option:
        raise ValueError("--teleop, --driver-option and --teleop-option need --driver (a real arm)")
    if args.task is None or args.device is None:
        raise ValueError("the simulator needs --task and --device (or --driver and --teleop for a real arm)")
    require_sim("demos record")
    task_info(args.task)
    validate_cameras(args.task, args.cameras)
    # device errors are reported as ValueError: robopolicy.cli prints them as `error: ...`, exit 2
    try:
        controls = KeyboardControls()
    except DeviceUnavailableError as e:
        raise ValueError(str(e)) from None
    env = RobosuiteEnv(args.task, cameras=args.cameras, image_size=args.image_size, has_renderer=True)
    try:
        device = make_device(args.device, env, args.pos_sensitivity, args.rot_sensitivity)
        print(KEYS_HELP)
        report = record_teleop(
            env, device, controls, args.out, device_name=args.device, seed=args.seed, operator=args.operator
        )
    except DeviceUnavailableError as e:
        raise ValueError(str(e)) from None
    finally:
        controls.close()
        env.close()
    print(json.dumps(report.__dict__))
    return 0
