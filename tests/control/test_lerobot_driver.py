"""The lerobot driver without lerobot: a stand-in robot with lerobot's interface checks the names
and units, the hold at the present position, the error mapping, the calibration refusal, and
that the main env says where lerobot lives. (With lerobot and the emulated bus:
tests/real/test_so101_emulated.py.)"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from robopolicy.control.drivers import (
    Disconnected,
    FaultDetected,
    ReadTimeout,
    driver_class,
    known_drivers,
    make_driver,
)
from robopolicy.control.drivers.lerobot import LerobotMissing
from tests.control.fakes import FakeClock

MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


class FakeBus:
    def __init__(self) -> None:
        self.present = dict.fromkeys(MOTORS, 0.0)
        self.goals: list[dict[str, float]] = []
        self.fail: Exception | None = None

    def sync_read(self, name: str) -> dict[str, float]:
        assert name == "Present_Position"
        if self.fail is not None:
            raise self.fail
        return dict(self.present)

    def disable_torque(self) -> None:
        pass

    def sync_write(self, name: str, values: dict[str, float]) -> None:
        assert name == "Goal_Position"
        self.goals.append(dict(values))


class FakeRobot:
    """lerobot's Robot interface as the SO follower implements it (degrees, gripper 0..100)."""

    def __init__(self, calibration_fpath, calibrated: bool = True) -> None:
        self.calibration_fpath = calibration_fpath
        self.calibration = {"shoulder_pan": object()} if calibration_fpath.is_file() else {}
        self.bus = FakeBus()
        self.is_connected = False
        self.is_calibrated = calibrated
        self.sent: list[dict[str, float]] = []
        self.frame = np.full((4, 6, 3), 7, np.uint8)

    def connect(self, calibrate: bool = True) -> None:
        assert calibrate is False
        self.is_connected = True

    def get_observation(self) -> dict:
        return {f"{m}.pos": v for m, v in self.bus.sync_read("Present_Position").items()} | {"top": self.frame}

    def send_action(self, action: dict[str, float]) -> dict[str, float]:
        self.sent.append(dict(action))
        return action

    def disconnect(self) -> None:
        self.is_connected = False


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "arm.json"
    path.write_text(json.dumps({"shoulder_pan": {"id": 1}}))
    return path


def _driver(robot, **kw):
    return make_driver("so101", robot=robot, clock=FakeClock(), **kw)


def test_registered_and_lerobot_is_lazy():
    assert {"so101", "so100", "koch", "lerobot"} <= set(known_drivers())
    assert driver_class("so100").default_robot_type == "so100_follower"
    drv = make_driver("so101", port="/dev/null")  # building needs no lerobot
    assert drv.action_spec.names == (*MOTORS[:5], "gripper")
    assert drv.observation_shapes()["state"][0] == (6,)
    with pytest.raises(ValueError, match="profile= is needed"):
        make_driver("lerobot", port="/dev/null")
    with pytest.raises(ValueError, match="joint action space and a lerobot map"):
        make_driver("so101", port="/dev/null", profile="robosuite_panda")
    with pytest.raises(ValueError, match="port= is needed"):
        make_driver("koch")
    if importlib.util.find_spec("lerobot") is None:
        with pytest.raises(LerobotMissing, match="make real-env"):
            drv.connect()


def test_read_converts_degrees_to_radians_and_keeps_the_gripper(calib):
    robot = FakeRobot(calib)
    drv = _driver(robot, cameras={"top": {"type": "opencv", "width": 6, "height": 4}})
    drv.connect()
    robot.bus.present.update(shoulder_pan=90.0, elbow_flex=-45.0, gripper=25.0)
    r = drv.read()
    np.testing.assert_allclose(r.obs["joint_pos"], [np.pi / 2, 0, -np.pi / 4, 0, 0], rtol=1e-6)
    assert r.obs["gripper_pos"].tolist() == [25.0] and r.obs["state"].dtype == np.float32
    np.testing.assert_allclose(r.obs["state"], [*r.obs["joint_pos"], 25.0])
    assert r.obs["image.top"].shape == (4, 6, 3) and r.obs["image.top"].dtype == np.uint8
    assert set(r.obs) == set(drv.observation_shapes()) and r.seq == 1 and drv.read().seq == 2


