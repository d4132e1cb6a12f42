"""The mock arm: motion and hold, latency and jitter, every injectable fault, determinism; the registry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from robopolicy.control.drivers import (
    Disconnected,
    Driver,
    DriverError,
    FaultDetected,
    InvalidCommand,
    ReadTimeout,
    known_drivers,
    make_driver,
    panda_observation_shapes,
)
from robopolicy.control.drivers.mock import Fault, FaultSpec, MockArm
from robopolicy.control.safety import SafetyFilter
from tests.control.fakes import FakeClock

MOVE = np.array([1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 1.0])


def _arm(clock, **kwargs) -> MockArm:
    arm = make_driver("mock", clock=clock, sleep=clock.sleep, **kwargs)
    assert isinstance(arm, MockArm) and isinstance(arm, Driver)
    arm.connect()
    return arm


def test_observations_have_the_robosuite_panda_layout(clock):
    arm = _arm(clock)
    r = arm.read()
    shapes = panda_observation_shapes(10)
    assert arm.observation_shapes() == shapes
    assert set(r.obs) == set(shapes)
    for k, (shape, dtype) in shapes.items():
        assert r.obs[k].shape == shape and r.obs[k].dtype == dtype, k
    np.testing.assert_allclose(r.obs["joint_pos"], arm.profile.home.joint_pos, atol=1e-6)
    np.testing.assert_allclose(r.obs["gripper_qpos"], [0.04, -0.04])  # home gripper: open
    assert r.t == clock.now and r.seq == 1


def test_write_moves_the_end_effector_and_hold_stops_it(clock):
    arm = _arm(clock)
    p0 = arm.read().obs["eef_pos"].copy()
    for _ in range(3):
        arm.write(MOVE)
    r = arm.read()
    step = arm.profile.workspace.metres_per_unit
    np.testing.assert_allclose(r.obs["eef_pos"] - p0, [3 * step, 0.0, 1.5 * step], atol=1e-6)
    assert np.abs(r.obs["joint_vel"]).max() > 0
    assert r.obs["gripper_qpos"][0] < 0.04  # closing
    arm.hold()
    held = arm.read()
    np.testing.assert_array_equal(held.obs["eef_pos"], r.obs["eef_pos"])
    np.testing.assert_array_equal(held.obs["joint_vel"], np.zeros(7))
    for _ in range(5):
        arm.hold()
    np.testing.assert_allclose(arm.read().obs["gripper_qpos"], [0.0, 0.0], atol=1e-7)  # kept its close command


def test_reset_returns_home(clock):
    arm = _arm(clock, init_noise=0.05, seed=2)
    start = arm.read().obs["joint_pos"].copy()
    for _ in range(3):
        arm.write(MOVE)
    assert arm.last_info == {"success": False, "reward": 0.0, "done": False, "t": 3}
    arm.reset()
    np.testing.assert_array_equal(arm.read().obs["joint_pos"], start)
    assert arm.last_info["t"] == 0
    arm.reset(seed=5)
    assert not np.array_equal(arm.read().obs["joint_pos"], start)


def test_latency_and_jitter_are_seeded(clock):
    arm = _arm(clock, latency_s=0.01, jitter_s=0.02, seed=3)
    t0 = clock.now
    r = arm.read()
    assert r.t == t0 and clock.now > t0  # stamped at capture, returned after the delay
    for _ in range(20):
        arm.read()
    delays = np.array(clock.sleeps)
    assert len(delays) == 21 and np.all((delays >= 0.01) & (delays < 0.03)) and delays.std() > 0
    again = FakeClock()
    other = _arm(again, latency_s=0.01, jitter_s=0.02, seed=3)
    for _ in range(21):
        other.read()
    np.testing.assert_array_equal(again.sleeps, delays)
    third = FakeClock()
    arm3 = _arm(third, latency_s=0.01, jitter_s=0.02, seed=4)
    arm3.read()
    assert third.sleeps[0] != delays[0]


def test_reply_later_than_the_timeout_is_a_read_timeout(clock):
    arm = _arm(clock, latency_s=0.15, read_timeout_s=0.1)
    with pytest.raises(ReadTimeout, match=r"^mock: no reading within 0.100 s"):
        arm.read()
    assert clock.sleeps == [pytest.approx(0.1)]


def _run(arm, n_reads: int):
    out = []
    for i in range(n_reads):
        arm.write(np.sin(np.arange(7) + i) * np.array([1, 1, 1, 0.3, 0.3, 0.3, 1]))
        r = arm.read()
        out.append((r.t, r.seq, {k: v.copy() for k, v in r.obs.items()}))
    return out


def test_deterministic_with_a_seed():
    def run(seed):
        c = FakeClock()
        return _run(_arm(c, seed=seed, init_noise=0.05, jitter_s=0.01), 10)

    a, b, c = run(7), run(7), run(8)
    for (ta, sa, oa), (tb, sb, ob) in zip(a, b):
        assert ta == tb and sa == sb
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)
    assert not np.array_equal(a[0][2]["joint_pos"], c[0][2]["joint_pos"])


def test_injected_read_timeout(clock):
    arm = _arm(clock, read_timeout_s=0.05, faults=[FaultSpec("read_timeout", at_read=2)])
    assert [arm.read().seq for _ in range(2)] == [1, 2]
    with pytest.raises(ReadTimeout, match=r"^mock: .*injected read timeout"):
        arm.read()
    assert clock.sleeps == [pytest.approx(0.05)]
    assert arm.read().seq == 3  # count=1: the next read works
    arm.schedule("read_timeout", count=None)  # until cleared
    for _ in range(3):
        with pytest.raises(ReadTimeout):
            arm.read()
    arm.clear_faults()
    assert arm.read().seq == 4


def test_injected_dropped_frame_repeats_the_previous_reading(clock):
    arm = _arm(clock)
    arm.schedule(Fault.DROPPED_FRAME, at_read=1, count=2)
    first = arm.read()
    arm.write(MOVE)
    clock.now += 1.0
    assert arm.read() is first and arm.read() is first  # same seq, same t, same obs
    fresh = arm.read()
    assert fresh.seq == first.seq + 1 and fresh.t > first.t
    assert not np.array_equal(fresh.obs["eef_pos"], first.obs["eef_pos"])


def test_injected_disconnect(clock):
    arm = _arm(clock, faults=[FaultSpec(Fault.DISCONNECT, at_write=2)])
    twin = _arm(FakeClock())  # the same arm without the fault
    for a in (arm, twin):
        a.write(MOVE)
        a.write(MOVE)
    before = twin.read().obs["eef_pos"]
    with pytest.raises(Disconnected, match=r"^mock: link lost: injected disconnect \(after 0 reads, 2 writes\)"):
        arm.read()
    assert not arm.connected
    for call in (arm.read, arm.hold, lambda: arm.write(MOVE)):
        with pytest.raises(Disconnected, match="call connect"):
            call()
    arm.connect()
    np.testing.assert_allclose(arm.read().obs["eef_pos"], before)  # the arm stayed where it was
    arm.trigger("disconnect")  # immediately
    assert not arm.connected
    with pytest.raises(Disconnected, match="triggered"):
        arm.read()


def test_injected_nan_reading(clock):
    arm = _arm(clock)
    arm.trigger("nan_reading")
    r = arm.read()
    assert np.all(np.isnan(r.obs["eef_pos"])) and np.all(np.isnan(r.obs["state"][:3]))
    assert np.all(np.isfinite(r.obs["joint_pos"]))
    assert all(np.all(np.isfinite(v)) for v in arm.read().obs.values())  # count=1
    arm.trigger("nan_reading", key="joint_vel", count=2)
    assert np.all(np.isnan(arm.read().obs["joint_vel"])) and np.all(np.isnan(arm.read().obs["joint_vel"]))
    assert np.all(np.isfinite(arm.read().obs["joint_vel"]))
    # a NaN reading makes the safety filter hold
    arm.trigger("nan_reading")
    safe, events = SafetyFilter(arm.profile).filter(MOVE, arm.read())
    assert [e.kind for e in events] == ["nan_reading"]
    np.testing.assert_array_equal(safe[:6], np.zeros(6))


def test_injected_stuck_joint_stops_following(clock):
    arm = _arm(clock, tracking_tolerance=None, faults=[FaultSpec("stuck_joint", at_write=1, joint=1)])
    q0 = arm.read().obs["joint_pos"].copy()
    arm.write(MOVE)  # the fault fires at the first call after one write
    q1 = arm.read().obs["joint_pos"].copy()
    assert q1[1] != q0[1] and arm.stuck_joints == {1}
    for _ in range(4):
        arm.write(MOVE)
    q2 = arm.read().obs["joint_pos"]
    assert q2[1] == q1[1] and abs(q2[3] - q1[3]) > 0.1  # joint 2 froze, joint 4 followed
    arm.clear_faults()
    arm.write(MOVE)
    assert arm.read().obs["joint_pos"][1] != q2[1]


def test_stuck_joint_is_detected_as_a_fault_until_hold(clock):
    arm = _arm(clock, tracking_tolerance=0.25)  # MOVE asks joint 4 for 0.1 rad per tick
    arm.trigger("stuck_joint", joint=3)
    arm.write(MOVE)
    arm.write(MOVE)
    arm.read()  # 0.2 rad behind: within the tolerance
    with pytest.raises(FaultDetected, match=r"^mock: joint not following its command: robot0_joint4"):
        for _ in range(5):
            arm.write(MOVE)
            arm.read()
    with pytest.raises(FaultDetected):
        arm.read()  # persists
    arm.hold()
    r = arm.read()
    np.testing.assert_array_equal(r.obs["joint_vel"], np.zeros(7))


def test_fault_specs_are_checked(clock):
    with pytest.raises(ValueError, match=r"unknown fault 'melt'.*read_timeout"):
        FaultSpec("melt")
    with pytest.raises(ValueError, match="count"):
        FaultSpec("read_timeout", count=0)
    arm = _arm(clock)
    with pytest.raises(ValueError, match="joint"):
        arm.trigger("stuck_joint", joint=7)
    with pytest.raises(ValueError, match="'foo' is not an observation key"):
        arm.schedule("nan_reading", key="foo")


def test_commands_and_connection_are_checked(clock):
    arm = make_driver("mock", clock=clock, sleep=clock.sleep)
    with pytest.raises(Disconnected, match=r"^mock: not connected"):
        arm.read()
    with arm:
        with pytest.raises(InvalidCommand, match=r"^mock: action must be finite"):
            arm.write(np.full(7, np.nan))
        with pytest.raises(ValueError, match=r"shape \(7,\)"):
            arm.write(np.zeros(6))
        assert arm.connected
    assert not arm.connected
    assert issubclass(InvalidCommand, DriverError) and issubclass(ReadTimeout, DriverError)


def test_registry_errors_name_the_known_drivers_and_profiles(panda):
    assert {"mock", "robosuite"} <= set(known_drivers())
    with pytest.raises(ValueError, match=r"unknown driver 'franka'; known drivers: .*\bmock, robosuite\b"):
        make_driver("franka")
    with pytest.raises(ValueError, match=r"driver 'mock' has no option\(s\) \['hz'\]; its options: .*latency_s"):
        make_driver("mock", hz=20)
    with pytest.raises(ValueError, match=r"unknown hardware profile 'so100'; known profiles: \[.*'robosuite_panda'"):
        make_driver("mock", profile="so100")
    six = dataclasses.replace(
        panda,
        joints=dataclasses.replace(
            panda.joints, names=panda.joints.names[:6], lower=panda.joints.lower[:6], upper=panda.joints.upper[:6]
        ),
        home=dataclasses.replace(panda.home, joint_pos=panda.home.joint_pos[:6]),
    )
    with pytest.raises(ValueError, match="mock: drives a 7-joint arm"):
        make_driver("mock", profile=six)
