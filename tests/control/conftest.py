"""Shared fixtures for the control tests: a fake monotonic clock and the Panda profile."""

from __future__ import annotations

import pytest

from robopolicy.control.profile import HardwareProfile, load_profile
from tests.control.fakes import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def panda() -> HardwareProfile:
    return load_profile("robosuite_panda")
