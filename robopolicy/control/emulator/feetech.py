"""An emulated Feetech STS3215 servo bus on a pseudo-terminal: lerobot's unmodified
``FeetechMotorsBus`` (through ``scservo_sdk`` and pyserial) talks to it as to a real arm.

    with FeetechBus({1: 2048, 2: 2048}) as bus:     # servo id -> initial encoder position
        port = bus.port                             # "/dev/pts/N": give it to lerobot
        ...
        bus.servo(1).present                        # what the servo reads now
        bus.inject(3, Fault.NO_REPLY)               # a fault on servo 3

Protocol. Feetech protocol 0 (the SCS/STS protocol, Dynamixel 1.0 framing): an instruction
``FF FF id len inst params… chk`` with ``len = len(params) + 2`` and ``chk = ~(id + len + inst +
params) & 0xFF``; a status ``FF FF id len err data… chk``. Served: PING (1; to the broadcast id
254 every servo answers, in id order), READ (2), WRITE (3), REG_WRITE (4) + ACTION (5), SYNC_READ
(0x82; the listed servos answer in list order) and SYNC_WRITE (0x83; no answer). A packet with a
bad checksum is ignored, as a servo does. Multi-byte values are little endian; ``Homing_Offset``
(sign bit 11) and the positions and velocities (sign bit 15) are sign-magnitude, as lerobot
encodes them (``lerobot/motors/encoding_utils.py``).

Control table: the STS/SMS table lerobot uses (``lerobot/motors/feetech/tables.py``): firmware
version, model number 777, ID, baud rate, return delay, status level, min/max position limit,
max torque, P/D/I, protection current, homing offset, operating mode, overload torque, torque
enable, acceleration, goal position/time/velocity, torque limit, lock, present
position/velocity/load/voltage/temperature/current, moving, max acceleration. Writing ``ID``
moves the servo to the new id; other registers are plain memory.

Servo model. Encoder ticks 0..4095 per turn. ``Present_Position = actual - Homing_Offset``, and a
``Goal_Position`` g commands ``actual = g + Homing_Offset``, clamped to the min/max position
limits (both 0: no limit), as the STS does. With torque on, a servo moves toward its goal at
most ``speed`` ticks/s (default 3000, about the STS3215's 0.222 s/60 deg); with torque off it
stays where it is (or where :meth:`FeetechBus.drive` or a ``script`` puts it: a leader arm moved
by hand) and its goal follows its position, so enabling torque holds. Time is the monotonic
clock, or ``clock=``.

Faults (:class:`Fault`, :meth:`FeetechBus.inject`): ``NO_REPLY`` (the servo neither answers nor
acts: unplugged), ``BAD_CHECKSUM`` (its answers carry a wrong checksum), ``STOP_AFTER`` (it
answers ``after`` more packets addressed to it, then goes silent), ``STUCK`` (it answers, but its
joint no longer moves).

:class:`FeetechBusProcess` serves the same bus from a child process, so its answers never wait for
the client process's GIL (what the lerobot tests use).
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
from typing import Any

BROADCAST_ID = 0xFE
INST_PING, INST_READ, INST_WRITE, INST_REG_WRITE, INST_ACTION = 1, 2, 3, 4, 5
INST_SYNC_READ, INST_SYNC_WRITE = 0x82, 0x83
STS3215_MODEL = 777
RESOLUTION = 4096

REGISTERS: dict[str, tuple[int, int]] = {
    "Firmware_Major_Version": (0, 1),
    "Firmware_Minor_Version": (1, 1),
    "Model_Number": (3, 2),
    "ID": (5, 1),
    "Baud_Rate": (6, 1),
    "Return_Delay_Time": (7, 1),
    "Response_Status_Level": (8, 1),
    "Min_Position_Limit": (9, 2),
    "Max_Position_Limit": (11, 2),
    "Max_Temperature_Limit": (13, 1),
    "Max_Voltage_Limit": (14, 1),
    "Min_Voltage_Limit": (15, 1),
    "Max_Torque_Limit": (16, 2),
    "P_Coefficient": (21, 1),
    "D_Coefficient": (22, 1),
    "I_Coefficient": (23, 1),
    "Protection_Current": (28, 2),
    "Homing_Offset": (31, 2),
    "Operating_Mode": (33, 1),
    "Overload_Torque": (36, 1),
    "Torque_Enable": (40, 1),
    "Acceleration": (41, 1),
    "Goal_Position": (42, 2),
    "Goal_Time": (44, 2),
    "Goal_Velocity": (46, 2),
    "Torque_Limit": (48, 2),
    "Lock": (55, 1),
    "Present_Position": (56, 2),
    "Present_Velocity": (58, 2),
    "Present_Load": (60, 2),
    "Present_Voltage": (62, 1),
    "Present_Temperature": (63, 1),
    "Status": (65, 1),
    "Moving": (66, 1),
    "Present_Current": (69, 2),
    "Maximum_Acceleration": (85, 1),
}
"""``name: (address, bytes)`` of the registers the emulator knows (lerobot's names)."""

SIGN_BITS = {"Homing_Offset": 11, "Goal_Position": 15, "Goal_Velocity": 15, "Present_Position": 15}
SIGN_BITS |= {"Present_Velocity": 15, "Present_Load": 10}
"""Sign-magnitude registers and their sign bit (lerobot's ``STS_SMS_SERIES_ENCODINGS_TABLE``)."""

DEFAULTS = {
    "Firmware_Major_Version": 3,
    "Firmware_Minor_Version": 10,
    "Model_Number": STS3215_MODEL,
    "Baud_Rate": 0,  # 1 Mbps
    "Return_Delay_Time": 250,
    "Response_Status_Level": 1,
    "Min_Position_Limit": 0,
    "Max_Position_Limit": RESOLUTION - 1,
    "Max_Temperature_Limit": 70,
    "Max_Voltage_Limit": 140,
    "Min_Voltage_Limit": 40,
    "Max_Torque_Limit": 1000,
    "P_Coefficient": 32,
    "D_Coefficient": 32,
    "I_Coefficient": 0,
    "Protection_Current": 500,
    "Overload_Torque": 80,
    "Torque_Limit": 1000,
    "Present_Voltage": 74,  # 7.4 V
    "Present_Temperature": 30,
    "Maximum_Acceleration": 254,
}


def encode_sign_magnitude(value: int, sign_bit: int) -> int:
    """``value`` with its sign in bit ``sign_bit`` and its magnitude below it."""
    magnitude = min(abs(int(value)), (1 << sign_bit) - 1)
    return ((1 << sign_bit) if value < 0 else 0) | magnitude


def decode_sign_magnitude(raw: int, sign_bit: int) -> int:
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if (raw >> sign_bit) & 1 else magnitude


def checksum(body: bytes | list[int]) -> int:
    """``~sum & 0xFF`` of a packet's bytes after the two ``FF`` headers, before the checksum."""
    return ~sum(body) & 0xFF


def packet(id_: int, inst_or_err: int, params: bytes | list[int] = b"") -> bytes:
    """An instruction (or, with an error byte, a status) packet with its checksum."""
    body = bytes([id_, len(params) + 2, inst_or_err, *params])
    return b"\xff\xff" + body + bytes([checksum(body)])


class Fault(enum.Enum):
    """A servo's injected fault (module docstring)."""

    NO_REPLY = "no_reply"
    BAD_CHECKSUM = "bad_checksum"
    STOP_AFTER = "stop_after"
    STUCK = "stuck"


@dataclass
class _FaultState:
    kind: Fault
    left: int = 0  # STOP_AFTER: packets still answered


class Servo:
    """One emulated STS3215: a 256-byte register memory and a position that follows the goal."""

    def __init__(self, id_: int, position: float = 2048.0, speed: float = 3000.0) -> None:
        self.mem = bytearray(256)
        for name, value in DEFAULTS.items():
            self.set(name, value)
        self.set("ID", id_)
        self.actual = float(position)
        """Encoder position [ticks], before the homing offset."""
        self.speed = float(speed)
        self.velocity = 0.0
        self.set("Goal_Position", round(self.actual) - self.homing_offset)
        self.pending: tuple[int, bytes] | None = None  # REG_WRITE waiting for ACTION
        self._sync_position()

    @property
    def id(self) -> int:
        return self.get("ID")

    # ------------------------------------------------------------------ registers
    def get(self, name: str) -> int:
        """Register ``name`` as a number (sign-magnitude registers decoded)."""
        addr, n = REGISTERS[name]
        raw = int.from_bytes(self.mem[addr : addr + n], "little")
        return decode_sign_magnitude(raw, SIGN_BITS[name]) if name in SIGN_BITS else raw

    def set(self, name: str, value: int) -> None:
        """Store ``value`` in register ``name`` (no side effects; see :meth:`write`)."""
        addr, n = REGISTERS[name]
        raw = encode_sign_magnitude(value, SIGN_BITS[name]) if name in SIGN_BITS else int(value)
        self.mem[addr : addr + n] = (raw & ((1 << (8 * n)) - 1)).to_bytes(n, "little")

    @property
    def homing_offset(self) -> int:
        return self.get("Homing_Offset")

    @property
    def torque(self) -> bool:
        return bool(self.mem[REGISTERS["Torque_Enable"][0]])

    @property
    def present(self) -> int:
        """``Present_Position`` as the servo reports it (``actual - Homing_Offset``)."""
        return self.get("Present_Position")

    @property
    def goal(self) -> int:
        return self.get("Goal_Position")

    def write(self, addr: int, data: bytes) -> None:
        """A WRITE of ``data`` at ``addr``: store it, then apply what the registers mean."""
        torque_before = self.torque
        self.mem[addr : addr + len(data)] = data
        if not torque_before and self.torque:  # torque on: hold where it is
            self.set("Goal_Position", round(self.actual) - self.homing_offset)
        self._sync_position()

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.mem[addr : addr + n])

    # ------------------------------------------------------------------ motion
    def target(self) -> float:
        """The encoder position the goal commands, inside the position limits."""
        goal = self.goal
        lo, hi = self.get("Min_Position_Limit"), self.get("Max_Position_Limit")
        if lo or hi:
            goal = min(max(goal, lo), hi)
        return float(goal + self.homing_offset)

    def advance(self, dt: float, stuck: bool = False) -> None:
        """Move ``dt`` seconds toward the goal (torque on), at most :attr:`speed` ticks/s."""
        before = self.actual
        if self.torque and not stuck and dt > 0:
            step = self.target() - self.actual
            limit = self.speed * dt
            self.actual += max(-limit, min(limit, step))
        self.velocity = (self.actual - before) / dt if dt > 0 else 0.0
        self._sync_position()

    def drive(self, position: float) -> None:
        """Put the joint at encoder ``position`` (by hand: a leader arm); its goal follows with torque off."""
        self.velocity = 0.0
        self.actual = float(position)
        self._sync_position()

    def _sync_position(self) -> None:
        present = round(self.actual) - self.homing_offset
        self.set("Present_Position", present)
        self.set("Present_Velocity", round(self.velocity))
        moving = self.torque and abs(self.target() - self.actual) > 1.0
        self.set("Moving", int(moving))
        self.set("Present_Load", 0)
        if not self.torque:
            self.set("Goal_Position", present)


