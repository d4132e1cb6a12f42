"""Arm drivers: the :class:`Driver` contract, its errors, and the registry.

``make_driver("mock" | "robosuite" | "so101" | "so100" | "koch" | "lerobot", **options)`` builds
one; the driver modules are imported on first use (``robosuite`` needs the ``sim`` extra only when
it connects, the lerobot drivers need lerobot, in the ``real`` env, only when they connect).
"""

from robopolicy.control.drivers.base import (
    Disconnected,
    Driver,
    DriverError,
    EpisodicDriver,
    FaultDetected,
    InvalidCommand,
    Reading,
    ReadTimeout,
    panda_observation_shapes,
)
from robopolicy.control.drivers.registry import (
    BUILTIN_DRIVERS,
    driver_class,
    known_drivers,
    make_driver,
    register_driver,
)

__all__ = [
    "BUILTIN_DRIVERS",
    "Disconnected",
    "Driver",
    "DriverError",
    "EpisodicDriver",
    "FaultDetected",
    "InvalidCommand",
    "ReadTimeout",
    "Reading",
    "driver_class",
    "known_drivers",
    "make_driver",
    "panda_observation_shapes",
    "register_driver",
]
