"""Hardware profiles: the robosuite Panda profile matches robosuite; bad files name the file and key."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from robopolicy.control.profile import PROFILE_DIR, known_profiles, load_profile
from robopolicy.types import osc_pose_action_spec


def test_robosuite_panda_profile(panda):
    assert panda.name == "robosuite_panda" and "robosuite_panda" in known_profiles()
    assert panda.action_spec == osc_pose_action_spec()
    assert panda.control_hz == 20 and panda.period_s == pytest.approx(0.05)
    assert len(panda.joints.names) == 7
    # robosuite's Panda init_qpos
    np.testing.assert_allclose(
        panda.home.joint_pos, [0, np.pi / 16, 0, -np.pi / 2 - np.pi / 3, 0, np.pi - 0.2, np.pi / 4], atol=1e-5
    )
    np.testing.assert_array_equal(panda.max_delta_vector(), [1.25, 1.25, 1.25, 0.5, 0.5, 0.5, 2.0])
    assert load_profile(PROFILE_DIR / "robosuite_panda.yaml") == panda  # by path too


def test_joint_limits_are_robosuites():
    spec = importlib.util.find_spec("robosuite")
    if spec is None:
        pytest.skip("robosuite is not installed")
    xml = Path(spec.origin).parent / "models/assets/robots/panda/robot.xml"
    ranges = re.findall(r'<joint name="joint(\d)"[^>]*range="([-\d.]+) ([-\d.]+)"', xml.read_text())
    assert len(ranges) == 7
    panda = load_profile("robosuite_panda")
    np.testing.assert_array_equal(panda.joints.lower, [float(lo) for _, lo, _ in ranges])
    np.testing.assert_array_equal(panda.joints.upper, [float(hi) for _, _, hi in ranges])


def _write(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((PROFILE_DIR / "robosuite_panda.yaml").read_text())
    mutate(data)
    path = tmp_path / "arm.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: d["workspace"].pop("low"), ["missing", "workspace.low"]),
        (lambda d: d.pop("control_hz"), ["missing", "control_hz"]),
        (lambda d: d.update(speed=3), ["unknown", "speed"]),
        (lambda d: d["gripper"].update(width=3), ["gripper", "width"]),
        (lambda d: d.update(control_hz="fast"), ["control_hz", "fast"]),
        (lambda d: d["joints"]["lower"].__setitem__(3, 0.0), ["joints", "robot0_joint4"]),
        (lambda d: d["joints"]["upper"].pop(), ["joints", "upper has 6"]),
        (lambda d: d["max_delta"].pop("drz"), ["max_delta", "drz"]),
        (lambda d: d["max_delta"].update(dx=0), ["max_delta", "dx"]),
        (lambda d: d.update(action_space="joint_velocity"), ["action_space", "osc_pose"]),
        (lambda d: d["workspace"].update(dims=["dx", "dy", "gripper"]), ["workspace.dims", "gripper"]),
        (lambda d: d["home"].update(gripper=3.0), ["home.gripper"]),
        (lambda d: d["gripper"].update(low=-0.5), ["gripper.low/high", "discrete"]),
        (lambda d: d["home"]["joint_pos"].__setitem__(0, 4.0), ["home.joint_pos", "robot0_joint1"]),
    ],
)
def test_bad_profile_names_file_and_key(tmp_path, mutate, words):
    path = _write(tmp_path, mutate)
    with pytest.raises(ValueError) as e:
        load_profile(path)
    msg = str(e.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, msg


def test_unknown_profile_lists_known(tmp_path):
    with pytest.raises(ValueError, match=r"unknown hardware profile 'ur5e'.*robosuite_panda"):
        load_profile("ur5e")
    with pytest.raises(ValueError, match="not found"):
        load_profile(tmp_path / "nothing.yaml")


def test_profile_is_frozen_and_revalidated(panda):
    with pytest.raises(dataclasses.FrozenInstanceError):
        panda.control_hz = 50  # type: ignore[misc]
    with pytest.raises(ValueError, match="control_hz"):
        dataclasses.replace(panda, control_hz=0)
