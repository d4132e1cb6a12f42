"""The real-time controller on the mock arm with tiny policies: the loop keeps its rate, inference
never blocks it, every fault of the issue's table ends in a hold with the fault and the time from
fault to hold recorded and the JSONL intact, episode ends, the four strategies, telemetry
summary/plot, a SIGKILL loses no written line, and ``robopolicy run`` (bad input: exit 2).

Timing is asserted only as sanity with loose bounds (the machine is shared); measured loop
quality belongs in ``benchmarks/``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.fixture_policy as fixture
from robopolicy.cli import main
from robopolicy.control.controller import Controller, ControllerConfig, SimulatedClock, sleep_until
from robopolicy.control.drivers.mock import FaultSpec, MockArm
from robopolicy.control.faults import FaultyActor
from robopolicy.control.telemetry import load_jsonl, summarize
from robopolicy.types import FieldSpec, ObservationSpec, osc_pose_action_spec

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
OBS = ObservationSpec((FieldSpec("state", (19,)),))  # the mock arm's state with object_dim 10
MOVE = np.array([0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 1.0])  # the constant policy: 5 mm per tick in x and y


def constant_policy(horizon: int = 8, n_action_steps: int = 4) -> fixture.MLPPolicy:
    """The test MLP with a zeroed last layer: every action is the middle of the fitted range, MOVE."""
    cfg = fixture.MLPConfig(
        OBS, osc_pose_action_spec(), horizon=horizon, n_obs_steps=2, n_action_steps=n_action_steps, hidden=8
    )
    torch.manual_seed(0)
    policy = fixture.MLPPolicy(cfg)
    rng = np.random.default_rng(0)
    action = np.tile(MOVE, (64, 1)) + rng.uniform(-0.1, 0.1, (64, 7)) * [1, 1, 1, 1, 1, 1, 0]
    action[:2] = MOVE - 0.1  # limits fit: min and max symmetric about MOVE
    action[2:4] = MOVE + 0.1
    action[:, 6] = 1.0
    policy.fit_normalizer({"state": rng.normal(size=(64, 19)), "action": action})
    with torch.no_grad():
        policy.net[-1].weight.zero_()
        policy.net[-1].bias.zero_()
    return policy.eval()


def Scripted(policy, mode: str, at: int = 3, slow_s: float = 0.6) -> FaultyActor:
    """An actor around a policy that misbehaves from its ``at``-th call: raises, returns NaN, or is slow."""
    return FaultyActor(policy, mode, at=at, slow_s=slow_s)


class RecordingArm(MockArm):
    """The mock arm, logging every command attempt (before it is made) with its monotonic time."""

    def __init__(self, **kwargs) -> None:
        self.log: list[tuple[str, float]] = []
        super().__init__(**kwargs)

    def write(self, action) -> None:
        self.log.append(("write", time.monotonic()))
        super().write(action)

    def hold(self) -> None:
        self.log.append(("hold", time.monotonic()))
        super().hold()


def run(policy, arm, tmp_path: Path, **config):
    config = {"hz": 50.0, "max_ticks": 100, **config}
    ctl = Controller(policy, arm, ControllerConfig(**config), telemetry_path=tmp_path / "telemetry.jsonl")
    return ctl, ctl.run()


def read_strict(path: Path) -> list[dict]:
    """Every line of the file parses as strict JSON (no NaN), and none is truncated."""
    text = path.read_text()
    assert text.endswith("\n")
    return [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) for line in text.splitlines()
    ]


# ---------------------------------------------------------------------- timing
def test_sleep_until_sleeps_then_spins_to_the_deadline(clock):
    assert sleep_until(clock.now + 0.05, clock=clock, sleep=clock.sleep, spin_s=0.0) == pytest.approx(100.05)
    assert clock.sleeps == [pytest.approx(0.05)]
    assert sleep_until(clock.now - 1.0, clock=clock, sleep=clock.sleep) == clock.now  # past: no sleep
    assert len(clock.sleeps) == 1
    deadline = time.monotonic() + 0.02
    woke = sleep_until(deadline, spin_s=0.002)
    assert deadline <= woke < deadline + 0.015  # never early; late only by what the OS takes


def test_the_loop_runs_at_the_set_rate_on_the_mock_arm(tmp_path):
    arm = RecordingArm()
    ctl, res = run(constant_policy(), arm, tmp_path, hz=50.0, max_ticks=60)
    assert res.end_reason == "max_ticks" and res.faults == []
    ticks = [r for r in read_strict(tmp_path / "telemetry.jsonl") if r["type"] == "tick"]
    # tick = control tick: consecutive, except where the loop was a period late and skipped ahead
    assert ticks[0]["tick"] == 0 and ticks[-1]["tick"] == 59 and len(ticks) == res.ticks
    assert all(b["tick"] - a["tick"] == 1 + b["skipped"] for a, b in zip(ticks, ticks[1:]))
    assert sum(t["skipped"] for t in ticks) <= 3  # sanity on a shared CPU
    for t in ticks:
        assert t["t_sched"] == pytest.approx(t["tick"] / 50.0, abs=1e-9)
        assert t["t_start"] >= t["t_sched"]  # never early
    s = res.summary
    assert s["hz_measured"] == pytest.approx(50.0, rel=0.1)
    assert s["duration_s"] == pytest.approx(59 / 50.0, rel=0.1)
    assert s["lateness_ms"]["p50"] < 5.0  # sanity only (shared CPU)
    assert s["chunks"] >= 10 and s["empty_queue_ticks"] >= 1  # tick 0 has no chunk yet
    # the arm got each tick's command: a write per queued action, a hold per empty tick, then the final hold
    kinds = [k for k, _ in arm.log]
    assert kinds.count("write") == sum(t["source"] == "chunk" for t in ticks)
    assert kinds.count("hold") == s["empty_queue_ticks"] + 1 and kinds[-1] == "hold"
    np.testing.assert_allclose(
        [t["action"] for t in ticks if t["source"] == "chunk"],
        np.tile(MOVE, (res.ticks - s["empty_queue_ticks"], 1)),
        atol=1e-5,
    )
    assert not arm.connected  # run() connected it, so run() disconnected it


def test_inference_never_blocks_the_loop(tmp_path):
    """200 ms of injected latency at 50 Hz (10 ticks per chunk): the ticks keep coming on time,
    the arm holds while the queue is empty (counted), and the delay estimate learns d >= 10."""
    arm = RecordingArm()
    policy = constant_policy(horizon=40, n_action_steps=8)
    ctl, res = run(policy, arm, tmp_path, hz=50.0, max_ticks=60, inject_latency_ms=200.0, chunk_deadline_s=2.0)
    s = res.summary
    assert res.end_reason == "max_ticks" and res.ticks + s["skipped_ticks"] == 60 and s["skipped_ticks"] <= 3
    assert s["duration_s"] < 1.18 + 0.3  # 59 periods; a loop waiting on inference would take > 2 s
    assert s["lateness_ms"]["max"] < 100.0  # never the 200 ms of an inference call
    assert s["body_ms"]["max"] < 100.0
    chunks = [r for r in ctl.telemetry.records if r["type"] == "chunk"]
    assert 2 <= len(chunks) <= 6
    assert all(c["inference_ms"] >= 200.0 and c["delay_ticks"] >= 10 for c in chunks)
    assert all(c["delay_requested"] >= 10 for c in chunks[1:])  # estimated from the measured latency
    assert s["empty_queue_ticks"] >= 10  # no chunk for the first 200 ms
    assert s["empty_queue_ticks"] == sum(
        1 for r in ctl.telemetry.records if r["type"] == "tick" and r["source"] == "empty"
    )
    assert s["dropped_stale_actions"] >= 10 * len(chunks)  # each chunk's first d actions came too late


# ---------------------------------------------------------------------- faults
def _nan_from_tick_10(ctl):
    real = ctl.scheduler.next_action

    def next_action(tick):
        a = real(tick)
        if tick >= 10 and a is not None:
            a = a.copy()
            a[2] = np.nan
        return a

    ctl.scheduler.next_action = next_action


FAULTS = {
    # name: (arm kwargs, actor mode, controller config, expected fault kind, what to check)
    "read_timeout": (
        dict(faults=[FaultSpec("read_timeout", at_read=20)], read_timeout_s=0.03),
        None,
        {},
        "read_timeout",
    ),
    "disconnect": (dict(faults=[FaultSpec("disconnect", at_write=15)]), None, {}, "disconnect"),
    "inference_exception": ({}, "raise", {}, "inference_error"),
    "nan_chunk": ({}, "nan", {}, "nan_action"),
    "nan_action_at_the_filter": ({}, None, {}, "nan_action"),
    "slow_policy": ({}, "slow", {}, "watchdog"),
    "stuck_joint": (dict(faults=[FaultSpec("stuck_joint", at_write=10, joint=1)]), None, {}, "driver_fault"),
    "no_new_frames": (dict(faults=[FaultSpec("dropped_frame", at_read=20, count=None)]), None, {}, "watchdog"),
    # 200 ms at 50 Hz with 7 actions per chunk: chunks come, but every action of each is already stale
    "slower_than_its_horizon": ({}, None, {"inject_latency_ms": 200.0, "first_chunk_timeout_s": 0.7}, "watchdog"),
}
TRIPPED = {"slow_policy": "chunk", "no_new_frames": "reading", "slower_than_its_horizon": "first_chunk"}


@pytest.mark.parametrize("name", list(FAULTS))
def test_every_fault_ends_in_a_hold_reported_with_the_time_to_hold(name, tmp_path):
    arm_kwargs, mode, config, kind = FAULTS[name]
    if kind != "watchdog":  # a stall of the shared CPU must not pass for the fault under test
        config = {"chunk_deadline_s": 2.0, "reading_deadline_s": 2.0, **config}
    arm = RecordingArm(**arm_kwargs)
    policy = constant_policy()
    actor = policy if mode is None else Scripted(policy, mode)
    ctl = Controller(
        actor, arm, ControllerConfig(hz=50.0, max_ticks=150, **config), telemetry_path=tmp_path / "t.jsonl"
    )
    if name == "nan_action_at_the_filter":
        _nan_from_tick_10(ctl)
    res = ctl.run()

    assert res.end_reason == "fault" and len(res.faults) == 1
    fault = res.faults[0]
    assert fault["kind"] == kind, fault
    assert 0.0 <= fault["fault_to_hold_ms"] < 1000.0  # recorded; a sanity bound only
    assert fault["t_fault"] <= fault["t_detect"] <= fault["t_hold"]
    # the arm holds: the controller's last command was a hold, made after the fault was seen
    last, t_last = arm.log[-1]
    assert last == "hold" and t_last - ctl._t0 >= fault["t_detect"] - 1e-6
    assert not any(k == "write" and t - ctl._t0 > fault["t_detect"] for k, t in arm.log)
    if kind == "disconnect":  # the lost link refuses the hold: the arm stopped on its own
        assert not fault["hold_ok"] and "Disconnected" in fault["hold_error"]
        np.testing.assert_array_equal(arm._q_target, arm._q)
    else:
        assert fault["hold_ok"] and fault["hold_error"] is None
    # the JSONL is intact and holds everything: every line parses, meta first, summary last
    records = read_strict(tmp_path / "t.jsonl")
    assert records == ctl.telemetry.records
    assert records[0]["type"] == "meta" and records[-1]["type"] == "summary"
    ticks = [r for r in records if r["type"] == "tick"]
    assert len(ticks) == res.ticks >= 5 and ticks[-1]["source"] == "fault" and ticks[-1]["tick"] == fault["tick"]
    assert [f["kind"] for f in records[-1]["faults"]] == [kind]
    assert records[-1]["end_reason"] == "fault"
    assert summarize(records)["faults"] == records[-1]["faults"]  # the file alone gives the same summary
    if name == "inference_exception":
        assert "injected fault" in fault["message"]
        tb = [r for r in records if r["type"] == "event" and r["kind"] == "inference_traceback"]
        assert tb and "RuntimeError" in tb[0]["traceback"]
    if name == "nan_action_at_the_filter":
        assert "nan_action" in ticks[-1]["safety"] and fault["tick"] == 10
    if kind == "watchdog":
        trips = [r for r in records if r["type"] == "event" and r["kind"] == "watchdog"]
        assert [t["name"] for t in trips] == [TRIPPED[name]]
        # the fault is dated at the watchdog's deadline: detected within about a tick of it
        assert fault["fault_to_hold_ms"] < 20.0 + 200.0


def test_an_estop_from_another_thread_holds_and_ends_the_run(tmp_path):
    arm = RecordingArm()
    ctl = Controller(
        constant_policy(), arm, ControllerConfig(hz=50.0, max_ticks=500), telemetry_path=tmp_path / "t.jsonl"
    )
    timer = threading.Timer(0.3, ctl.estop, args=("operator pressed the button",))
    timer.start()
    res = ctl.run()
    timer.join()
    assert res.end_reason == "fault" and res.faults[0]["kind"] == "estop"
    assert "operator pressed the button" in res.faults[0]["message"]
    assert res.summary["estops"] == 1 and arm.log[-1][0] == "hold" and res.ticks < 100


# ---------------------------------------------------------------------- episode end
class EpisodeArm(RecordingArm):
    """The mock arm with a task: success (or the step limit) after ``n`` writes."""

    def __init__(self, n: int, outcome: str, **kwargs) -> None:
        self.n, self.outcome = n, outcome
        super().__init__(**kwargs)

    def write(self, action) -> None:
        super().write(action)
        if self.writes >= self.n:
            self.last_info = {**self.last_info, self.outcome: True}


@pytest.mark.parametrize("outcome", ["success", "done"])
def test_an_episodic_driver_ends_the_run(outcome, tmp_path):
    arm = EpisodeArm(12, outcome)
    ctl, res = run(constant_policy(), arm, tmp_path, max_ticks=200)
    assert res.end_reason == outcome and res.success is (outcome == "success")
    assert arm.writes == 12 and arm.log[-1][0] == "hold"  # stopped at once, then held
    assert res.summary["end_reason"] == outcome


def test_the_seed_resets_an_episodic_driver(tmp_path):
    arm = MockArm(seed=5)
    run(constant_policy(), arm, tmp_path, max_ticks=3, seed=9)
    assert arm.seed == 9
    run(constant_policy(), arm, tmp_path, max_ticks=3, seed=None)
    assert arm.seed == 9


# ---------------------------------------------------------------------- strategies
def tiny_diffusion():
    from robopolicy.policies.diffusion import DiffusionPolicy

    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicy.tiny_configs(OBS, osc_pose_action_spec())["unet"])
    rng = np.random.default_rng(0)
    action = rng.uniform(-0.3, 0.3, (64, 7))
    action[:, 6] = rng.choice([-1.0, 1.0], 64)
    policy.fit_normalizer({"state": rng.normal(size=(64, 19)), "action": action})
    return policy.set_engine("eager").eval()


@pytest.mark.parametrize("strategy", ["replace", "temporal_ensemble"])
def test_replace_and_temporal_ensembling_drive_the_arm(strategy, tmp_path):
    ctl, res = run(constant_policy(), MockArm(), tmp_path, hz=50.0, max_ticks=40, strategy=strategy)
    assert res.end_reason == "max_ticks" and not res.faults
    s = res.summary
    # temporal ensembling replans every tick (n_action_steps 1), replace every Ta = 4 ticks
    assert s["chunks"] >= (25 if strategy == "temporal_ensemble" else 6)
    assert s["jump_max"] == pytest.approx(0.0, abs=1e-5)  # a constant policy never jumps


@pytest.mark.parametrize("strategy", ["rti", "rtc"])
def test_rti_and_rtc_run_a_denoising_policy(strategy, tmp_path):
    """With 60 ms of latency at 20 Hz the delay estimate is d = 2; RTC is told it and its s."""
    config = ControllerConfig(hz=20.0, max_ticks=30, strategy=strategy, inject_latency_ms=60.0)
    ctl = Controller(tiny_diffusion(), MockArm(), config, telemetry_path=tmp_path / "t.jsonl")
    assert type(ctl.actor).__name__ == strategy.upper()
    calls = []
    real = ctl.actor.predict

    def predict(obs, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("delay", "executed")})
        return real(obs, **kwargs)

    ctl.actor.predict = predict
    res = ctl.run()
    assert res.end_reason == "max_ticks" and not res.faults, res.faults
    chunks = [r for r in ctl.telemetry.records if r["type"] == "chunk"]
    assert len(chunks) >= 4 and all(c["nfe"] is not None for c in chunks)
    for c in chunks[1:]:
        assert c["delay_requested"] >= 2 and c["executed"] >= 4
        assert c["stale_dropped"] == c["delay_ticks"]  # its actions for ticks already run
        # RTC keeps the queue's actions up to obs_tick + d (the frozen prefix); the others take over at once
        frozen_until = c["obs_tick"] + c["delay_requested"] if strategy == "rtc" else 0
        assert c["takeover_tick"] == max(c["available_tick"], frozen_until)
    warmup = 2  # untimed calls before the loop
    if strategy == "rtc":  # the actor is told the estimated delay and the actions executed since its last chunk
        told = calls[warmup : warmup + len(chunks)]
        assert [t["delay"] for t in told] == [c["delay_requested"] for c in chunks]
        assert [t["executed"] for t in told[1:]] == [c["executed"] for c in chunks[1:]]
        assert all(c["frozen"] >= 1 for c in chunks[1:])  # queued actions were executing while it ran
    else:
        assert all(t["delay"] is None for t in calls)


@pytest.mark.parametrize("latency_ms,delay", [(0.0, 0), (100.0, 2), (120.0, 3)])
def test_simulated_time_delays_every_chunk_by_the_injected_latency(latency_ms, delay, tmp_path):
    """On the simulated clock the delay is exactly ceil(latency / period), however long the
    prediction really took (here a slow policy: 0.3 s of real time per chunk)."""
    sim = SimulatedClock()
    arm = MockArm(clock=sim.now, sleep=sim.sleep)
    slow = Scripted(constant_policy(), "slow", at=1, slow_s=0.3)
    config = ControllerConfig(hz=20.0, max_ticks=24, inject_latency_ms=latency_ms, simulated_time=True, warmup=False)
    ctl = Controller(slow, arm, config, telemetry_path=tmp_path / "t.jsonl", clock=sim.now, sleep=sim.sleep)
    res = ctl.run()
    assert res.end_reason == "max_ticks" and not res.faults, res.faults
    chunks = [r for r in ctl.telemetry.records if r["type"] == "chunk"]
    ticks = [r for r in ctl.telemetry.records if r["type"] == "tick"]
    assert len(ticks) == 24 and sim.now() == pytest.approx(23 / 20.0)
    assert [c["delay_ticks"] for c in chunks] == [delay] * len(chunks)
    assert [c["obs_tick"] for c in chunks] == list(range(0, 24 - delay, 4))[: len(chunks)]
    assert all(c["inference_ms"] >= 290 for c in chunks)  # real compute, recorded, not spent on the clock
    assert res.summary["empty_queue_ticks"] == delay  # only before the first chunk
    assert res.summary["lateness_ms"]["max"] == 0.0 and res.summary["deadline_misses"] == 0
    with pytest.raises(ValueError, match="SimulatedClock"):
        Controller(constant_policy(), MockArm(), ControllerConfig(simulated_time=True))


def test_the_loops_priority_is_raised_for_the_run_and_restored(tmp_path):
    import os

    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    ctl, res = run(constant_policy(), MockArm(), tmp_path, max_ticks=10, priority="auto")
    assert res.end_reason == "max_ticks" and not res.faults
    (event,) = [r for r in ctl.telemetry.records if r["type"] == "event" and r["kind"] == "priority"]
    assert event["requested"] == "auto"
    if os.geteuid() == 0:  # root may raise it (CAP_SYS_NICE); elsewhere it says why not
        assert event["loop"].startswith(("fifo", "nice")) and event["inference_nice"] == -10
    else:
        assert event["loop"].startswith(("fifo", "nice", "none ("))
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)) == before
    with pytest.raises(ValueError, match="unknown priority"):
        ControllerConfig(priority="max")


def test_a_policy_that_does_not_fit_the_driver_is_refused():
    spec = ObservationSpec((FieldSpec("state", (23,)),))
    cfg = fixture.MLPConfig(spec, osc_pose_action_spec(), horizon=8, n_obs_steps=2, n_action_steps=4, hidden=8)
    with pytest.raises(ValueError, match=r"observation 'state': driver 'mock' gives \(19,\), policy expects \(23,\)"):
        Controller(fixture.MLPPolicy(cfg), MockArm(), ControllerConfig())
    with pytest.raises(ValueError, match="strategy 'rti' needs the RTI actor"):
        Controller(Scripted(constant_policy(), "raise"), MockArm(), ControllerConfig(strategy="rti"))
    with pytest.raises(ValueError, match="unknown strategy 'bogus'"):
        ControllerConfig(strategy="bogus")
    with pytest.raises(ValueError, match="n_action_steps 9 exceeds the 7 actions kept"):
        Controller(constant_policy(), MockArm(), ControllerConfig(n_action_steps=9))


def test_the_safety_filters_intended_hold_runs_the_guards_but_no_clamp(panda):
    """SafetyFilter.hold (added for the loop's empty ticks): a stop is never rate-limited, yet the
    watchdogs and reading guards still run and count."""
    from robopolicy.control.safety import SafetyFilter, Watchdog

    dog = Watchdog(0.1, "chunk")
    safety = SafetyFilter(panda, watchdogs=[dog])
    obs = {"eef_pos": np.array([0.0, 0.0, 1.0]), "joint_pos": np.array(panda.home.joint_pos)}
    for drx in (0.5, 1.0):  # max_delta of drx is 0.5 per tick
        safety.filter([0, 0, 0, drx, 0, 0, 1.0], obs, now=0.0)
    assert safety.filter([0, 0, 0, 0, 0, 0, 1.0], obs, now=0.0)[0][3] == 0.5  # filter() would slow the stop down
    safety.filter([0, 0, 0, 1.0, 0, 0, 1.0], obs, now=0.0)
    held, events = safety.hold(obs, now=0.05)
    assert held.tolist() == [0, 0, 0, 0, 0, 0, 1.0] and events == []  # drx 1 -> 0 at once: not clamped
    assert (
        safety.last_action.tolist() == held.tolist()
        and safety.counters["hold"] == 1
        and safety.counters["max_delta"] == 1
    )
    dog.feed(0.0)
    _, events = safety.hold({**obs, "eef_pos": np.array([np.nan, 0, 1])}, now=0.5)
    assert {e.kind for e in events} == {"watchdog", "nan_reading"} and safety.counters["watchdog"] == 1


# ---------------------------------------------------------------------- telemetry
def test_summary_statistics_and_plot(tmp_path):
    records = [{"type": "meta", "hz": 10.0}]
    for k in range(101):
        records.append(
            {"type": "tick", "tick": k, "t_start": k / 10, "lateness_ms": float(k), "body_ms": 1.0,
             "deadline_miss": k == 100, "skipped": 0, "source": "empty" if k < 3 else "chunk", "safety": ["max_delta"] if k == 5 else []}
        )  # fmt: skip
    for j, jump in enumerate([0.5, 1.5]):
        records.append(
            {"type": "chunk", "available_tick": 3 + j, "takeover_tick": 3 + j, "inference_ms": 40.0 + 20 * j,
             "delay_ticks": 1, "delay_requested": 0, "stale_dropped": 1, "jump": jump}
        )  # fmt: skip
    s = summarize(records)
    assert s["lateness_ms"] == {"p50": 50.0, "p99": 99.0, "max": 100.0}
    assert s["hz_measured"] == pytest.approx(10.0) and s["deadline_misses"] == 1 and s["empty_queue_ticks"] == 3
    assert s["inference_ms"]["p50"] == 50.0 and s["jump_mean"] == 1.0 and s["jump_max"] == 1.5
    assert s["dropped_stale_actions"] == 2 and s["delay_underestimated"] == 2 and s["safety_events"] == {"max_delta": 1}
    png = __import__("robopolicy.control.telemetry", fromlist=["plot"]).plot(records, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "t.jsonl").write_text('{"type": "meta"}\n{"type": "tick", "ti')  # a crash mid-line
    assert load_jsonl(tmp_path / "t.jsonl") == [{"type": "meta"}]


_CRASH_SCRIPT = """
import sys, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads(1)
from tests.control.test_controller import constant_policy
from robopolicy.control.controller import Controller, ControllerConfig
from robopolicy.control.drivers.mock import MockArm
# tick k's hook runs after tick k-1's record was handed to the telemetry: report k, unbuffered
report = lambda k: print(k, flush=True)
ctl = Controller(constant_policy(), MockArm(), ControllerConfig(hz=50.0, max_ticks=100000), telemetry_path={path!r},
                 after_tick=report)
ctl.run()
"""


def test_a_sigkill_loses_no_written_line(tmp_path):
    """The child prints k once tick k-1 is recorded; after a SIGKILL every such tick is in the file."""
    path = tmp_path / "telemetry.jsonl"
    script = _CRASH_SCRIPT.format(repo=str(REPO), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = "0"
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if int(line) >= 40:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
    recorded = max(int(x) for x in [line, *rest.split()])  # ticks 0 .. recorded-1 were handed over
    records = load_jsonl(path)  # at most a torn last line is skipped
    ticks = [r["tick"] for r in records if r["type"] == "tick"]
    assert len(ticks) >= recorded >= 40
    assert ticks == list(range(len(ticks)))  # every tick, in order
    assert records[0]["type"] == "meta" and not any(r["type"] == "summary" for r in records)


# ---------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "policy"
    constant_policy().save(path)
    return path


def test_run_command_on_the_mock_arm_writes_everything(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        ["run", "--checkpoint", str(checkpoint), "--driver", "mock", "--hz", "50", "--ticks", "25", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "tick lateness ms: p50" in printed and "faults: none" in printed and "end: max_ticks" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ticks"] == 25 and summary["end_reason"] == "max_ticks"
    records = read_strict(out / "telemetry.jsonl")
    assert records[0]["checkpoint"] == str(checkpoint) and records[-1] == {"type": "summary", **summary}
    assert (out / "telemetry.png").read_bytes()[:4] == b"\x89PNG"
    # a fault: exit 1, everything still written
    out2 = tmp_path / "out2"
    rc = main(["run", "--checkpoint", str(checkpoint), "--driver", "mock", "--ticks", "50", "--out", str(out2),
               "--driver-option", "read_timeout_s=0.001", "--driver-option", "latency_s=0.01"])  # fmt: skip
    assert rc == 1 and "FAULT read_timeout" in capsys.readouterr().out
    assert json.loads((out2 / "summary.json").read_text())["faults"][0]["kind"] == "read_timeout"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"--checkpoint": "/nonexistent/run"}, "checkpoint not found: /nonexistent/run"),
        ({"--driver": "ur5"}, "unknown driver 'ur5'; known drivers: koch, lerobot, mock, robosuite, so100, so101"),
        ({"--hz": "0"}, "--hz must be > 0"),
        ({"--video": None}, "--video needs --driver robosuite"),
        ({"--driver-option": "warp=9"}, "driver 'mock' has no option(s) ['warp']"),
        ({"--strategy": "rtc"}, "--strategy rtc needs a denoising policy"),
        ({"--policy-option": "temperature=2"}, "has no inference option ['temperature']"),
    ],
)
def test_run_command_refuses_bad_input_with_exit_code_2(overrides, message, checkpoint, tmp_path, capsys):
    args = {
        "--checkpoint": str(checkpoint),
        "--driver": "mock",
        "--ticks": "5",
        "--out": str(tmp_path / "o"),
        **overrides,
    }
    argv = [x for flag, value in args.items() for x in ([flag] if value is None else [flag, value])]
    assert main(["run", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_run_command_refuses_a_bad_strategy_a_bad_checkpoint_and_a_used_out_dir(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's choices: exit code 2, the valid ones listed
        main(["run", "--checkpoint", str(checkpoint), "--strategy", "magic"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "invalid choice: 'magic'" in err
    assert all(name in err for name in ("replace", "temporal_ensemble", "rti", "rtc"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    (broken / "normalizer.safetensors").write_bytes(b"")
    assert main(["run", "--checkpoint", str(broken), "--driver", "mock", "--out", str(tmp_path / "o")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert main(["run", "--checkpoint", str(checkpoint), "--driver", "mock", "--out", str(used)]) == 2
    assert "is not an empty directory" in capsys.readouterr().err and (used / "notes.txt").read_text() == "mine"


def test_run_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    from robopolicy.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    for action in sub._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, f"{action.option_strings} has no help"
    for word in ("telemetry.jsonl", "summary.json", "telemetry.png", "video.mp4", "Exit code"):
        assert word in text


# ---------------------------------------------------------------------- robosuite (slow)
@pytest.mark.slow
def test_a_short_closed_loop_robosuite_run_with_the_quick_start_sized_policy(tmp_path, capsys):
    """The quick-start-sized Diffusion Policy (its preset; untrained: this exercises the path,
    success needs the trained checkpoint) drives robosuite's Lift at 20 Hz with RTC, and the
    command writes the telemetry, the plot and the video."""
    pytest.importorskip("robosuite")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from robopolicy.policies.diffusion import DiffusionConfig, DiffusionPolicy

    cfg = DiffusionConfig.from_preset(
        REPO / "configs/policies/diffusion_unet_lowdim_small.yaml", OBS, osc_pose_action_spec()
    )
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(0)
    action = rng.uniform(-0.5, 0.5, (256, 7))
    action[:, 6] = rng.choice([-1.0, 1.0], 256)
    policy.fit_normalizer({"state": rng.normal(size=(256, 19)), "action": action})
    policy.save(tmp_path / "policy")
    out = tmp_path / "run"
    argv = ["run", "--checkpoint", str(tmp_path / "policy"), "--driver", "robosuite", "--task", "Lift", "--hz", "20",
            "--strategy", "rtc", "--ticks", "40", "--out", str(out), "--video", "--chunk-deadline-ms", "5000", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["end_reason"] == "max_ticks" and summary["faults"] == []
    assert (
        summary["ticks"] + summary["skipped_ticks"] == 40 and summary["ticks"] >= 30
    )  # the video context is made before
    assert summary["chunks"] >= 2 and summary["hz_measured"] == pytest.approx(20.0, rel=0.2)
    assert (out / "video.mp4").stat().st_size > 0 and (out / "telemetry.png").exists()
    assert math.isfinite(summary["inference_ms"]["p50"])
