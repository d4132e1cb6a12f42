"""The safety filter clamps each kind and counts it, holds on faults, latches the e-stop; the watchdog."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from robopolicy.control.drivers.base import Reading
from robopolicy.control.profile import ACTION_SPACES, GripperLimits, HomePose
from robopolicy.control.safety import CLAMP_KINDS, FAULT_KINDS, SafetyFilter, Watchdog
from robopolicy.types import ActionSpec, osc_pose_action_spec


def _obs(panda, eef=(0.0, 0.0, 1.0), joints=None) -> dict:
    q = panda.home.joint_pos if joints is None else joints
    return {"eef_pos": np.array(eef, np.float32), "joint_pos": np.array(q, np.float32)}


def _act(*arm, gripper=-1.0) -> np.ndarray:
    a = np.zeros(7)
    a[: len(arm)] = arm
    a[6] = gripper
    return a


def _kinds(events) -> set[str]:
    return {e.kind for e in events}


def test_action_inside_every_limit_passes_unchanged(panda):
    f = SafetyFilter(panda)
    a = _act(0.5, -0.3, 0.2, 0.1, 0.0, -0.1)
    safe, events = f.filter(a, Reading(t=0.0, seq=1, obs=_obs(panda)))  # a Reading or its obs
    np.testing.assert_array_equal(safe, a)
    assert events == [] and set(f.counters.values()) == {0}
    assert set(f.counters) == set(FAULT_KINDS + CLAMP_KINDS + ("hold",))


def test_action_limit_clips_and_counts(panda):
    f = SafetyFilter(panda)
    safe, events = f.filter(_act(1.2, -3.0, 0.5), _obs(panda))
    np.testing.assert_allclose(safe, _act(1.0, -1.0, 0.5))
    assert _kinds(events) == {"action_limit"} and events[0].dims == ("dx", "dy")
    assert not events[0].fault
    f.filter(_act(0.0, 0.0, 2.0), _obs(panda))
    assert f.counters["action_limit"] == 2 and f.counters["hold"] == 0


def test_max_delta_from_last_sent_action(panda):
    f = SafetyFilter(panda)  # dx..dz 1.25, drx..drz 0.5 per tick
    f.filter(_act(1.0, 0.0, 0.0, 0.4), _obs(panda))
    safe, events = f.filter(_act(-1.0, 0.0, 0.0, -0.4), _obs(panda))
    np.testing.assert_allclose(safe, _act(-0.25, 0.0, 0.0, -0.1))
    assert _kinds(events) == {"max_delta"} and set(events[0].dims) == {"dx", "drx"}
    safe, _ = f.filter(_act(-1.0, 0.0, 0.0, -0.4), _obs(panda))  # reaches the target on the next tick
    np.testing.assert_allclose(safe, _act(-1.0, 0.0, 0.0, -0.4))
    assert f.counters["max_delta"] == 1


def test_max_delta_starts_from_rest(panda):
    panda = dataclasses.replace(panda, max_delta={**panda.max_delta, "dz": 0.3})
    f = SafetyFilter(panda)
    safe, events = f.filter(_act(0.0, 0.0, -1.0), _obs(panda))
    assert safe[2] == pytest.approx(-0.3) and _kinds(events) == {"max_delta"}


def test_workspace_shortens_a_delta_at_the_face(panda):
    f = SafetyFilter(panda)
    low_z = panda.workspace.low[2]
    eef = (0.0, 0.0, low_z + 0.01)  # 1 cm above the floor of the box; dz=-1 would go 5 cm down
    safe, events = f.filter(_act(0.5, 0.0, -1.0), _obs(panda, eef))
    assert safe[2] == pytest.approx(-0.01 / panda.workspace.metres_per_unit)
    assert safe[0] == 0.5  # x is free
    assert _kinds(events) == {"workspace"} and events[0].dims == ("dz",)
    assert f.counters["workspace"] == 1


def test_workspace_outside_zeroes_only_outward_components(panda):
    f = SafetyFilter(panda)
    eef = (panda.workspace.high[0] + 0.05, 0.0, 1.0)  # 5 cm past the +x face
    safe, events = f.filter(_act(0.5, 0.3), _obs(panda, eef))
    np.testing.assert_allclose(safe, _act(0.0, 0.3))
    assert _kinds(events) == {"workspace"}
    safe, events = f.filter(_act(-0.5, 0.3), _obs(panda, eef))  # back inward: allowed
    np.testing.assert_allclose(safe, _act(-0.5, 0.3))
    assert events == [] and f.counters["workspace"] == 1
    eef = (0.0, 0.0, panda.workspace.low[2] - 0.05)  # 5 cm below the floor of the box
    safe, events = f.filter(_act(0.0, 0.0, -0.5), _obs(panda, eef))
    np.testing.assert_allclose(safe, _act())
    assert _kinds(events) == {"workspace"} and events[0].dims == ("dz",)
    safe, events = f.filter(_act(0.0, 0.0, 0.3), _obs(panda, eef))  # up, at the asked speed
    np.testing.assert_allclose(safe, _act(0.0, 0.0, 0.3))
    assert events == [] and f.counters["workspace"] == 2


def test_discrete_gripper_rate(panda):
    slow = dataclasses.replace(panda, gripper=dataclasses.replace(panda.gripper, max_delta=1.0))
    f = SafetyFilter(slow)  # open (-1) -> close (+1) is a change of 2 > 1: the gripper keeps its command
    safe, events = f.filter(_act(gripper=1.0), _obs(panda))
    assert safe[6] == -1.0 and _kinds(events) == {"gripper_rate"}
    assert f.counters["gripper_rate"] == 1
    f = SafetyFilter(panda)  # the Panda profile lets it switch in one tick
    safe, events = f.filter(_act(gripper=1.0), _obs(panda))
    assert safe[6] == 1.0 and events == []


def test_continuous_gripper_limit_and_rate(panda, monkeypatch):
    osc = osc_pose_action_spec()
    spec = ActionSpec(osc.names, osc.low, osc.high, osc.units, (False,) * 7)
    monkeypatch.setitem(ACTION_SPACES, "osc_pose_continuous_gripper", lambda: spec)
    prof = dataclasses.replace(
        panda,
        action_space="osc_pose_continuous_gripper",
        gripper=GripperLimits("gripper", -0.5, 1.0, 0.3),
        home=HomePose(panda.home.joint_pos, -0.5),
    )
    f = SafetyFilter(prof)
    safe, events = f.filter(_act(gripper=1.0), _obs(panda))
    assert safe[6] == pytest.approx(-0.2) and _kinds(events) == {"gripper_rate"}
    safe, _ = f.filter(_act(gripper=1.0), _obs(panda))
    assert safe[6] == pytest.approx(0.1)
    safe, events = f.filter(_act(gripper=-1.0), _obs(panda))  # below gripper.low, then rate-limited
    assert safe[6] == pytest.approx(-0.2) and _kinds(events) == {"gripper_limit", "gripper_rate"}
    safe, events = f.filter(_act(gripper=-1.0), _obs(panda))
    assert safe[6] == pytest.approx(-0.5) and _kinds(events) == {"gripper_limit"}
    assert f.counters["gripper_limit"] == 2 and f.counters["gripper_rate"] == 3


def test_several_clamps_in_one_call_each_counted_once(panda):
    f = SafetyFilter(panda)
    eef = (0.0, 0.0, panda.workspace.high[2])
    safe, events = f.filter(_act(5.0, 0.0, 1.0), _obs(panda, eef))
    assert _kinds(events) == {"action_limit", "workspace"}
    np.testing.assert_allclose(safe, _act(1.0, 0.0, 0.0))
    assert f.counters["action_limit"] == 1 and f.counters["workspace"] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_action_holds_and_faults(panda, bad):
    f = SafetyFilter(panda)
    f.filter(_act(0.5, gripper=1.0), _obs(panda))
    safe, events = f.filter(_act(0.5, bad, gripper=1.0), _obs(panda))
    np.testing.assert_array_equal(safe, _act(gripper=1.0))  # zero motion, gripper kept closed
    np.testing.assert_array_equal(safe, f.hold_action())
    assert _kinds(events) == {"nan_action"} and events[0].fault and events[0].dims == ("dy",)
    assert f.counters["nan_action"] == 1 and f.counters["hold"] == 1


@pytest.mark.parametrize("key", ["eef_pos", "joint_pos"])
def test_non_finite_reading_holds_and_faults(panda, key):
    f = SafetyFilter(panda)
    obs = _obs(panda)
    obs[key][1] = np.nan
    safe, events = f.filter(_act(0.5), obs)
    np.testing.assert_array_equal(safe, f.hold_action())
    assert _kinds(events) == {"nan_reading"} and events[0].dims == (key,)
    with pytest.raises(KeyError, match="joint_pos"):
        f.filter(_act(0.5), {"eef_pos": np.zeros(3)})


def test_joint_past_its_limit_holds(panda):
    f = SafetyFilter(panda)
    q = np.array(panda.home.joint_pos)
    q[3] = panda.joints.upper[3] + panda.joints.tolerance * 0.5  # within the tolerance: fine
    safe, events = f.filter(_act(0.5), _obs(panda, joints=q))
    assert events == [] and safe[0] == 0.5
    q[3] = panda.joints.upper[3] + panda.joints.tolerance * 2
    safe, events = f.filter(_act(0.5), _obs(panda, joints=q))
    assert _kinds(events) == {"joint_limit"} and events[0].dims == ("robot0_joint4",)
    np.testing.assert_array_equal(safe, f.hold_action())


def test_estop_latches_until_reset(panda):
    f = SafetyFilter(panda)
    f.filter(_act(1.0, gripper=1.0), _obs(panda))
    f.estop("operator pressed stop")
    assert f.estopped
    for _ in range(5):
        safe, events = f.filter(_act(0.3), _obs(panda))  # valid actions too
        np.testing.assert_array_equal(safe, _act(gripper=1.0))
        assert _kinds(events) == {"estop"} and "operator pressed stop" in events[0].detail
    f.estop("second")  # the first reason stays
    assert f.estop_reason == "operator pressed stop"
    assert f.counters["estop"] == 5 and f.counters["hold"] == 5
    f.reset_estop()
    assert not f.estopped
    safe, events = f.filter(_act(-1.0, 0.0, 0.0, 0.8, gripper=1.0), _obs(panda))
    np.testing.assert_allclose(safe, _act(-1.0, 0.0, 0.0, 0.5, gripper=1.0))  # rate-limited from rest
    assert _kinds(events) == {"max_delta"}


def test_reset_for_a_new_episode(panda):
    f = SafetyFilter(panda)
    f.filter(_act(1.0, gripper=1.0), _obs(panda))
    f.reset()
    np.testing.assert_array_equal(f.last_action, _act(gripper=panda.home.gripper))


def test_watchdog_trips_after_its_deadline_not_before():
    w = Watchdog(0.25, name="chunk")  # times below are exact in binary
    assert w.check(1e9) is None and not w.armed  # disarmed until fed
    w.feed(10.0)
    assert w.check(10.125) is None
    assert w.check(10.25) is None  # exactly the deadline is not late
    trip = w.check(10.2500001)
    assert trip is not None and trip.name == "chunk" and trip.age_s == pytest.approx(0.2500001)
    assert "chunk" in str(trip) and w.tripped and w.trips == 1
    assert w.check(10.5) is not None and w.trips == 1  # still tripped, one trip
    w.feed(11.0)
    assert not w.tripped and w.check(11.125) is None
    w.feed(10.0)  # an older time does not move the last feed back
    assert w.check(11.25) is None
    assert w.check(11.5) is not None and w.trips == 2
    w.disarm()
    assert w.check(20.0) is None
    with pytest.raises(ValueError, match="deadline"):
        Watchdog(0.0)


def test_filter_holds_while_a_watchdog_is_tripped(panda):
    chunk, reply = Watchdog(0.2, "chunk"), Watchdog(0.1, "driver")
    f = SafetyFilter(panda, watchdogs=[chunk, reply])
    chunk.feed(0.0)
    reply.feed(0.0)
    safe, events = f.filter(_act(0.5), _obs(panda), now=0.05)
    assert events == [] and safe[0] == 0.5
    reply.feed(0.2)
    safe, events = f.filter(_act(0.5), _obs(panda), now=0.25)  # chunk is late
    assert _kinds(events) == {"watchdog"} and [e.dims for e in events] == [("chunk",)] and events[0].fault
    np.testing.assert_array_equal(safe, f.hold_action())
    chunk.feed(0.3)
    reply.feed(0.3)
    safe, events = f.filter(_act(0.5), _obs(panda), now=0.3)
    assert events == [] and safe[0] == 0.5
    assert f.counters["watchdog"] == 1
    with pytest.raises(ValueError, match="now="):
        f.filter(_act(0.5), _obs(panda))


def test_filter_rejects_a_mismatched_spec_or_shape(panda):
    with pytest.raises(ValueError, match="action dims"):
        SafetyFilter(panda, ActionSpec(("a", "b"), (-1, -1), (1, 1)))
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        SafetyFilter(panda).filter(np.zeros(6), _obs(panda))
