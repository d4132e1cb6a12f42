"""Test doubles for the control tests."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock that only moves when something sleeps; records every sleep."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, dt: float) -> None:
        self.sleeps.append(dt)
        self.now += dt
