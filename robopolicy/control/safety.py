"""The safety filter: the last step between the controller and the driver.

:meth:`SafetyFilter.filter` takes the action the controller wants to send and the newest driver
reading, and returns the action to send plus what it changed::

    safe, events = safety.filter(action, reading, now=time.monotonic())
    driver.write(safe)

Faults make it send the **hold action**: what ``Driver.hold()`` sends. In a delta end-effector
space (``osc_pose``) that is zero arm motion; in an absolute joint space (``joint_pos``) it is the
joints' present reading. Either way the gripper stays at its last command.

=============== =====================================================================
estop           :meth:`SafetyFilter.estop` was called; latched until :meth:`reset_estop`
watchdog        a :class:`Watchdog` given to the filter is past its deadline
nan_action      the action has NaN or inf
nan_reading     a reading the filter uses has NaN or inf: ``joint_pos``, ``eef_pos`` (delta
                spaces, for the workspace) or ``gripper_pos`` (joint spaces)
joint_limit     a joint reads more than ``joints.tolerance`` past its limit
=============== =====================================================================

Otherwise it clamps, in this order (the later wins where they conflict):

=============== =====================================================================
action_limit    a dim outside the action spec's limits is clipped (discrete dims snapped)
gripper_limit   the gripper dim is clipped to the profile's ``gripper.low/high``
max_delta       an arm dim changes by at most ``max_delta[dim]`` from the last sent action
                (joint spaces: the first action of a run, or after an e-stop reset, from the
                present reading, so a far first target cannot jump)
gripper_rate    the gripper changes by at most ``gripper.max_delta`` from the last sent
                action; a discrete gripper that may not switch keeps its last command
workspace       a position delta that would take the end effector (``eef_pos``) out of the
                workspace box is shortened to reach its face; outside the box, the
                components pushing further out are zeroed (delta spaces only)
=============== =====================================================================

In a joint space the action limits are the joint limits, so ``action_limit`` clamps joint
targets into them.

Every kind is counted in :attr:`SafetyFilter.counters` once per ``filter`` call it happened in
(``hold`` counts the calls that sent the hold action). Time is passed in (monotonic seconds);
nothing here sleeps or starts a thread.

A :class:`Watchdog` trips when it was not fed for longer than its deadline. The controller feeds
one when a fresh chunk arrives, another when the driver returns a new frame (``reading.seq``
advanced), and gives both to the filter, which holds while either is tripped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from robopolicy.control.drivers.base import Reading
from robopolicy.control.profile import ActionKind, HardwareProfile
from robopolicy.types import ActionSpec

FAULT_KINDS = ("estop", "watchdog", "nan_action", "nan_reading", "joint_limit")
"""Event kinds after which the filter sends the hold action."""
CLAMP_KINDS = ("action_limit", "gripper_limit", "max_delta", "gripper_rate", "workspace")
"""Event kinds that change the action and send it."""

_EPS = 1e-9


@dataclass(frozen=True)
class SafetyEvent:
    """Something the filter did on one call: ``kind`` (one of :data:`FAULT_KINDS` or
    :data:`CLAMP_KINDS`), the action dims, joints or keys involved, and a readable detail."""

    kind: str
    detail: str
    dims: tuple[str, ...] = ()

    @property
    def fault(self) -> bool:
        """True for a fault (the hold action was sent)."""
        return self.kind in FAULT_KINDS

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class WatchdogTrip:
    """A watchdog past its deadline: ``age_s`` seconds since it was last fed."""

    name: str
    age_s: float
    deadline_s: float

    def __str__(self) -> str:
        return (
            f"watchdog {self.name!r}: nothing for {self.age_s * 1e3:.1f} ms (deadline {self.deadline_s * 1e3:.1f} ms)"
        )


class Watchdog:
    """Trips when not fed for more than ``deadline_s`` seconds.

    Disarmed until the first :meth:`feed`. :meth:`check` returns a :class:`WatchdogTrip` on every
    call while the last feed is more than ``deadline_s`` old (exactly ``deadline_s`` is not late),
    else None; :attr:`trips` counts the times it went from fed to tripped.
    """

    def __init__(self, deadline_s: float, name: str = "watchdog") -> None:
        if not deadline_s > 0:
            raise ValueError(f"watchdog {name!r}: deadline_s must be > 0, got {deadline_s}")
        self.deadline_s = float(deadline_s)
        self.name = name
        self.last_fed: float | None = None
        self.tripped = False
        self.trips = 0

    @property
    def armed(self) -> bool:
        return self.last_fed is not None

    def feed(self, now: float) -> None:
        """Something fresh arrived at monotonic time ``now`` (an older time than the last feed is ignored)."""
        self.last_fed = now if self.last_fed is None else max(self.last_fed, now)
        self.tripped = False

    def disarm(self) -> None:
        """Stop watching (e.g. between episodes) until the next :meth:`feed`."""
        self.last_fed = None
        self.tripped = False

    def check(self, now: float) -> WatchdogTrip | None:
        """The trip if the last feed is more than ``deadline_s`` before ``now``, else None."""
        if self.last_fed is None:
            return None
        age = now - self.last_fed
        if age <= self.deadline_s:
            return None
        if not self.tripped:
            self.tripped = True
            self.trips += 1
        return WatchdogTrip(self.name, age, self.deadline_s)


class SafetyFilter:
    """Guards, limits and e-stop for one arm (module docstring).

    Args:
        profile: the arm's hardware profile (limits, workspace, rates, home gripper).
        action_spec: the actions to filter; default the profile's. Its dims must be the profile's.
        watchdogs: checked on every :meth:`filter` call (which then needs ``now``).
    """

    def __init__(
        self,
        profile: HardwareProfile,
        action_spec: ActionSpec | None = None,
        watchdogs: Iterable[Watchdog] = (),
    ) -> None:
        spec = action_spec or profile.action_spec
        if spec.names != profile.action_spec.names:
            raise ValueError(
                f"safety filter: action dims {list(spec.names)} are not those of profile {profile.name!r} "
                f"{list(profile.action_spec.names)}"
            )
        self.profile = profile
        self.spec = spec
        self.watchdogs = list(watchdogs)
        self._low, self._high = np.asarray(spec.low), np.asarray(spec.high)
        self._max_delta = profile.max_delta_vector(spec)
        self._g = spec.names.index(profile.gripper.dim)
        self._g_discrete = spec.discrete[self._g]
        g = profile.gripper
        if self._g_discrete and (g.low, g.high) != (spec.low[self._g], spec.high[self._g]):
            raise ValueError(
                f"safety filter: the gripper dim {g.dim!r} is discrete; profile {profile.name!r} gripper.low/high "
                f"[{g.low}, {g.high}] must equal its action limits [{spec.low[self._g]}, {spec.high[self._g]}]"
            )
        self._arm = np.array([i != self._g for i in range(spec.dim)])
        self._absolute = profile.action_kind is ActionKind.ABSOLUTE_JOINT
        ws = profile.workspace
        if ws is not None:
            self._ws_idx = [spec.names.index(d) for d in ws.dims]
            self._ws_low, self._ws_high = np.asarray(ws.low), np.asarray(ws.high)
        self._keys = ("joint_pos",) + (("eef_pos",) if ws is not None else ()) + (("gripper_pos",) * self._absolute)
        self._present: np.ndarray | None = None  # joint spaces: the newest finite reading (Da,)
        self._anchored = False  # joint spaces: last_action was set from a reading or a sent action
        self._jl_low = np.asarray(profile.joints.lower) - profile.joints.tolerance
        self._jl_high = np.asarray(profile.joints.upper) + profile.joints.tolerance
        self.counters: dict[str, int] = dict.fromkeys(FAULT_KINDS + CLAMP_KINDS + ("hold",), 0)
        """Calls in which each kind happened; ``hold``: calls that sent the hold action."""
        self.estop_reason: str | None = None
        self.last_action: np.ndarray = self._rest_action(profile.home.gripper)
        """The action the latest call returned (before any call: the hold action at the home gripper)."""

    # ------------------------------------------------------------------ e-stop
    @property
    def estopped(self) -> bool:
        return self.estop_reason is not None

    def estop(self, reason: str) -> None:
        """Latch the e-stop: every later :meth:`filter` returns the hold action until :meth:`reset_estop`."""
        if self.estop_reason is None:
            self.estop_reason = str(reason) or "e-stop"

    def reset_estop(self) -> None:
        """Release the e-stop. Motion restarts from rest: the next action is rate-limited from the
        hold action (joint spaces: from the present reading at the next call)."""
        self.estop_reason = None
        self.last_action = self.hold_action()
        self._anchored = False

    def reset(self, gripper: float | None = None) -> None:
        """A new episode: the last sent action becomes the hold action with ``gripper`` (default
        the profile's home gripper). The e-stop and the counters are kept. In a joint space the
        next call anchors the last sent action to the present reading (joints and gripper)."""
        self.last_action = self._rest_action(self.profile.home.gripper if gripper is None else gripper)
        self._present = None
        self._anchored = False

    # ------------------------------------------------------------------ filter
    def hold_action(self) -> np.ndarray:
        """The gripper at its last sent command and: zero arm motion (delta spaces), or the joints'
        newest finite reading (joint spaces; before any reading, the last sent action's): ``(Da,)`` float64."""
        if not self._absolute:
            return self._rest_action(self.last_action[self._g])
        out = (self.last_action if self._present is None else self._present).copy()
        out[self._g] = self.last_action[self._g]
        return out

    def filter(
        self, action: Any, reading: Reading | Mapping[str, Any], now: float | None = None
    ) -> tuple[np.ndarray, list[SafetyEvent]]:
        """The action to send instead of ``action`` ``(Da,)``, and the events of this call.

        ``reading`` is the newest :class:`Reading` (or its ``obs``); ``joint_pos`` is used, and
        ``eef_pos`` (delta spaces) or ``gripper_pos`` (joint spaces). ``now`` (monotonic seconds) is needed when the filter has watchdogs.
        """
        a = np.array(action, dtype=np.float64)
        if a.shape != (self.spec.dim,):
            raise ValueError(f"safety filter: action must have shape ({self.spec.dim},), got {a.shape}")
        if self.watchdogs and now is None:
            raise ValueError("safety filter: pass now= (monotonic seconds) to check its watchdogs")
        obs = reading.obs if isinstance(reading, Reading) else reading
        self._observe(obs)
        events = self._faults(a, obs, now)
        if events:
            safe = self.hold_action()
            self.counters["hold"] += 1
        else:
            eef = np.asarray(obs["eef_pos"], dtype=np.float64) if "eef_pos" in self._keys else None
            safe = self._clamp(a, eef, events)
        for kind in {e.kind for e in events}:
            self.counters[kind] += 1
        self.last_action = safe
        return safe.copy(), events

    def hold(
        self, reading: Reading | Mapping[str, Any], now: float | None = None
    ) -> tuple[np.ndarray, list[SafetyEvent]]:
        """The hold action sent on purpose (the controller has no action for this tick): the fault
        guards run and are counted as in :meth:`filter` (their events returned), no clamp applies
        (stopping is always allowed), and the hold action becomes the last sent action."""
        if self.watchdogs and now is None:
            raise ValueError("safety filter: pass now= (monotonic seconds) to check its watchdogs")
        obs = reading.obs if isinstance(reading, Reading) else reading
        self._observe(obs)
        safe = self.hold_action()
        events = self._faults(safe, obs, now)
        self.counters["hold"] += 1
        for kind in {e.kind for e in events}:
            self.counters[kind] += 1
        self.last_action = safe
        return safe.copy(), events

    def _faults(self, a: np.ndarray, obs: Mapping[str, Any], now: float | None) -> list[SafetyEvent]:
        events = []
        if self.estop_reason is not None:
            events.append(SafetyEvent("estop", f"e-stop latched: {self.estop_reason}"))
        for dog in self.watchdogs:
            trip = dog.check(now)  # type: ignore[arg-type]  # checked in filter()
            if trip is not None:
                events.append(SafetyEvent("watchdog", str(trip), (trip.name,)))
        bad = [self.spec.names[i] for i in np.flatnonzero(~np.isfinite(a))]
        if bad:
            events.append(SafetyEvent("nan_action", f"non-finite action dims {bad}: {a.tolist()}", tuple(bad)))
        values = {key: self._value(obs, key) for key in self._keys}
        bad = [k for k, v in values.items() if not np.all(np.isfinite(v))]
        if bad:
            events.append(SafetyEvent("nan_reading", f"non-finite reading of {bad}", tuple(bad)))
        elif len(values["joint_pos"]) != len(self._jl_low):
            raise ValueError(
                f"safety filter: joint_pos has {len(values['joint_pos'])} joints, profile {self.profile.name!r} "
                f"has {len(self._jl_low)}"
            )
        else:
            q = values["joint_pos"]
            out = np.flatnonzero((q < self._jl_low) | (q > self._jl_high))
            if len(out):
                names = self.profile.joints.names
                detail = ", ".join(
                    f"{names[j]}={q[j]:.4f} (limits [{self.profile.joints.lower[j]}, {self.profile.joints.upper[j]}])"
                    for j in out
                )
                events.append(
                    SafetyEvent("joint_limit", f"joints past their limits: {detail}", tuple(names[j] for j in out))
                )
        return events

    def _value(self, obs: Mapping[str, Any], key: str) -> np.ndarray:
        if key not in obs:
            raise KeyError(f"safety filter: the reading has no {key!r} (has {sorted(obs)})")
        return np.asarray(obs[key], dtype=np.float64).reshape(-1)

    def _observe(self, obs: Mapping[str, Any]) -> None:
        """Joint spaces: keep the newest finite reading of the action dims, and anchor the last sent
        action to it at the first call of a run."""
        if not self._absolute:
            return
        q, grip = self._value(obs, "joint_pos"), self._value(obs, "gripper_pos")
        if len(q) != len(self._jl_low) or len(grip) != 1:
            raise ValueError(
                f"safety filter: joint_pos has {len(q)} joints and gripper_pos {len(grip)} values; profile "
                f"{self.profile.name!r} has {len(self._jl_low)} joints and one gripper"
            )
        present = np.concatenate([q, grip])
        if not np.all(np.isfinite(present)):
            return
        self._present = present
        if not self._anchored:
            self.last_action = present.copy()
            self._anchored = True

    def _clamp(self, a: np.ndarray, eef_pos: np.ndarray | None, events: list[SafetyEvent]) -> np.ndarray:
        out = self.spec.clip(a.copy())
        outside = (a < self._low - _EPS) | (a > self._high + _EPS)
        self._note(events, "action_limit", a, out, outside)

        g, gl = self._g, self.profile.gripper
        before = out.copy()
        out[g] = np.clip(out[g], gl.low, gl.high)
        self._note(events, "gripper_limit", before, out)

        before = out.copy()
        last = self.last_action
        out[self._arm] = np.clip(
            out[self._arm], last[self._arm] - self._max_delta[self._arm], last[self._arm] + self._max_delta[self._arm]
        )
        self._note(events, "max_delta", before, out)

        before = out.copy()
        if abs(out[g] - last[g]) > gl.max_delta + _EPS:
            out[g] = last[g] if self._g_discrete else last[g] + np.sign(out[g] - last[g]) * gl.max_delta
        self._note(events, "gripper_rate", before, out)

        if eef_pos is None:
            return out
        before = out.copy()
        mpu = self.profile.workspace.metres_per_unit  # type: ignore[union-attr]  # eef_pos only with a workspace
        lo = np.minimum((self._ws_low - eef_pos) / mpu, 0.0)  # outside below: no further down
        hi = np.maximum((self._ws_high - eef_pos) / mpu, 0.0)
        out[self._ws_idx] = np.clip(out[self._ws_idx], lo, hi)
        self._note(events, "workspace", before, out, extra=f" at eef_pos {np.round(eef_pos, 4).tolist()}")
        return out

    def _note(
        self,
        events: list[SafetyEvent],
        kind: str,
        before: np.ndarray,
        after: np.ndarray,
        changed: np.ndarray | None = None,
        extra: str = "",
    ) -> None:
        changed = np.abs(after - before) > _EPS if changed is None else changed
        idx = np.flatnonzero(changed)
        if len(idx):
            dims = tuple(self.spec.names[i] for i in idx)
            detail = ", ".join(f"{self.spec.names[i]} {before[i]:.4g} -> {after[i]:.4g}" for i in idx)
            events.append(SafetyEvent(kind, detail + extra, dims))

    def _rest_action(self, gripper: float) -> np.ndarray:
        """The hold action with ``gripper`` before any reading: zero arm motion, or the home joints."""
        if self._absolute:
            rest = np.zeros(self.spec.dim)
            rest[self._arm] = self.profile.home.joint_pos
        else:
            rest = np.clip(np.zeros(self.spec.dim), self._low, self._high)
        rest[self._g] = gripper
        return rest


__all__ = ["CLAMP_KINDS", "FAULT_KINDS", "SafetyEvent", "SafetyFilter", "Watchdog", "WatchdogTrip"]
