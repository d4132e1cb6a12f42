"""What the emulated servo buses share: a servo with a register memory whose joint follows its goal
at a limited speed, injected faults, serving a protocol over a pseudo-terminal from a thread, and
the same bus served from a child process.

A protocol module (:mod:`~robopolicy.control.emulator.feetech`,
:mod:`~robopolicy.control.emulator.dynamixel`) subclasses :class:`RegisterServo` (its control
table, its signed-number encoding, which way the homing offset counts) and :class:`EmulatedBus`
(its framing: :meth:`EmulatedBus.take_packet`, :meth:`EmulatedBus.handle`).

Faults (:class:`Fault`, :meth:`EmulatedBus.inject`): ``NO_REPLY`` (the servo neither answers nor
acts: unplugged), ``BAD_CHECKSUM`` (its answers carry a wrong checksum or CRC), ``STOP_AFTER`` (it
answers ``after`` more packets addressed to it, then goes silent), ``STUCK`` (it answers, but its
joint no longer moves).
"""

from __future__ import annotations

import enum
import os
import select
import threading
import time
import tty
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


class Fault(enum.Enum):
    """A servo's injected fault (module docstring)."""

    NO_REPLY = "no_reply"
    BAD_CHECKSUM = "bad_checksum"
    STOP_AFTER = "stop_after"
    STUCK = "stuck"


@dataclass
class FaultState:
    kind: Fault
    left: int = 0  # STOP_AFTER: packets still answered


class RegisterServo:
    """One emulated servo: a register memory and a joint that follows its goal.

    ``Present_Position = actual + HOMING_SIGN * Homing_Offset``; a ``Goal_Position`` g commands
    ``actual = g - HOMING_SIGN * Homing_Offset`` (g clamped to the position limits where
    :meth:`limits_apply`). With torque on the joint moves toward it at most ``speed`` ticks/s;
    with torque off it stays (or is :meth:`drive`-n by hand) and the goal follows the position,
    so enabling torque holds.
    """

    REGISTERS: ClassVar[dict[str, tuple[int, int]]] = {}
    """``name: (address, bytes)``: the control table."""
    DEFAULTS: ClassVar[dict[str, int]] = {}
    HOMING_SIGN: ClassVar[int] = 1
    MEMORY: ClassVar[int] = 256

    def __init__(self, id_: int, position: float = 2048.0, speed: float = 3000.0) -> None:
        self.mem = bytearray(self.MEMORY)
        for name, value in self.DEFAULTS.items():
            self.set(name, value)
        self.set("ID", id_)
        self.actual = float(position)
        """Encoder position [ticks], before the homing offset."""
        self.speed = float(speed)
        self.velocity = 0.0
        self.set("Goal_Position", self._present_of(self.actual))
        self.sync()

    # ------------------------------------------------------------------ registers
    def encode(self, name: str, value: int) -> int:
        """The raw register value of ``value`` (signed registers: the protocol's encoding)."""
        return int(value)

    def decode(self, name: str, raw: int) -> int:
        return raw

    def get(self, name: str) -> int:
        """Register ``name`` as a number (signed registers decoded)."""
        addr, n = self.REGISTERS[name]
        return self.decode(name, int.from_bytes(self.mem[addr : addr + n], "little"))

    def set(self, name: str, value: int) -> None:
        """Store ``value`` in register ``name`` (no side effects; see :meth:`write`)."""
        addr, n = self.REGISTERS[name]
        raw = self.encode(name, value)
        self.mem[addr : addr + n] = (raw & ((1 << (8 * n)) - 1)).to_bytes(n, "little")

    @property
    def id(self) -> int:
        return self.get("ID")

    @property
    def homing_offset(self) -> int:
        return self.get("Homing_Offset")

    @property
    def torque(self) -> bool:
        return bool(self.mem[self.REGISTERS["Torque_Enable"][0]])

    @property
    def present(self) -> int:
        """``Present_Position`` as the servo reports it."""
        return self.get("Present_Position")

    @property
    def goal(self) -> int:
        return self.get("Goal_Position")

    def write(self, addr: int, data: bytes) -> None:
        """A WRITE of ``data`` at ``addr``: store it, then apply what the registers mean."""
        torque_before = self.torque
        self.mem[addr : addr + len(data)] = data
        if not torque_before and self.torque:  # torque on: hold where it is
            self.set("Goal_Position", self._present_of(self.actual))
        self.sync()

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.mem[addr : addr + n])

    # ------------------------------------------------------------------ motion
    def _present_of(self, actual: float) -> int:
        return round(actual) + self.HOMING_SIGN * self.homing_offset

    def limits_apply(self) -> bool:
        lo, hi = self.get("Min_Position_Limit"), self.get("Max_Position_Limit")
        return bool(lo or hi)

    def target(self) -> float:
        """The encoder position the goal commands, inside the position limits where they apply."""
        goal = self.goal
        if self.limits_apply():
            goal = min(max(goal, self.get("Min_Position_Limit")), self.get("Max_Position_Limit"))
        return float(goal - self.HOMING_SIGN * self.homing_offset)

    def advance(self, dt: float, stuck: bool = False) -> None:
        """Move ``dt`` seconds toward the goal (torque on), at most :attr:`speed` ticks/s."""
        before = self.actual
        if self.torque and not stuck and dt > 0:
            step = self.target() - self.actual
            limit = self.speed * dt
            self.actual += max(-limit, min(limit, step))
        self.velocity = (self.actual - before) / dt if dt > 0 else 0.0
        self.sync()

    def drive(self, position: float) -> None:
        """Put the joint at encoder ``position`` (by hand: a leader arm); its goal follows with torque off."""
        self.velocity = 0.0
        self.actual = float(position)
        self.sync()

    def sync(self) -> None:
        """The present registers from the joint's state."""
        present = self._present_of(self.actual)
        self.set("Present_Position", present)
        self.set("Moving", int(self.torque and abs(self.target() - self.actual) > 1.0))
        if not self.torque:
            self.set("Goal_Position", present)
        self.sync_extra()

    def sync_extra(self) -> None:
        """Protocol-specific present registers (velocity, load, current)."""


