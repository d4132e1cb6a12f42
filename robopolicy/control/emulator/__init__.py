"""Emulated hardware for tests and dry runs without an arm: servo buses on a pseudo-terminal,
Feetech STS3215 (:mod:`robopolicy.control.emulator.feetech`, the SO-101) and Dynamixel X-series
(:mod:`robopolicy.control.emulator.dynamixel`, the Koch), sharing :mod:`robopolicy.control.emulator.base`."""