class FeetechBus:
    """Servos on an emulated serial bus, served from a thread on a pty (module docstring).

    Args:
        positions: ``{servo id: initial encoder position}`` (ticks, before any homing offset).
        speed: the servos' largest speed [ticks/s].
        script: ``script(t) -> {id: encoder position}``, called before each packet with the seconds
            since :meth:`start`: a leader arm whose joints a hand moves (torque off).
        clock: monotonic seconds (default ``time.monotonic``).
    """

    def __init__(
        self,
        positions: Mapping[int, float],
        speed: float = 3000.0,
        script: Callable[[float], Mapping[int, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servos: dict[int, Servo] = {i: Servo(i, p, speed) for i, p in positions.items()}
        self.script = script
        self.clock = clock
        self.faults: dict[int, _FaultState] = {}
        self.log: list[tuple[int, int]] = []
        """``(id, instruction)`` of every well-formed packet received."""
        self.bad_packets = 0
        """Packets dropped for a bad checksum."""
        self._lock = threading.RLock()
        self._master: int | None = None
        self._slave: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._t0 = self._last = clock()
        self.port = ""
        """The pty's slave path, set by :meth:`start`."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FeetechBus:
        """Open the pty and serve it from a daemon thread."""
        if self._thread is not None:
            return self
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line discipline, before any client opens it
        self.port = os.ttyname(self._slave)
        self._t0 = self._last = self.clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="feetech-emulator", daemon=True)
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

    def __enter__(self) -> FeetechBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ state and faults
    def servo(self, id_: int) -> Servo:
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
                raise KeyError(f"feetech emulator: no servo {id_} (servos: {sorted(self.servos)})")
            self.faults[id_] = _FaultState(Fault(kind), int(after))

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
                pkt = self._take_packet(buf)
                if pkt is None:
                    break
                reply = self.handle(pkt)
                if reply:
                    os.write(self._master, reply)  # type: ignore[arg-type]

    def _take_packet(self, buf: bytearray) -> bytes | None:
        """The next complete, well-formed packet in ``buf`` (removed from it); None to wait for more."""
        while True:
            start = buf.find(b"\xff\xff")
            if start < 0:
                del buf[: max(0, len(buf) - 1)]
                return None
            del buf[:start]
            while len(buf) > 2 and buf[2] == 0xFF:  # more than two FFs: the header is the last two
                del buf[0]
            if len(buf) < 4:
                return None
            total = buf[3] + 4
            if buf[3] < 2:
                del buf[:2]
                continue
            if len(buf) < total:
                return None
            pkt = bytes(buf[:total])
            del buf[:total]
            if pkt[-1] != checksum(pkt[2:-1]):
                self.bad_packets += 1
                continue
            return pkt

    def handle(self, pkt: bytes) -> bytes:
        """Execute one well-formed instruction packet; the bytes the servos answer."""
        id_, inst, params = pkt[2], pkt[4], pkt[5:-1]
        with self._lock:
            self.log.append((id_, inst))
            self._advance()
            if inst == INST_SYNC_READ:
                addr, n, ids = params[0], params[1], list(params[2:])
                return b"".join(self._status(i, self._servo_read(i, addr, n)) for i in ids)
            if inst == INST_SYNC_WRITE:
                addr, n = params[0], params[1]
                for k in range(2, len(params) - n, n + 1):
                    i = params[k]
                    if self._alive(i):
                        self.servos[i].write(addr, params[k + 1 : k + 1 + n])
                self._renumber()
                return b""
            targets = sorted(self.servos) if id_ == BROADCAST_ID else [id_]
            out = []
            for i in targets:
                if not self._alive(i):
                    continue
                data = self._execute(self.servos[i], inst, params)
                if data is None:
                    continue
                level = self.servos[i].get("Response_Status_Level")
                answers = inst in (INST_PING, INST_READ) or (level >= 1 and id_ != BROADCAST_ID)
                if answers:
                    out.append(self._status(i, data))
            self._renumber()
            return b"".join(out)

    def _execute(self, servo: Servo, inst: int, params: bytes) -> bytes | None:
        """Run one instruction on one servo: the status data to answer, or None (unknown instruction)."""
        if inst == INST_PING:
            return b""
        if inst == INST_READ:
            return servo.read(params[0], params[1])
        if inst == INST_WRITE:
            servo.write(params[0], params[1:])
            return b""
        if inst == INST_REG_WRITE:
            servo.pending = (params[0], bytes(params[1:]))
            return b""
        if inst == INST_ACTION:
            if servo.pending is not None:
                servo.write(*servo.pending)
                servo.pending = None
            return b""
        return None

    def _servo_read(self, id_: int, addr: int, n: int) -> bytes | None:
        return self.servos[id_].read(addr, n) if self._alive(id_) else None

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

    def _status(self, id_: int, data: bytes | None) -> bytes:
        if data is None:
            return b""
        reply = packet(id_, 0, data)
        f = self.faults.get(id_)
        if f is not None and f.kind is Fault.BAD_CHECKSUM:
            reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
        return reply

    def _renumber(self) -> None:
        """A servo whose ID register was written answers to its new id."""
        for old, servo in list(self.servos.items()):
            if servo.id != old:
                self.servos[servo.id] = self.servos.pop(old)
                if old in self.faults:
                    self.faults[servo.id] = self.faults.pop(old)


class FeetechBusProcess:
    """A :class:`FeetechBus` served from a forked child process, with the same methods (each a
    round trip over a pipe; :meth:`servo` returns a copy).

    In-process, the bus thread answers only when it gets the GIL: a client thread that holds it
    (a garbage collection, a busy loop) for longer than lerobot's 50 ms packet timeout sees "no
    status packet". Real servos answer regardless, and so does this one.
    """

    def __init__(
        self,
        positions: Mapping[int, float],
        speed: float = 3000.0,
        script: Callable[[float], Mapping[int, float]] | None = None,
    ) -> None:
        self._args = (dict(positions), float(speed), script)
        self._conn: Any = None
        self._proc: Any = None
        self.port = ""

    def start(self) -> FeetechBusProcess:
        import multiprocessing

        if self._proc is not None:
            return self
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_child, args=(child, *self._args), daemon=True, name="feetech-emulator")
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

    def __enter__(self) -> FeetechBusProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, name: str, *args: Any) -> Any:
        if self._conn is None:
            raise RuntimeError("feetech emulator: not started")
        self._conn.send((name, args))
        ok, value = self._conn.recv()
        if not ok:
            raise value
        return value

    def servo(self, id_: int) -> Servo:
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


def _serve_child(conn: Any, positions: dict[int, float], speed: float, script: Any) -> None:
    """The child of :class:`FeetechBusProcess`: a bus, and its methods served over ``conn``."""
    bus = FeetechBus(positions, speed, script).start()
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if name == "stop":
            conn.send((True, None))
            break
        try:
            attr = getattr(bus, name)
            conn.send((True, attr(*args) if callable(attr) else attr))
        except Exception as e:  # sent to the parent, raised there
            conn.send((False, e))
    bus.stop()


__all__ = [
    "BROADCAST_ID",
    "REGISTERS",
    "SIGN_BITS",
    "FeetechBus",
    "FeetechBusProcess",
    "Fault",
    "Servo",
    "checksum",
    "decode_sign_magnitude",
    "encode_sign_magnitude",
    "packet",
]
