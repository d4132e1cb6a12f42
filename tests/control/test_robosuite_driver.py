"""The robosuite driver: connect, read, write, hold, reset, real-time pacing, disconnect (Lift, ~50 sim steps).

The tests share one driver (building the sim takes seconds) and run in file order; the last one
disconnects it.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from robopolicy.control.drivers import Disconnected, EpisodicDriver, InvalidCommand, make_driver  # noqa: E402
from robopolicy.control.drivers.robosuite import RobosuiteDriver  # noqa: E402

pytest.importorskip("robosuite")

MOVE = np.array([0.4, 0.3, -0.3, 0.0, 0.0, 0.0, 1.0])  # ~4 cm/tick of goal offset, gripper closing


@pytest.fixture(scope="module")
def sim():
    sleeps: list[float] = []

    def sleep(dt: float) -> None:
        sleeps.append(dt)
        time.sleep(dt)

    driver = make_driver("robosuite", task="Lift", realtime=False, seed=0, sleep=sleep)
    assert isinstance(driver, RobosuiteDriver) and not driver.connected
    driver.connect()
    yield driver, sleeps
    driver.disconnect()


def test_checks_before_building_the_sim(panda):
    d = make_driver("robosuite", task="PickPlaceCan")
    assert not d.connected and d.action_spec == panda.action_spec and d.control_hz == 20
    assert d.observation_shapes()["object"] == ((14,), np.dtype(np.float32))
    with pytest.raises(Disconnected, match=r"^robosuite: not connected"):
        d.read()
    with pytest.raises(ValueError, match="control_hz must be a positive whole number"):
        make_driver("robosuite", control_hz=12.5)
    with pytest.raises(ValueError, match="unknown task 'Push'"):
        make_driver("robosuite", task="Push")


def test_connect_and_read(sim):
    d, sleeps = sim
    assert d.connected
    assert d.observation_shapes() == d.env.observation_shapes()
    r = d.read()
    for k, (shape, dtype) in d.observation_shapes().items():
        assert r.obs[k].shape == shape and r.obs[k].dtype == dtype, k
    again = d.read()
    assert again.seq == r.seq and again.t == r.t  # read() does not step the sim
    assert r.t <= time.monotonic()
    assert d.last_info == {"success": False, "reward": 0.0, "done": False, "t": 0}
    assert sleeps == []


def test_write_moves_then_hold_keeps_position(sim):
    d, _ = sim
    r0 = d.read()
    for _ in range(8):
        d.write(MOVE)
    r1 = d.read()
    assert r1.seq == r0.seq + 8 and r1.t > r0.t
    assert np.linalg.norm(r1.obs["eef_pos"] - r0.obs["eef_pos"]) > 0.05
    assert d.last_info["t"] == 8 and d.last_info["success"] is False and d.last_info["done"] is False
    held = []
    for _ in range(20):
        d.hold()
        held.append(d.read().obs["eef_pos"].copy())
    drift = np.linalg.norm(np.array(held) - r1.obs["eef_pos"], axis=1)
    assert drift.max() < 0.01, drift  # the arm stops within 1 cm
    assert np.linalg.norm(held[-1] - held[-6]) < 0.002  # and stays
    assert d.read().obs["gripper_qpos"][0] < 0.01  # the gripper kept its close command
    with pytest.raises(InvalidCommand, match=r"^robosuite: action must be finite"):
        d.write(np.full(7, np.nan))


def test_realtime_writes_keep_to_the_wall_clock(sim):
    d, sleeps = sim
    d.realtime = True
    try:
        t0 = time.monotonic()
        for _ in range(6):
            d.write(np.zeros(7))
            d.read()
        elapsed = time.monotonic() - t0
    finally:
        d.realtime = False
    assert elapsed >= 5 * d.period_s - 1e-3  # six steps, at least five periods apart
    n = len(sleeps)
    for _ in range(3):
        d.write(np.zeros(7))
    assert len(sleeps) == n  # realtime=False: no waiting


def test_reset_with_a_seed(sim):
    d, _ = sim
    assert isinstance(d, EpisodicDriver)
    seq = d.read().seq
    d.reset(3)
    a = d.read()
    d.write(MOVE)
    d.reset(3)
    b = d.read()
    assert b.seq == seq + 3 and d.last_info["t"] == 0
    for k in a.obs:
        np.testing.assert_array_equal(a.obs[k], b.obs[k], err_msg=k)
    d.reset(4)
    assert not np.array_equal(d.read().obs["object"], a.obs["object"])


def test_disconnect(sim):
    d, _ = sim
    d.disconnect()
    assert not d.connected and d.env is None
    with pytest.raises(Disconnected):
        d.read()
    with pytest.raises(Disconnected):
        d.hold()
    d.disconnect()  # idempotent
