"""Teleop recorder: a scripted robosuite Device goes through the same recorder loop and store."""

from __future__ import annotations

import os

import numpy as np
import pytest

from robopolicy.data.store import EpisodeStore
from robopolicy.envs.experts import make_expert
from robopolicy.envs.teleop import (
    DeviceUnavailableError,
    KeyboardControls,
    ScriptedDevice,
    device_action,
    make_device,
    record_teleop,
)


def test_scripted_device_records_saved_episodes_only(lift_env, tmp_path):
    out = tmp_path / "teleop.zarr"
    device = ScriptedDevice(lift_env, ["save", "discard", "save"])
    report = record_teleop(
        lift_env, device, device, out, device_name="scripted-device", realtime=False, log=lambda *a: None
    )
    assert (report.saved, report.discarded) == (2, 1)
    store = EpisodeStore.open(out)
    assert store.n_episodes == 2 and store.source == "teleop:Lift"
    metas = store.episodes_metadata
    assert [m["seed"] for m in metas] == [0, 2]
    assert all(m["teleop_device"] == "scripted-device" and m["success"] is True for m in metas)
    assert store.n_steps == report.steps
    assert store.episode(1)["action"].dtype == np.float32

    # a second session appends to the same store
    device = ScriptedDevice(lift_env, ["save"])
    record_teleop(
        lift_env, device, device, out, device_name="scripted-device", seed=10, realtime=False, log=lambda *a: None
    )
    assert EpisodeStore.open(out).n_episodes == 3


def test_device_path_reproduces_expert_actions(lift_env):
    obs = lift_env.reset(3)
    expert = make_expert("Lift", lift_env, 0)
    expert.reset(obs)
    device = ScriptedDevice(lift_env, ["save"])
    device.expert = make_expert("Lift", lift_env, 0)
    device.start_control()
    for _ in range(15):
        a = expert.act(obs)
        np.testing.assert_allclose(device_action(lift_env, device), a, atol=1e-12)
        obs = lift_env.step(a)[0]


def test_device_errors(lift_env):
    with pytest.raises(ValueError, match="unknown teleop device 'joystick'"):
        make_device("joystick", lift_env)
    with pytest.raises(ValueError, match="'save' or 'discard'"):
        ScriptedDevice(lift_env, ["keep"])


@pytest.mark.skipif(bool(os.environ.get("DISPLAY")), reason="needs a machine without a display")
def test_keyboard_unavailable_headless(lift_env):
    with pytest.raises(DeviceUnavailableError, match="display"):
        KeyboardControls()
    with pytest.raises(DeviceUnavailableError, match="keyboard"):
        make_device("keyboard", lift_env)
