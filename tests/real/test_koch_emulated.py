"""lerobot's unmodified Koch follower on the emulated Dynamixel bus (the ``real`` env: ``make
real-env``, then ``make real-test``; skipped where lerobot or dynamixel_sdk is not importable).

Our ``koch`` driver (``hardware/koch.yaml``) builds lerobot's ``KochFollower`` on the emulator's pty
(XL430-W250 on ids 1-2, XL330-M288 on 3-6), connects with ``calibrate=False`` from a calibration
file written here in lerobot's format (the servos start uncalibrated, so the file is written to
them, with torque off: the EEPROM is locked otherwise), reads, and writes through our safety
filter. The controller then drives it while bus faults are injected; each ends the run with a
fault and the arm holding.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lerobot")
pytest.importorskip("dynamixel_sdk")

import tests.fixture_policy as fixture  # noqa: E402
from robopolicy.control.controller import Controller, ControllerConfig  # noqa: E402
from robopolicy.control.drivers import make_driver  # noqa: E402
from robopolicy.control.emulator.dynamixel import KOCH_MODELS, DynamixelBusProcess, Fault  # noqa: E402
from robopolicy.control.profile import load_profile  # noqa: E402
from robopolicy.control.safety import SafetyFilter  # noqa: E402
from robopolicy.types import FieldSpec, ObservationSpec  # noqa: E402

pytestmark = [pytest.mark.real]

MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
OFFSETS = (-300, 150, 0, 1420, -60, 10)  # homing offsets the calibration writes (Present = actual + offset)
# lerobot's Koch calibration: pan and wrist roll a full turn, the others their recorded range
RANGES = [(0, 4095), (900, 3196), (900, 3196), (900, 3196), (0, 4095), (2000, 3000)]
MID = [(lo + hi) / 2 for lo, hi in RANGES]
START_DEG = (5.0, -20.0, 30.0, 0.0, 10.0)
START_GRIP = 20.0


def deg_to_raw(i: int, deg: float) -> float:
    """lerobot's DEGREES normalisation inverted: the Present_Position of ``deg`` on motor ``i``."""
    return deg * 4095 / 360 + MID[i]


def start_positions() -> dict[int, float]:
    """Encoder positions (before the homing offset) of the start pose."""
    pos = {i + 1: deg_to_raw(i, d) - OFFSETS[i] for i, d in enumerate(START_DEG)}
    lo, hi = RANGES[5]
    pos[6] = lo + START_GRIP / 100 * (hi - lo) - OFFSETS[5]
    return pos


def write_calibration(directory: Path, robot_id: str = "follower") -> Path:
    """A calibration file as ``lerobot-calibrate`` writes it (draccus JSON of MotorCalibration)."""
    directory.mkdir(parents=True, exist_ok=True)
    cal = {
        m: {"id": i + 1, "drive_mode": 0, "homing_offset": OFFSETS[i], "range_min": lo, "range_max": hi}
        for i, (m, (lo, hi)) in enumerate(zip(MOTORS, RANGES))
    }
    path = directory / f"{robot_id}.json"
    path.write_text(json.dumps(cal, indent=4))
    return path


def arm_rad(emu: DynamixelBusProcess) -> np.ndarray:
    """The emulated arm's body joints [rad] as lerobot would read them."""
    return np.radians([(emu.servo(i + 1).present - MID[i]) * 360 / 4095 for i in range(5)])


@pytest.fixture
def emu():
    with DynamixelBusProcess(start_positions(), models=KOCH_MODELS) as bus:
        yield bus


@pytest.fixture
def calib(tmp_path) -> Path:
    return write_calibration(tmp_path / "calibration")


def koch(emu, calib, **kw):
    return make_driver("koch", port=emu.port, robot_id="follower", calibration_dir=calib.parent, **kw)


def test_connect_calibrates_from_the_file_and_reads(emu, calib):
    assert emu.servo(1).homing_offset == 0  # factory state: not calibrated
    drv = koch(emu, calib)
    drv.connect()
    try:
        assert drv.calibration_written
        for i in range(6):
            s = emu.servo(i + 1)
            assert (s.homing_offset, s.get("Min_Position_Limit"), s.get("Max_Position_Limit")) == (
                OFFSETS[i],
                *RANGES[i],
            )
            # lerobot's configure(): extended position (body), current-based position (gripper)
            assert s.torque and s.get("Return_Delay_Time") == 0
            assert s.get("Operating_Mode") == (5 if i == 5 else 4)
        elbow = emu.servo(3)
        assert (elbow.get("Position_P_Gain"), elbow.get("Position_I_Gain"), elbow.get("Position_D_Gain")) == (
            1500,
            0,
            600,
        )
        r = drv.read()
        np.testing.assert_allclose(r.obs["joint_pos"], np.radians(START_DEG), atol=np.radians(0.1))
        assert r.obs["gripper_pos"][0] == pytest.approx(START_GRIP, abs=0.1)
        np.testing.assert_allclose(r.obs["state"][:5], r.obs["joint_pos"])
    finally:
        drv.disconnect()
    again = koch(emu, calib)  # the servos now agree with the file: nothing is written
    again.connect()
    assert not again.calibration_written
    again.disconnect()


