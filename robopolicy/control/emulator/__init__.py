"""Emulated hardware for tests and dry runs without an arm: a Feetech STS3215 servo bus on a
pseudo-terminal (:mod:`robopolicy.control.emulator.feetech`)."""