class EmulatedBus:
    """Servos on an emulated serial bus, served from a thread on a pty.

    Args:
        positions: ``{servo id: initial encoder position}`` (ticks, before any homing offset).
        speed: the servos' largest speed [ticks/s].
        script: ``script(t) -> {id: encoder position}``, called before each packet with the seconds
            since :meth:`start`: a leader arm whose joints a hand moves (torque off).
        clock: monotonic seconds (default ``time.monotonic``).
    """

    name: ClassVar[str] = "servo emulator"

    def __init__(
        self,
        positions: Mapping[int, float],
        speed: float = 3000.0,
        script: Callable[[float], Mapping[int, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servos: dict[int, RegisterServo] = {i: self.make_servo(i, p, speed) for i, p in positions.items()}
        self.script = script
        self.clock = clock
        self.faults: dict[int, FaultState] = {}
        self.log: list[tuple[int, int]] = []
        """``(id, instruction)`` of every well-formed packet received."""
        self.bad_packets = 0
        """Packets dropped for a bad checksum or CRC."""
        self._lock = threading.RLock()
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._t0 = self._last = clock()
        self.port = ""
        """The pty's slave path, set by :meth:`start`."""

    def make_servo(self, id_: int, position: float, speed: float) -> RegisterServo:
        raise NotImplementedError

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> EmulatedBus:
        """Open the pty and serve it from a daemon thread."""
        if self._thread is not None:
            return self
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline, before any client opens it
        self.port = os.ttyname(self._slave)
        self._t0 = self._last = self.clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the pty."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ state and faults
    def servo(self, id_: int) -> Any:
        """The servo with id ``id_`` (its state advanced to now)."""
        with self._lock:
            self._advance()
            return self.servos[id_]

    def drive(self, id_: int, position: float) -> None:
        """Move servo ``id_``'s joint to encoder ``position`` by hand."""
        with self._lock:
            self._advance()
            self.servos[id_].drive(position)

    def inject(self, id_: int, kind: Fault, after: int = 0) -> None:
        """Give servo ``id_`` a fault; ``after``: packets still answered (``STOP_AFTER`` only)."""
        with self._lock:
            if id_ not in self.servos:
                raise KeyError(f"{self.name}: no servo {id_} (servos: {sorted(self.servos)})")
            self.faults[id_] = FaultState(Fault(kind), int(after))

    def clear(self, id_: int | None = None) -> None:
        """Remove servo ``id_``'s fault, or every fault."""
        with self._lock:
            if id_ is None:
                self.faults.clear()
            else:
                self.faults.pop(id_, None)

    def _advance(self) -> None:
        now = self.clock()
        dt, self._last = now - self._last, now
        if self.script is not None:
            for id_, pos in self.script(now - self._t0).items():
                if id_ in self.servos and not self.servos[id_].torque:
                    self.servos[id_].drive(pos)
        for id_, servo in self.servos.items():
            f = self.faults.get(id_)
            servo.advance(dt, stuck=f is not None and f.kind in (Fault.STUCK, Fault.NO_REPLY))

    def _alive(self, id_: int) -> bool:
        """Whether servo ``id_`` exists and hears this packet (counts it against ``STOP_AFTER``)."""
        if id_ not in self.servos:
            return False
        f = self.faults.get(id_)
        if f is None:
            return True
        if f.kind is Fault.NO_REPLY:
            return False
        if f.kind is Fault.STOP_AFTER:
            if f.left <= 0:
                return False
            f.left -= 1
        return True

    def _corrupt(self, id_: int, reply: bytes) -> bytes:
        """``reply`` with its last (checksum or CRC) byte spoiled if servo ``id_`` has ``BAD_CHECKSUM``."""
        f = self.faults.get(id_)
        if f is not None and f.kind is Fault.BAD_CHECKSUM:
            return reply[:-1] + bytes([reply[-1] ^ 0x5A])
        return reply

    def _renumber(self) -> None:
        """A servo whose ID register was written answers to its new id."""
        for old, servo in list(self.servos.items()):
            if servo.id != old:
                self.servos[servo.id] = self.servos.pop(old)
                if old in self.faults:
                    self.faults[servo.id] = self.faults.pop(old)

    # ------------------------------------------------------------------ serving
    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.02)
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 4096)  # type: ignore[arg-type]
            except OSError:
                continue
            buf += chunk
            while True:
                pkt = self.take_packet(buf)
                if pkt is None:
                    break
                reply = self.handle(pkt)
                if reply:
                    os.write(self._master, reply)  # type: ignore[arg-type]

    def take_packet(self, buf: bytearray) -> bytes | None:
        """The next complete, well-formed packet in ``buf`` (removed from it); None to wait for more."""
        raise NotImplementedError

    def handle(self, pkt: bytes) -> bytes:
        """Execute one well-formed instruction packet; the bytes the servos answer."""
        raise NotImplementedError


class BusProcess:
    """An :class:`EmulatedBus` subclass served from a forked child process, with the same methods
    (each a round trip over a pipe; :meth:`servo` returns a copy).

    In-process, the bus thread answers only when it gets the GIL: a client thread that holds it
    (a garbage collection, a busy loop) for longer than the SDK's packet timeout sees "no status
    packet". Real servos answer regardless, and so does this one.
    """

    bus_class: ClassVar[type[EmulatedBus]] = EmulatedBus

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        self._conn: Any = None
        self._proc: Any = None
        self.port = ""

    def start(self) -> Any:
        import multiprocessing

        if self._proc is not None:
            return self
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve_child,
            args=(child, self.bus_class, self._args, self._kwargs),
            daemon=True,
            name=self.bus_class.name,
        )
        self._proc.start()
        child.close()
        self.port = self._call("port")
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._call("stop")
        except (EOFError, OSError):
            pass
        self._proc.join(timeout=2.0)
        if self._proc.is_alive():
            self._proc.kill()
        self._conn.close()
        self._proc = self._conn = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, name: str, *args: Any) -> Any:
        if self._conn is None:
            raise RuntimeError(f"{self.bus_class.name}: not started")
        self._conn.send((name, args))
        ok, value = self._conn.recv()
        if not ok:
            raise value
        return value

    def servo(self, id_: int) -> Any:
        """A copy of servo ``id_`` as it is now."""
        return self._call("servo", id_)

    def drive(self, id_: int, position: float) -> None:
        self._call("drive", id_, position)

    def inject(self, id_: int, kind: Fault, after: int = 0) -> None:
        self._call("inject", id_, kind, after)

    def clear(self, id_: int | None = None) -> None:
        self._call("clear", id_)

    @property
    def log(self) -> list[tuple[int, int]]:
        return self._call("log")

    @property
    def bad_packets(self) -> int:
        return self._call("bad_packets")


def _serve_child(conn: Any, bus_class: type[EmulatedBus], args: tuple, kwargs: dict) -> None:
    """The child of :class:`BusProcess`: a bus, and its methods served over ``conn``."""
    bus = bus_class(*args, **kwargs).start()
    while True:
        try:
            name, call_args = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if name == "stop":
            conn.send((True, None))
            break
        try:
            attr = getattr(bus, name)
            conn.send((True, attr(*call_args) if callable(attr) else attr))
        except Exception as e:  # sent to the parent, raised there
            conn.send((False, e))
    bus.stop()


__all__ = ["BusProcess", "EmulatedBus", "Fault", "FaultState", "RegisterServo"]
