"""``robopolicy emulate-arm so101|koch``: an emulated arm for the daemon, the recorder and ``robopolicy run``.

It serves an emulated servo bus on a pty: Feetech for the SO-101
(:mod:`robopolicy.control.emulator.feetech`), Dynamixel for the Koch
(:mod:`robopolicy.control.emulator.dynamixel`). It links the pty to a stable path (``--link``,
which ``real/so101_emulated.yaml`` names as the arm's port), writes a matching lerobot
calibration file, and serves until Ctrl-C or SIGTERM::

    robopolicy emulate-arm so101                      # follower at /tmp/robopolicy-so101
    robopolicy emulate-arm so101 --leader             # a leader arm too, at /tmp/robopolicy-so101-leader,
                                                      # its joints waving as if moved by hand
    robopolicy emulate-arm koch                       # Koch follower at /tmp/robopolicy-koch (no leader)
    .venv-real/bin/robopolicy daemon --config real/so101_emulated.yaml
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any

SO101_MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
SO101_RANGES = [(798, 3298)] * 4 + [(0, 4095), (1800, 2800)]
"""Calibrated (range_min, range_max) per motor: the body joints +-110 deg around mid-range."""


def so101_calibration() -> dict[str, dict[str, int]]:
    """A lerobot calibration (``MotorCalibration`` fields per motor) for the emulated SO-101."""
    return {
        m: {"id": i + 1, "drive_mode": 0, "homing_offset": 0, "range_min": lo, "range_max": hi}
        for i, (m, (lo, hi)) in enumerate(zip(SO101_MOTORS, SO101_RANGES))
    }


def so101_positions(body_deg: tuple[float, ...] = (0.0,) * 5, gripper: float = 20.0) -> dict[int, float]:
    """Encoder positions of a pose: body joints [deg from mid-range] and the gripper (0..100)."""
    pos = {i + 1: (lo + hi) / 2 + d * 4095 / 360 for i, ((lo, hi), d) in enumerate(zip(SO101_RANGES, body_deg))}
    lo, hi = SO101_RANGES[5]
    pos[6] = lo + gripper / 100 * (hi - lo)
    return pos


KOCH_RANGES = [(0, 4095), (900, 3196), (900, 3196), (900, 3196), (0, 4095), (2000, 3000)]
"""Calibrated (range_min, range_max) per Koch motor: pan and wrist roll a full turn (as
lerobot's Koch calibration records them), the flex joints +-101 deg around mid-range."""


def koch_calibration() -> dict[str, dict[str, int]]:
    """A lerobot calibration for the emulated Koch follower (homing offsets 0)."""
    return {
        m: {"id": i + 1, "drive_mode": 0, "homing_offset": 0, "range_min": lo, "range_max": hi}
        for i, (m, (lo, hi)) in enumerate(zip(SO101_MOTORS, KOCH_RANGES))
    }


def koch_positions(body_deg: tuple[float, ...] = (0.0,) * 5, gripper: float = 20.0) -> dict[int, float]:
    """Encoder positions of a Koch pose: body joints [deg from mid-range] and the gripper (0..100)."""
    pos = {i + 1: (lo + hi) / 2 + d * 4095 / 360 for i, ((lo, hi), d) in enumerate(zip(KOCH_RANGES, body_deg))}
    lo, hi = KOCH_RANGES[5]
    pos[6] = lo + gripper / 100 * (hi - lo)
    return pos


def waving_leader(t: float) -> dict[int, float]:
    """A leader arm moved by hand: every joint waves at 0.25 Hz."""
    s = math.sin(2 * math.pi * 0.25 * t)
    return so101_positions((30 * s, 20 * s, -25 * s, 15 * s, 40 * s), 40 + 30 * s)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "emulate-arm",
        help="serve an emulated SO-101 or Koch (servo bus on a pty) for trying the daemon and recorder without hardware",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("arm", choices=["so101", "koch"], help="the arm to emulate")
    p.add_argument("--link", help="symlink to the follower's pty (its port); default /tmp/robopolicy-ARM")
    p.add_argument("--leader", action="store_true", help="also serve a waving leader arm at LINK-leader (so101)")
    p.add_argument(
        "--calibration-dir",
        help="where the lerobot calibration files (follower.json, leader.json) are written; "
        "default ~/.cache/robopolicy/emulated_ARM",
    )
    p.set_defaults(func=run)


def _link(target: str, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if not link.is_symlink():
            raise ValueError(f"--link {link} exists and is not a symlink; choose another path")
        link.unlink()
    link.symlink_to(target)


def _buses(arm: str, leader: bool) -> tuple[list[Any], dict[str, dict[str, int]]]:
    """The started buses (follower, then leader) and the calibration of ``arm``."""
    rest = (5.0, -20.0, 30.0, 0.0, 10.0)
    if arm == "koch":
        from robopolicy.control.emulator.dynamixel import KOCH_MODELS, DynamixelBus

        if leader:
            raise ValueError("emulate-arm koch: no --leader (the koch profile has no teleoperator)")
        return [DynamixelBus(koch_positions(rest), models=KOCH_MODELS).start()], koch_calibration()
    from robopolicy.control.emulator.feetech import FeetechBus

    buses = [FeetechBus(so101_positions(rest)).start()]
    if leader:
        buses.append(FeetechBus(so101_positions(), script=waving_leader).start())
    return buses, so101_calibration()


def run(args: argparse.Namespace) -> int:
    base = args.link or f"/tmp/robopolicy-{args.arm}"
    calib = Path(args.calibration_dir or f"~/.cache/robopolicy/emulated_{args.arm}").expanduser()
    buses, calibration = _buses(args.arm, args.leader)
    calib.mkdir(parents=True, exist_ok=True)
    for who in ("follower", "leader") if args.leader else ("follower",):
        (calib / f"{who}.json").write_text(json.dumps(calibration, indent=4))
    links = [Path(base)] + ([Path(base + "-leader")] if args.leader else [])
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        for bus, link in zip(buses, links):
            _link(bus.port, link)
            print(
                f"emulated {args.arm} {'leader' if link.name.endswith('leader') else 'follower'}: {link} -> {bus.port}"
            )
        print(f"calibration files: {calib}/follower.json" + (f", {calib}/leader.json" if args.leader else ""))
        print("serving; Ctrl-C to stop", flush=True)
        stop.wait()
    finally:
        for bus, link in zip(buses, links):
            bus.stop()
            if link.is_symlink() and os.readlink(link) == bus.port:
                link.unlink()
    return 0


__all__ = [
    "KOCH_RANGES",
    "SO101_MOTORS",
    "add_parser",
    "koch_calibration",
    "koch_positions",
    "so101_calibration",
    "so101_positions",
    "waving_leader",
]