def test_writes_through_the_safety_filter_move_the_arm(emu, calib):
    profile = load_profile("koch")
    drv = koch(emu, calib)
    safety = SafetyFilter(profile)
    target = np.array([0.6, 2.0, -0.3, 0.2, 0.0, 70.0])  # shoulder_lift 2.0 rad is past its 1.5708 limit
    kinds: set[str] = set()
    with drv:
        first = drv.read()
        safe, events = safety.filter(target, first)
        kinds |= {e.kind for e in events}
        np.testing.assert_allclose(safe[:5] - first.obs["joint_pos"], [0.1, 0.1, -0.1, 0.1, -0.15], atol=1e-6)
        drv.write(safe)
        for _ in range(60):  # 2 s at 30 Hz
            time.sleep(1 / 30)
            safe, events = safety.filter(target, drv.read())
            kinds |= {e.kind for e in events}
            drv.write(safe)
        time.sleep(0.3)
        q = arm_rad(emu)
    assert {"action_limit", "max_delta", "gripper_rate"} <= kinds
    expect = target[:5].copy()
    expect[1] = profile.joints.upper[1]  # clamped to the joint limit
    np.testing.assert_allclose(q, expect, atol=np.radians(0.2))  # lerobot writes whole ticks
    lo, hi = RANGES[5]
    assert (emu.servo(6).present - lo) / (hi - lo) * 100 == pytest.approx(70.0, abs=0.2)


def constant_policy(target: np.ndarray) -> fixture.MLPPolicy:
    """A policy whose every action is ``target`` (the MLP fixture, last layer zeroed)."""
    spec = load_profile("koch").action_spec
    cfg = fixture.MLPConfig(
        ObservationSpec((FieldSpec("state", (6,)),)), spec, horizon=8, n_obs_steps=2, n_action_steps=4, hidden=8
    )
    torch.manual_seed(0)
    policy = fixture.MLPPolicy(cfg)
    rng = np.random.default_rng(0)
    action = np.tile(target, (64, 1))
    action[::2] += 0.05
    action[1::2] -= 0.05
    policy.fit_normalizer({"state": rng.normal(size=(64, 6)), "action": action})
    with torch.no_grad():
        policy.net[-1].weight.zero_()
        policy.net[-1].bias.zero_()
    return policy.eval()


TARGET = np.array([0.8, -0.1, 0.9, 0.3, 0.4, 60.0])
FAULTS = {
    # fault: (kind, servo, injected at tick, kind the controller reports)
    "no_reply": (Fault.NO_REPLY, 3, 10, "read_timeout"),
    "bad_crc": (Fault.BAD_CHECKSUM, 2, 10, "driver_fault"),
    "stops_answering": (Fault.STOP_AFTER, 4, 10, "read_timeout"),
    "stuck_joint": (Fault.STUCK, 1, 2, "driver_fault"),
}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(FAULTS))
def test_bus_faults_end_in_a_fault_and_a_hold(name, emu, calib, tmp_path):
    kind, servo, at, reported = FAULTS[name]
    drv = koch(emu, calib)

    def inject(tick: int) -> None:
        if tick == at:
            emu.inject(servo, kind, after=5)

    ctl = Controller(
        constant_policy(TARGET),
        drv,
        ControllerConfig(hz=30.0, max_ticks=150, first_chunk_timeout_s=5.0, reading_deadline_s=1.0),
        telemetry_path=tmp_path / "telemetry.jsonl",
        after_tick=inject,
    )
    drv.connect()
    try:
        result = ctl.run()
        assert result.end_reason == "fault", result
        [fault] = result.faults
        assert fault["kind"] == reported, fault
        assert fault["hold_ok"], fault
        assert fault["tick"] > at
        assert ctl.safety.counters["max_delta"] > 0  # the far target was rate-limited on the way
        live = [i for i in range(1, 7) if i != servo]
        before = {i: emu.servo(i).present for i in live}
        time.sleep(0.3)
        for i in live:  # holding: the answering servos' goals are where they are, and they stay there
            s = emu.servo(i)
            assert s.torque and abs(s.present - before[i]) <= 1 and abs(s.goal - s.present) <= 1, (i, s.goal, s.present)
    finally:
        drv.disconnect()


def test_an_uninterrupted_run_reaches_the_target(emu, calib, tmp_path):
    drv = koch(emu, calib)
    ctl = Controller(
        constant_policy(TARGET),
        drv,
        ControllerConfig(hz=30.0, max_ticks=60, first_chunk_timeout_s=5.0, reading_deadline_s=1.0),
        telemetry_path=tmp_path / "telemetry.jsonl",
    )
    result = ctl.run()  # connects, and disconnects at the end
    assert result.end_reason == "max_ticks" and result.faults == []
    np.testing.assert_allclose(arm_rad(emu), TARGET[:5], atol=np.radians(0.5))
    assert all(emu.servo(i).torque for i in range(1, 7))  # our default: torque stays on
