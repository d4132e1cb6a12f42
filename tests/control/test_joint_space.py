"""The absolute joint-position action space: the so101/koch profiles, their validation, and the
safety filter's joint clamp, rate limit anchored on the reading, and hold at the present position."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from robopolicy.control.profile import PROFILE_DIR, ActionKind, load_profile
from robopolicy.control.safety import SafetyFilter, Watchdog

JOINTS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll")


@pytest.fixture(scope="module")
def so101():
    return load_profile("so101")


def _obs(q=(0.0,) * 5, gripper=20.0) -> dict:
    return {"joint_pos": np.array(q, np.float32), "gripper_pos": np.array([gripper], np.float32)}


def _kinds(events) -> set[str]:
    return {e.kind for e in events}


@pytest.mark.parametrize("name", ["so101", "koch"])
def test_joint_profiles(name):
    p = load_profile(name)
    assert p.action_kind is ActionKind.ABSOLUTE_JOINT and p.workspace is None
    spec = p.action_spec
    assert spec.names == (*JOINTS, "gripper") and p.joints.names == JOINTS
    np.testing.assert_array_equal(spec.low, [*p.joints.lower, 0.0])
    np.testing.assert_array_equal(spec.high, [*p.joints.upper, 100.0])
    assert spec.units == ("rad",) * 5 + ("percent",) and not any(spec.discrete)
    assert p.lerobot is not None and p.lerobot.joint_units == "degrees"
    assert p.lerobot.keys == {**{j: f"{j}.pos" for j in JOINTS}, "gripper": "gripper.pos"}
    np.testing.assert_array_equal(p.max_delta_vector(), [0.1, 0.1, 0.1, 0.1, 0.15, 10.0])


def test_so101_limits_are_the_urdfs(so101):
    deg = np.degrees([so101.joints.lower, so101.joints.upper])
    np.testing.assert_allclose(deg[:, :4], [[-110, -100, -96.83, -95], [110, 100, 96.83, 95]], atol=0.01)
    assert so101.lerobot.robot_type == "so101_follower" and so101.lerobot.teleop_type == "so101_leader"


def _write(tmp_path: Path, mutate, base: str = "so101") -> Path:
    data = yaml.safe_load((PROFILE_DIR / f"{base}.yaml").read_text())
    mutate(data)
    path = tmp_path / "arm.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, words",
    [
        (
            lambda d: d.update(
                workspace={"low": [0, 0, 0], "high": [1, 1, 1], "dims": ["a", "b", "c"], "metres_per_unit": 1}
            ),
            ["workspace is not allowed", "joint_pos"],
        ),
        (lambda d: d["max_delta"].pop("wrist_roll"), ["max_delta", "wrist_roll"]),
        (lambda d: d["max_delta"].update(dx=1.0), ["max_delta", "dx"]),
        (lambda d: d["lerobot"]["keys"].pop("gripper"), ["lerobot.keys", "gripper"]),
        (lambda d: d["lerobot"]["keys"].update(elbow="elbow.pos"), ["lerobot.keys", "elbow"]),
        (lambda d: d["lerobot"]["keys"].update(wrist_roll="wrist_flex.pos"), ["lerobot", "wrist_flex.pos"]),
        (lambda d: d["lerobot"].update(joint_units="percent"), ["lerobot", "joint_units", "degrees"]),
        (lambda d: d["lerobot"].pop("robot_type"), ["missing", "lerobot.robot_type"]),
        (lambda d: d["lerobot"].update(port="/dev/ttyACM0"), ["lerobot", "port"]),
        (lambda d: d["gripper"].update(dim="wrist_roll"), ["gripper.dim", "wrist_roll"]),
        (lambda d: d["home"].update(gripper=120.0), ["home.gripper"]),
    ],
)
def test_bad_joint_profile_names_file_and_key(tmp_path, mutate, words):
    path = _write(tmp_path, mutate)
    with pytest.raises(ValueError) as e:
        load_profile(path)
    msg = str(e.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, msg


def test_delta_space_still_needs_a_workspace(tmp_path):
    path = _write(tmp_path, lambda d: d.pop("workspace"), base="robosuite_panda")
    with pytest.raises(ValueError, match="workspace is required"):
        load_profile(path)


def test_joint_targets_are_clamped_into_the_joint_limits(so101):
    f = SafetyFilter(so101)
    q = np.array(so101.joints.upper) - 0.05
    f.filter([*q, 20.0], _obs(q))  # anchored at the reading: q is reachable at once
    safe, events = f.filter([*(q + 0.08), 20.0], _obs(q))
    np.testing.assert_allclose(safe[:5], so101.joints.upper)
    assert _kinds(events) == {"action_limit"} and events[0].dims == JOINTS
    safe, events = f.filter([*q, 150.0], _obs(q))  # the gripper above 100: clipped, then rate-limited
    assert safe[5] == pytest.approx(30.0) and _kinds(events) == {"action_limit", "gripper_rate"}


def test_first_target_is_rate_limited_from_the_reading(so101):
    f = SafetyFilter(so101)
    q = np.array([0.5, -0.3, 0.2, 0.0, 1.0])
    far = np.array([-1.0, 1.0, -1.0, 1.0, -1.0])
    safe, events = f.filter([*far, 60.0], _obs(q, gripper=40.0))
    np.testing.assert_allclose(safe, [*(q + np.clip(far - q, -0.1, 0.1) * [1, 1, 1, 1, 1.5]), 50.0])
    assert _kinds(events) == {"max_delta", "gripper_rate"}
    # then from the last sent action, whatever the arm reads
    safe2, _ = f.filter([*far, 60.0], _obs(q, gripper=40.0))
    np.testing.assert_allclose(safe2[:5] - safe[:5], [-0.1, 0.1, -0.1, 0.1, -0.15])
    assert safe2[5] == pytest.approx(60.0)
    # a new run anchors on the reading again
    f.reset()
    safe3, _ = f.filter([*far, 60.0], _obs(q, gripper=40.0))
    np.testing.assert_allclose(safe3, safe)


def test_hold_is_the_present_reading_with_the_last_gripper_command(so101):
    f = SafetyFilter(so101)
    q = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    held, events = f.hold(_obs(q, gripper=33.0))  # nothing sent yet: the gripper's reading too
    np.testing.assert_allclose(held, [*q, 33.0])
    assert events == [] and f.counters["hold"] == 1
    f.filter([*(q + 0.05), 40.0], _obs(q, gripper=33.0))
    q2 = q + 0.02  # the arm lags behind its target
    held, _ = f.hold(_obs(q2, gripper=35.0))
    np.testing.assert_allclose(held, [*q2, 40.0])
    np.testing.assert_allclose(f.hold_action(), held)
    # and the next target is rate-limited from the hold
    safe, _ = f.filter([*(q2 + 1.0), 40.0], _obs(q2, gripper=35.0))
    np.testing.assert_allclose(safe[:5], q2 + [0.1, 0.1, 0.1, 0.1, 0.15])


def test_faults_hold_at_the_present_position(so101):
    dog = Watchdog(0.1, "chunk")
    f = SafetyFilter(so101, watchdogs=[dog])
    q = np.array([0.0, 0.5, -0.5, 0.2, 0.0])
    dog.feed(0.0)
    f.filter([*q, 10.0], _obs(q, 10.0), now=0.0)
    safe, events = f.filter([*(q + 0.05), 10.0], _obs(q + 0.01, 10.0), now=0.5)
    assert _kinds(events) == {"watchdog"}
    np.testing.assert_allclose(safe, [*(q + 0.01), 10.0])
    nan = _obs(q, 10.0)
    nan["joint_pos"][2] = np.nan
    safe, events = f.filter([*q, 10.0], nan, now=0.5)
    assert "nan_reading" in _kinds(events)
    np.testing.assert_allclose(safe, [*(q + 0.01), 10.0])  # the newest finite reading
    past = np.array(so101.joints.upper) + 0.1
    safe, events = f.filter([*q, 10.0], _obs(past, 10.0), now=0.5)
    assert "joint_limit" in _kinds(events)
    np.testing.assert_allclose(safe[:5], past)  # stopping where it is is always allowed


def test_estop_reset_anchors_on_the_reading(so101):
    f = SafetyFilter(so101)
    q = np.zeros(5)
    f.filter([*q, 0.0], _obs(q, 0.0))
    f.estop("test")
    safe, events = f.filter([*(q + 0.05), 0.0], _obs(q + 0.3, 0.0))
    assert _kinds(events) == {"estop"}
    f.reset_estop()
    safe, _ = f.filter([*(q + 1.0), 0.0], _obs(q + 0.3, 0.0))
    np.testing.assert_allclose(safe[:5], q + 0.3 + [0.1, 0.1, 0.1, 0.1, 0.15])


def test_joint_space_reading_needs_the_gripper(so101):
    f = SafetyFilter(so101)
    with pytest.raises(KeyError, match="gripper_pos"):
        f.filter(np.zeros(6), {"joint_pos": np.zeros(5)})
    with pytest.raises(ValueError, match="5 joints"):
        f.filter(np.zeros(6), _obs((0.0,) * 4))


def test_profile_replace_revalidates(so101):
    with pytest.raises(ValueError, match="workspace is not allowed"):
        dataclasses.replace(so101, workspace=load_profile("robosuite_panda").workspace)
