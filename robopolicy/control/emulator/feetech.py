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

from typing import ClassVar

from robopolicy.control.emulator.base import BusProcess, EmulatedBus, Fault, RegisterServo

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


class Servo(RegisterServo):
    """One emulated STS3215: a 256-byte register memory and a position that follows the goal
    (``Present_Position = actual - Homing_Offset``; :class:`~robopolicy.control.emulator.base.RegisterServo`)."""

    REGISTERS = REGISTERS
    DEFAULTS = DEFAULTS
    HOMING_SIGN = -1

    def __init__(self, id_: int, position: float = 2048.0, speed: float = 3000.0) -> None:
        super().__init__(id_, position, speed)
        self.pending: tuple[int, bytes] | None = None  # REG_WRITE waiting for ACTION

    def encode(self, name: str, value: int) -> int:
        return encode_sign_magnitude(value, SIGN_BITS[name]) if name in SIGN_BITS else int(value)

    def decode(self, name: str, raw: int) -> int:
        return decode_sign_magnitude(raw, SIGN_BITS[name]) if name in SIGN_BITS else raw

    def sync_extra(self) -> None:
        self.set("Present_Velocity", round(self.velocity))
        self.set("Present_Load", 0)


class FeetechBus(EmulatedBus):
    """STS3215 servos on an emulated serial bus, served from a thread on a pty (module docstring;
    arguments: :class:`~robopolicy.control.emulator.base.EmulatedBus`)."""

    name: ClassVar[str] = "feetech emulator"

    def make_servo(self, id_: int, position: float, speed: float) -> Servo:
        return Servo(id_, position, speed)

    def take_packet(self, buf: bytearray) -> bytes | None:
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

    def _status(self, id_: int, data: bytes | None) -> bytes:
        if data is None:
            return b""
        return self._corrupt(id_, packet(id_, 0, data))


class FeetechBusProcess(BusProcess):
    """A :class:`FeetechBus` served from a forked child process, with the same methods (each a
    round trip over a pipe; :meth:`servo` returns a copy). Real servos answer whatever the client
    process does, and so does this one; in-process, the bus thread answers only when it gets the
    GIL (:class:`~robopolicy.control.emulator.base.BusProcess`)."""

    bus_class = FeetechBus


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
