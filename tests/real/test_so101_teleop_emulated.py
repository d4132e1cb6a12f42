"""Teleoperation on the emulated SO-101 (the ``real`` env): a leader arm on a second emulated bus,
whose servos follow a scripted trajectory with torque off (a hand moving it), leads the follower
through lerobot's unmodified ``so101_leader`` and ``so101_follower``; the recorder stores two
episodes (a third is discarded) in the simulator recorder's store format."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("lerobot")
pytest.importorskip("scservo_sdk")

from robopolicy.control.drivers import make_driver  # noqa: E402
from robopolicy.control.emulator.feetech import FeetechBusProcess  # noqa: E402
from robopolicy.control.profile import load_profile  # noqa: E402
from robopolicy.control.teleop import LerobotLeader, TimedControls, record_arm_teleop  # noqa: E402
from robopolicy.data.store import EpisodeStore  # noqa: E402
from robopolicy.envs.teleop import ControlEvent  # noqa: E402
from tests.real.test_so101_emulated import MID, OFFSETS, RANGES, start_positions, write_calibration  # noqa: E402

pytestmark = [pytest.mark.real]

AMPLITUDE_DEG = (25.0, 20.0, -30.0, 15.0, 40.0)
GRIP = (30.0, 40.0)  # the leader's gripper sweeps 30 +- 40 -> clipped to 0..100 by lerobot's range


def leader_deg(t: float) -> np.ndarray:
    """The hand's trajectory: body joints [deg] and the gripper (0..100) at ``t`` seconds."""
    s = math.sin(2 * math.pi * 0.5 * t)
    return np.array([a * s for a in AMPLITUDE_DEG] + [min(100.0, max(0.0, GRIP[0] + GRIP[1] * s))])


def leader_script(t: float) -> dict[int, float]:
    """Encoder positions (before the homing offset) of the leader's servos at ``t``."""
    q = leader_deg(t)
    out = {i + 1: q[i] * 4095 / 360 + MID[i] + OFFSETS[i] for i in range(5)}
    lo, hi = RANGES[5]
    out[6] = lo + q[5] / 100 * (hi - lo) + OFFSETS[5]
    return out


def test_teleop_records_two_episodes_in_the_store_format(tmp_path):
    calib = tmp_path / "calibration"
    write_calibration(calib, "follower")
    write_calibration(calib, "leader")
    S, E = ControlEvent.START, ControlEvent
    controls = TimedControls(
        [(3, S), (33, E.SAVE), (36, S), (46, E.DISCARD), (50, S), (80, E.SAVE), (84, E.QUIT), (90, E.START)]
    )
    lines: list[str] = []
    with (
        FeetechBusProcess(start_positions()) as follower_bus,
        FeetechBusProcess(start_positions(), script=leader_script) as lead,
    ):
        driver = make_driver("so101", port=follower_bus.port, robot_id="follower", calibration_dir=calib)
        leader = LerobotLeader("so101", port=lead.port, teleop_id="leader", calibration_dir=calib)
        report = record_arm_teleop(
            driver,
            leader,
            controls,
            tmp_path / "so101.zarr",
            device_name="so101_leader",
            task="wave",
            operator="test",
            log=lines.append,
        )
        assert not any(lead.servo(i).torque for i in range(1, 7))  # the leader stayed free to move
        assert all(follower_bus.servo(i).torque for i in range(1, 7))  # the follower holds
    assert leader.calibration_written and driver.calibration_written
    assert (report.saved, report.discarded, report.steps) == (2, 1, 60), lines
    profile = load_profile("so101")
    with EpisodeStore.open(tmp_path / "so101.zarr") as store:
        assert store.n_episodes == 2
        assert store.action_spec == profile.action_spec and store.attrs["control_rate"] == 30.0
        for k in range(2):
            ep = store.episode(k)
            assert set(ep) >= {"joint_pos", "gripper_pos", "state", "action"}
            assert ep["action"].shape == (30, 6) and ep["state"].shape == (30, 6)
            meta = store.episode_metadata(k)
            assert meta["teleop_device"] == "so101_leader" and meta["task"] == "wave" and meta["episode"] == k
            # the actions are the leader's joints (within the joint limits), and the follower follows them
            a = ep["action"]
            assert np.all(a[:, :5] >= np.array(profile.joints.lower) - 1e-6)
            assert np.all(a[:, :5] <= np.array(profile.joints.upper) + 1e-6)
            assert np.ptp(a[:, 0]) > np.radians(10)  # the leader moved during the episode
            # once caught up with the leader, the follower reads two ticks later what it was sent
            lag = np.abs(ep["state"][12:, :5] - a[10:-2, :5]).max()
            assert lag < np.radians(5), np.degrees(lag)
