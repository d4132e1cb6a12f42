"""The chunk scheduler on synthetic chunks: stale actions never execute (late chunks, skipped
ticks), the tick alignment is the chunk executor's, temporal ensembling's weights (hand-computed),
replace / RTC takeover and the boundary jumps, counters, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robopolicy.control.scheduler import ChunkScheduler, MergeStrategy, SchedulerConfig
from robopolicy.types import ChunkTiming

TIMING = ChunkTiming(horizon=8, n_obs_steps=2, n_action_steps=4)  # keeps indices 1..7: 7 ticks per chunk


def tagged(obs_tick: int, chunk_id: float, timing: ChunkTiming = TIMING) -> np.ndarray:
    """(H, 2): column 0 is the tick each action is meant for, column 1 the chunk's id."""
    ticks = obs_tick + np.arange(timing.horizon) - (timing.n_obs_steps - 1)
    return np.stack([ticks, np.full(timing.horizon, chunk_id)], 1).astype(np.float32)


def constant(value: float, dim: int = 2) -> np.ndarray:
    return np.full((TIMING.horizon, dim), value, np.float32)


@pytest.mark.parametrize("strategy", [m.value for m in MergeStrategy])
def test_a_stale_action_is_never_executed(strategy):
    sched = ChunkScheduler(TIMING, SchedulerConfig(strategy=strategy))
    sched.add_chunk(tagged(0, 1), obs_tick=0, available_tick=0)
    executed = {t: sched.next_action(t) for t in range(0, 4)}
    if strategy == "rtc":
        sched.request(3, delay=2)
    # computed from tick 3's observation, but only available at tick 6: its actions for 3, 4, 5 are stale
    result = sched.add_chunk(tagged(3, 2), obs_tick=3, available_tick=6)
    assert result.stale == 3 and sched.counters.stale_dropped == 3
    executed.update({t: sched.next_action(t) for t in range(4, 7)})
    # ticks skipped by the caller (an overrun): their queued actions are dropped, never run late
    executed[9] = sched.next_action(9)
    assert sched.counters.stale_dropped == 3 + 2  # ticks 7 and 8
    for t, a in executed.items():
        assert a is not None and a[0] == t, f"tick {t} executed an action meant for tick {a[0]}"
    assert [executed[t][1] for t in (0, 3, 4, 5)] == [1, 1, 1, 1]  # the old chunk while the new one ran
    if strategy == "temporal_ensemble":
        assert 1 < executed[6][1] < 2 and executed[9][1] == 2  # tick 6: both chunks; 9: only the new
    else:
        assert [executed[t][1] for t in (6, 9)] == [2, 2]
    assert sched.counters.executed == len(executed)


def test_the_first_kept_action_is_index_to_minus_1_aligned_with_the_obs_tick():
    timing = ChunkTiming(horizon=10, n_obs_steps=3, n_action_steps=4)
    sched = ChunkScheduler(timing)
    chunk = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    sched.add_chunk(chunk, obs_tick=20, available_tick=20)
    assert sched.next_action(20)[0] == 2  # index To-1
    assert sched.remaining(21) == 7  # indices 3..9: all H - To + 1 actions are kept by default
    short = ChunkScheduler(timing, SchedulerConfig(keep=4))  # keep = Ta: the chunk executor's slice
    short.add_chunk(chunk, obs_tick=20, available_tick=20)
    assert [short.next_action(t)[0] for t in range(20, 24)] == [2, 3, 4, 5] and short.next_action(24) is None


def test_an_empty_queue_returns_none_and_counts_the_tick():
    sched = ChunkScheduler(TIMING, SchedulerConfig(keep=2))
    assert sched.next_action(0) is None
    sched.add_chunk(constant(1.0), obs_tick=1, available_tick=1)
    assert sched.next_action(1) is not None and sched.next_action(2) is not None
    assert sched.next_action(3) is None and sched.next_action(4) is None
    assert sched.counters.empty_ticks == 3 and sched.counters.executed == 2


def test_temporal_ensembling_weights_are_acts():
    """ACT: a_t = sum_i w_i a_i / sum_i w_i, w_i = exp(-m i), i = 0 the oldest chunk covering t."""
    sched = ChunkScheduler(TIMING, SchedulerConfig(strategy="temporal_ensemble", ensemble_coeff=0.5))
    for k, value in enumerate((1.0, 2.0, 4.0)):  # chunks from ticks 0, 1, 2, each available at once
        sched.add_chunk(constant(value), obs_tick=k, available_tick=k)
    # tick 2 is covered by all three: (1 * 1 + 2 * e^-0.5 + 4 * e^-1) / (1 + e^-0.5 + e^-1), by hand:
    # e^-0.5 = 0.6065307, e^-1 = 0.3678794 -> 3.6845790 / 1.9744101 = 1.8661671
    assert sched.planned(2)[0] == pytest.approx(1.8661671, abs=1e-6)
    # the chunk of tick k covers ticks k .. k+6: tick 7 has those of ticks 1 and 2 (values 2, 4)
    assert sched.planned(7)[0] == pytest.approx((2 + 4 * 0.6065307) / 1.6065307, abs=1e-6)
    assert sched.planned(8)[0] == pytest.approx(4.0)  # only the newest chunk reaches tick 8
    # m > 0: the oldest prediction weighs most (below the plain mean 7/3); m < 0: the newest
    assert sched.planned(2)[0] < 7 / 3
    newest = ChunkScheduler(TIMING, SchedulerConfig(strategy="temporal_ensemble", ensemble_coeff=-0.5))
    for k, value in enumerate((1.0, 2.0, 4.0)):
        newest.add_chunk(constant(value), obs_tick=k, available_tick=k)
    assert newest.planned(2)[0] > 7 / 3
    # executing consumes the ensemble; the first tick a new chunk changes records the jump of the plan
    assert sched.next_action(2)[0] == pytest.approx(1.8661671, abs=1e-6)
    before = sched.planned(3)[0]
    result = sched.add_chunk(constant(8.0), obs_tick=3, available_tick=3)
    assert result.takeover_tick == 3 and result.jump.delta[0] == pytest.approx(sched.planned(3)[0] - before)