def test_write_sends_degrees_and_lerobot_caps(calib):
    robot = FakeRobot(calib)
    drv = _driver(robot)
    drv.connect()
    drv.write([0.1, -0.2, 0.3, 0.0, np.pi, 40.0])  # wrist_roll pi is past its limit: clipped
    sent = robot.sent[-1]
    assert sent["shoulder_pan.pos"] == pytest.approx(np.degrees(0.1))
    assert sent["wrist_roll.pos"] == pytest.approx(np.degrees(2.84121))
    assert sent["gripper.pos"] == 40.0
    caps = drv.max_relative_target()  # 5 ticks of max_delta, in lerobot's units
    assert caps["shoulder_pan"] == pytest.approx(np.degrees(0.5)) and caps["gripper"] == pytest.approx(50.0)
    assert all(isinstance(v, float) for v in caps.values())


def test_hold_sends_the_present_position_with_the_last_gripper_command(calib):
    robot = FakeRobot(calib)
    drv = _driver(robot)
    drv.connect()
    robot.bus.present.update(shoulder_pan=10.0, gripper=5.0)
    drv.read()
    drv.write([0.5, 0, 0, 0, 0, 60.0])
    robot.bus.present.update(shoulder_pan=12.0)  # moving toward 28.6 deg
    drv.hold()
    goal = robot.bus.goals[-1]
    assert goal["shoulder_pan"] == pytest.approx(12.0) and goal["gripper"] == 60.0
    # the bus does not answer: hold on the newest reading
    robot.bus.fail = ConnectionError("Failed to sync read 'Present_Position'. There is no status packet!")
    drv.hold()
    assert robot.bus.goals[-1]["shoulder_pan"] == pytest.approx(10.0)


@pytest.mark.parametrize(
    "error, cls",
    [
        (ConnectionError("Failed to sync read ... [TxRxResult] There is no status packet!"), ReadTimeout),
        (ConnectionError("Failed to sync read ... [TxRxResult] Incorrect status packet!"), FaultDetected),
        (RuntimeError("Failed to read ... [RxPacketError] Overload error!"), FaultDetected),
        (OSError(5, "Input/output error"), Disconnected),
        (TimeoutError("Timed out waiting for frame"), ReadTimeout),
    ],
)
def test_errors_become_driver_errors(calib, error, cls):
    robot = FakeRobot(calib)
    drv = _driver(robot, retries=1)
    drv.connect()
    robot.bus.fail = error
    with pytest.raises(cls, match="so101: read"):
        drv.read()


def test_a_joint_that_does_not_follow_is_a_fault(calib):
    robot = FakeRobot(calib)
    drv = _driver(robot, tracking_tolerance=0.2, tracking_timeout_s=0.5)
    drv.connect()
    drv.write([0.5, 0, 0, 0, 0, 0.0])  # the pan stays at 0 (stuck)
    drv.read()
    drv._clock.sleep(0.4)
    drv.read()
    drv._clock.sleep(0.2)
    with pytest.raises(FaultDetected, match="joint shoulder_pan does not follow"):
        drv.read()
    drv.hold()  # holding where it is clears it
    drv.read()


def test_missing_calibration_is_refused(tmp_path):
    robot = FakeRobot(tmp_path / "none.json")
    drv = _driver(robot, robot_id="none")
    with pytest.raises(Disconnected, match="no calibration file at .*none.json.*lerobot-calibrate"):
        drv.connect()
    assert not robot.is_connected


def test_disconnect_is_idempotent_and_reads_need_a_connection(calib):
    robot = FakeRobot(calib)
    drv = _driver(robot)
    with pytest.raises(Disconnected):
        drv.read()
    drv.connect()
    drv.disconnect()
    drv.disconnect()
    assert not drv.connected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--teleop", "so101_leader"], "need --driver"),
        ([], "the simulator needs --task and --device"),
        (["--driver", "so101", "--device", "keyboard"], "--device is for the simulator"),
        (["--driver", "so101"], "port= is needed"),
        (["--driver", "so101", "--driver-option", "port=/dev/null", "--teleop-option", "baud=1"], "unknown ['baud']"),
    ],
)
def test_demos_record_refuses_bad_real_arm_arguments(argv, message, tmp_path, capsys):
    from robopolicy.cli import main

    assert main(["demos", "record", "--out", str(tmp_path / "r.zarr"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.zarr").exists()