def test_replace_takes_over_at_the_available_tick_and_records_the_jump():
    sched = ChunkScheduler(TIMING)
    sched.add_chunk(constant(0.0), obs_tick=0, available_tick=0)
    assert sched.next_action(0)[0] == 0 and sched.next_action(1)[0] == 0
    result = sched.add_chunk(constant(3.0), obs_tick=1, available_tick=2)  # one tick late
    assert result.takeover_tick == 2 and result.stale == 1
    np.testing.assert_allclose(result.jump.delta, [3.0, 3.0])
    assert sched.jumps == [result.jump] and result.jump.norm == pytest.approx(math.sqrt(18))
    assert sched.next_action(2)[0] == 3.0
    assert sched.counters.replaced == 5  # the old plan for ticks 2..6
    stats = sched.stats()
    assert stats["jumps"] == 1 and stats["jump_max"] == pytest.approx(math.sqrt(18)) and stats["chunks"] == 2


def test_rtc_reports_the_frozen_prefix_and_replaces_after_it():
    sched = ChunkScheduler(TIMING, SchedulerConfig(strategy="rtc"))
    first = sched.request(0, delay=2)
    assert first.executed is None and first.frozen.shape == (0, 0) and first.in_bound
    sched.add_chunk(tagged(0, 1), obs_tick=0, available_tick=0)
    for t in range(4):
        sched.next_action(t)
    req = sched.request(4, delay=2)
    assert req.executed == 4 and req.in_bound  # d = 2 <= s = 4 <= H - d = 5
    np.testing.assert_array_equal(req.frozen, [[4, 1], [5, 1]])  # what executes while inference runs
    # the new chunk arrives in time (tick 5): ticks 4, 5 stay the old chunk's, 6 on are the new one's
    result = sched.add_chunk(tagged(4, 2), obs_tick=4, available_tick=5)
    assert result.takeover_tick == 6 and sched.counters.prefix_kept == 1 and result.stale == 1
    np.testing.assert_array_equal(result.jump.delta, [0, 1])
    assert [tuple(sched.next_action(t)) for t in range(4, 8)] == [(4, 1), (5, 1), (6, 2), (7, 2)]
    # arriving after its frozen prefix: the takeover is the available tick, the passed ticks are stale
    sched.request(8, delay=1)
    assert sched.request(8, delay=1).executed == 4
    late = sched.add_chunk(tagged(8, 3), obs_tick=8, available_tick=10)
    assert late.takeover_tick == 10 and late.stale == 2
    assert not sched.request(9, delay=4).in_bound  # s = 1 < d = 4


def test_rtc_fills_frozen_ticks_the_queue_has_no_action_for():
    sched = ChunkScheduler(TIMING, SchedulerConfig(strategy="rtc"))
    sched.add_chunk(tagged(0, 1), obs_tick=0, available_tick=0)  # ticks 0..6
    for t in range(5):
        sched.next_action(t)
    req = sched.request(5, delay=4)
    np.testing.assert_array_equal(req.frozen, [[5, 1], [6, 1]])  # the queue runs out after tick 6
    result = sched.add_chunk(tagged(5, 2), obs_tick=5, available_tick=5)
    assert result.takeover_tick == 7 and result.jump is None  # no old plan at tick 7 to jump from
    assert [tuple(sched.next_action(t)) for t in range(5, 10)] == [(5, 1), (6, 1), (7, 2), (8, 2), (9, 2)]


def test_an_outdated_chunk_is_dropped_whole():
    sched = ChunkScheduler(TIMING)
    sched.add_chunk(tagged(5, 2), obs_tick=5, available_tick=6)
    result = sched.add_chunk(tagged(3, 1), obs_tick=3, available_tick=7)  # older obs, arrived later
    assert not result.merged and sched.counters.outdated == 1
    assert sched.planned(7)[1] == 2


def test_reset_clears_queue_and_counters():
    sched = ChunkScheduler(TIMING)
    sched.add_chunk(constant(1.0), obs_tick=0, available_tick=0)
    sched.next_action(0)
    sched.reset()
    assert sched.remaining(0) == 0 and sched.counters.executed == 0 and sched.jumps == []
    assert sched.next_action(0) is None  # ticks start over after a reset


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown merge strategy"):
        SchedulerConfig(strategy="average")
    with pytest.raises(ValueError, match="keep must be <="):
        ChunkScheduler(TIMING, SchedulerConfig(keep=8))
    sched = ChunkScheduler(TIMING)
    with pytest.raises(ValueError, match=r"shape \(8, Da\)"):
        sched.add_chunk(np.zeros((7, 2)), obs_tick=0, available_tick=0)
    with pytest.raises(ValueError, match="before the chunk's obs_tick"):
        sched.add_chunk(constant(0.0), obs_tick=5, available_tick=4)
    with pytest.raises(ValueError, match="finite"):
        sched.add_chunk(constant(float("nan")), obs_tick=0, available_tick=0)
    sched.next_action(3)
    with pytest.raises(ValueError, match="not after the last tick"):
        sched.next_action(3)
    with pytest.raises(ValueError, match="delay must be >= 0"):
        sched.request(4, delay=-1)
