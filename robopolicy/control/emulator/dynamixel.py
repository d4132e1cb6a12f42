"""An emulated Dynamixel X-series servo bus (Protocol 2.0) on a pseudo-terminal: lerobot's
unmodified ``DynamixelMotorsBus`` (through ``dynamixel_sdk`` and pyserial) talks to it as to a
real Koch arm.

    with DynamixelBus({1: 2048, 2: 2048}, models={1: XL430_W250, 2: XL330_M288}) as bus:
        port = bus.port                             # "/dev/pts/N": give it to lerobot
        bus.servo(1).present                        # what the servo reads now
        bus.inject(2, Fault.NO_REPLY)               # a fault on servo 2

Protocol 2.0. An instruction ``FF FF FD 00 id len_l len_h inst params… crc_l crc_h`` with ``len =
len(params) + 3``; a status ``FF FF FD 00 id len_l len_h 55 err data… crc_l crc_h`` with ``len =
len(data) + 4``. The CRC is the SDK's CRC-16 (polynomial 0x8005, :func:`crc16`) over every byte
before it. Byte stuffing: inside ``inst params`` (or ``55 err data``), ``FF FF FD`` is followed by an
extra ``FD``, counted in ``len`` and covered by the CRC. Served: PING (1; to the broadcast id 254
every servo answers, in id order; data: model number, firmware version), READ (2), WRITE (3),
REG_WRITE (4) + ACTION (5), SYNC_READ (0x82; the listed servos answer in list order) and
SYNC_WRITE (0x83; no answer). lerobot 0.4.4 uses no FAST_SYNC_READ, BULK_READ or BULK_WRITE, so
they are not served (a servo answers an unknown instruction with error 2). A packet with a bad CRC
is not executed; the servo it names answers with error 3 (CRC). ``Status_Return_Level`` 2 (the
default): every unicast instruction is answered; 1: PING and READ only; 0: PING only.

Two things of ``dynamixel_sdk`` 3.8 (Python) to know when reading raw traffic: its ``txPacket`` sends
instructions unstuffed (``addStuffing`` builds a new list when it must stuff, and the result is
dropped), and its in-place ``removeStuffing`` can misread a status that holds ``FF FD FD`` after a
stuffed ``FF FF FD``. Neither happens with the values a Koch reads and writes; the emulator
follows the protocol (it unstuffs what it gets, which leaves an unstuffed ``FF FF FD x``, x not FD,
unchanged).

Control table: the X-series table lerobot uses (``lerobot/motors/dynamixel/tables.py``), with the
XL430-W250 (model 1060) and XL330-M288 (model 1200) factory values: model number, firmware, ID,
baud rate, return delay, drive mode, operating mode, homing offset, position limits, torque
enable, status return level, position and velocity gains, goal PWM/current/velocity/position,
profile, moving, present PWM/current/velocity/position, voltage and temperature. Multi-byte values
are little endian; the registers in lerobot's ``X_SERIES_ENCODINGS_TABLE`` (homing offset, goals,
present PWM/current/velocity/position) are two's complement. The EEPROM area (addresses below 64:
ID, modes, homing offset, limits) is locked while torque is on: a WRITE there answers error 7
(access) and changes nothing, as on the servo. Writing ``ID`` moves the servo to the new id; the
other registers are plain memory (``Drive_Mode``'s reverse bit is stored, not applied: lerobot
writes 0).

Servo model. Encoder ticks, 4096 per turn. ``Present_Position = actual + Homing_Offset`` (the
Dynamixel sign; the STS3215's is minus), and a ``Goal_Position`` g commands ``actual = g -
Homing_Offset``, clamped to the min/max position limits in position mode (3) only: extended
position (4) and current-based position (5), what the Koch uses, ignore them, as the servo does.
Positions are not wrapped (multi-turn). With torque on, a servo moves toward its goal at most
``speed`` ticks/s (default 3000, below the XL430-W250's 57 rpm = 3900 ticks/s); with torque off it
stays where it is (or where :meth:`DynamixelBus.drive` or a ``script`` puts it) and its goal
follows its position, so enabling torque holds. ``Present_Velocity`` is in the servo's 0.229 rpm
units. Faults: :class:`~robopolicy.control.emulator.base.Fault` (no reply, bad CRC, stops
answering after N packets, stuck joint).

:class:`DynamixelBusProcess` serves the same bus from a child process (what the lerobot tests use).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from robopolicy.control.emulator.base import BusProcess, EmulatedBus, Fault, RegisterServo

HEADER = b"\xff\xff\xfd\x00"
BROADCAST_ID = 0xFE
INST_PING, INST_READ, INST_WRITE, INST_REG_WRITE, INST_ACTION = 1, 2, 3, 4, 5
INST_SYNC_READ, INST_SYNC_WRITE, INST_STATUS = 0x82, 0x83, 0x55
ERR_INSTRUCTION, ERR_CRC, ERR_ACCESS = 2, 3, 7
XL430_W250, XL330_M288 = 1060, 1200
EEPROM_END = 64
"""Addresses below this are EEPROM: writable only with torque off."""
RPM_UNIT = 0.229
"""``Present_Velocity`` unit [rpm]."""

REGISTERS: dict[str, tuple[int, int]] = {
    "Model_Number": (0, 2),
    "Model_Information": (2, 4),
    "Firmware_Version": (6, 1),
    "ID": (7, 1),
    "Baud_Rate": (8, 1),
    "Return_Delay_Time": (9, 1),
    "Drive_Mode": (10, 1),
    "Operating_Mode": (11, 1),
    "Secondary_ID": (12, 1),
    "Protocol_Type": (13, 1),
    "Homing_Offset": (20, 4),
    "Moving_Threshold": (24, 4),
    "Temperature_Limit": (31, 1),
    "Max_Voltage_Limit": (32, 2),
    "Min_Voltage_Limit": (34, 2),
    "PWM_Limit": (36, 2),
    "Current_Limit": (38, 2),
    "Acceleration_Limit": (40, 4),
    "Velocity_Limit": (44, 4),
    "Max_Position_Limit": (48, 4),
    "Min_Position_Limit": (52, 4),
    "Shutdown": (63, 1),
    "Torque_Enable": (64, 1),
    "LED": (65, 1),
    "Status_Return_Level": (68, 1),
    "Registered_Instruction": (69, 1),
    "Hardware_Error_Status": (70, 1),
    "Velocity_I_Gain": (76, 2),
    "Velocity_P_Gain": (78, 2),
    "Position_D_Gain": (80, 2),
    "Position_I_Gain": (82, 2),
    "Position_P_Gain": (84, 2),
    "Feedforward_2nd_Gain": (88, 2),
    "Feedforward_1st_Gain": (90, 2),
    "Bus_Watchdog": (98, 1),
    "Goal_PWM": (100, 2),
    "Goal_Current": (102, 2),
    "Goal_Velocity": (104, 4),
    "Profile_Acceleration": (108, 4),
    "Profile_Velocity": (112, 4),
    "Goal_Position": (116, 4),
    "Realtime_Tick": (120, 2),
    "Moving": (122, 1),
    "Moving_Status": (123, 1),
    "Present_PWM": (124, 2),
    "Present_Current": (126, 2),
    "Present_Velocity": (128, 4),
    "Present_Position": (132, 4),
    "Velocity_Trajectory": (136, 4),
    "Position_Trajectory": (140, 4),
    "Present_Input_Voltage": (144, 2),
    "Present_Temperature": (146, 1),
}
"""``name: (address, bytes)``: lerobot's ``X_SERIES_CONTROL_TABLE``."""

SIGNED = ("Homing_Offset", "Goal_PWM", "Goal_Current", "Goal_Velocity", "Goal_Position")
SIGNED += ("Present_Position", "Present_PWM", "Present_Current", "Present_Velocity")
"""Two's complement registers (lerobot's ``X_SERIES_ENCODINGS_TABLE``)."""

_COMMON = {
    "Firmware_Version": 46,
    "Baud_Rate": 3,  # 1 Mbps: what `lerobot-setup-motors` sets on a Koch (factory: 1 = 57600)
    "Return_Delay_Time": 250,
    "Operating_Mode": 3,  # position
    "Secondary_ID": 255,
    "Protocol_Type": 2,
    "Moving_Threshold": 10,
    "PWM_Limit": 885,
    "Acceleration_Limit": 32767,
    "Max_Position_Limit": 4095,
    "Shutdown": 52,
    "Status_Return_Level": 2,
    "Present_Temperature": 30,
}
MODEL_DEFAULTS: dict[int, dict[str, int]] = {
    XL430_W250: _COMMON
    | {"Model_Number": XL430_W250, "Temperature_Limit": 72, "Max_Voltage_Limit": 140, "Min_Voltage_Limit": 60}
    | {"Velocity_Limit": 265, "Velocity_I_Gain": 1000, "Velocity_P_Gain": 100, "Position_P_Gain": 640}
    | {"Present_Input_Voltage": 111},
    XL330_M288: _COMMON
    | {"Model_Number": XL330_M288, "Temperature_Limit": 70, "Max_Voltage_Limit": 70, "Min_Voltage_Limit": 35}
    | {"Current_Limit": 1750, "Velocity_Limit": 445, "Velocity_I_Gain": 1600, "Velocity_P_Gain": 180}
    | {"Position_P_Gain": 400, "Present_Input_Voltage": 50},
}
"""Factory values per model number (the e-Manual's control tables)."""

KOCH_MODELS = {1: XL430_W250, 2: XL430_W250, 3: XL330_M288, 4: XL330_M288, 5: XL330_M288, 6: XL330_M288}
"""The Koch v1.1 follower's servos, as lerobot's ``KochFollower`` declares them."""

_CRC_TABLE: list[int] = []
for _i in range(256):
    _c = _i << 8
    for _ in range(8):
        _c = ((_c << 1) ^ 0x8005) if _c & 0x8000 else (_c << 1)
    _CRC_TABLE.append(_c & 0xFFFF)


def crc16(data: bytes | list[int]) -> int:
    """The Dynamixel SDK's CRC-16 (``updateCRC``: polynomial 0x8005, initial 0, not reflected)."""
    crc = 0
    for b in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """``body`` (instruction or 0x55 + error, then parameters) with an ``FD`` after each ``FF FF FD``."""
    out = bytearray()
    for b in body:
        out.append(b)
        if b == 0xFD and out[-3:-1] == b"\xff\xff":
            out.append(0xFD)
    return bytes(out)


def unstuff(body: bytes) -> bytes:
    """:func:`stuff` undone: ``FF FF FD FD`` becomes ``FF FF FD``."""
    out = bytearray()
    i = 0
    while i < len(body):
        out.append(body[i])
        if body[i] == 0xFD and out[-3:-1] == b"\xff\xff" and i + 1 < len(body) and body[i + 1] == 0xFD:
            i += 1  # drop the stuffing byte
        i += 1
    return bytes(out)


def packet(id_: int, body: bytes | list[int]) -> bytes:
    """A packet with header, stuffed ``body`` (instruction + params, or 0x55 + error + data) and CRC."""
    stuffed = stuff(bytes(body))
    head = HEADER + bytes([id_]) + (len(stuffed) + 2).to_bytes(2, "little")
    pkt = head + stuffed
    return pkt + crc16(pkt).to_bytes(2, "little")


def instruction(id_: int, inst: int, params: bytes | list[int] = b"") -> bytes:
    """An instruction packet, as the SDK sends it."""
    return packet(id_, bytes([inst, *params]))


def status(id_: int, error: int = 0, data: bytes | list[int] = b"") -> bytes:
    """A status packet, as a servo answers."""
    return packet(id_, bytes([INST_STATUS, error, *data]))


class Servo(RegisterServo):
    """One emulated X-series servo (module docstring)."""

    REGISTERS = REGISTERS
    HOMING_SIGN = 1
    MEMORY = 256

    def __init__(self, id_: int, position: float = 2048.0, speed: float = 3000.0, model: int = XL430_W250) -> None:
        if model not in MODEL_DEFAULTS:
            raise ValueError(f"dynamixel emulator: model number {model} unknown; known: {sorted(MODEL_DEFAULTS)}")
        self.DEFAULTS = MODEL_DEFAULTS[model]
        super().__init__(id_, position, speed)
        self.pending: tuple[int, bytes] | None = None  # REG_WRITE waiting for ACTION

    def encode(self, name: str, value: int) -> int:
        return int(value)  # set() masks to the register's width: two's complement

    def decode(self, name: str, raw: int) -> int:
        if name in SIGNED:
            bits = 8 * REGISTERS[name][1]
            return raw - (1 << bits) if raw >> (bits - 1) else raw
        return raw

    def limits_apply(self) -> bool:
        return self.get("Operating_Mode") == 3

    def sync_extra(self) -> None:
        rpm = self.velocity * 60 / 4096
        self.set("Present_Velocity", round(rpm / RPM_UNIT))
        self.set("Present_Current", 0)
        self.set("Moving_Status", self.get("Moving"))

    def write_checked(self, addr: int, data: bytes) -> int:
        """A WRITE as the servo takes it: the error number (0, or 7 for EEPROM with torque on)."""
        if self.torque and addr < EEPROM_END:
            return ERR_ACCESS
        self.write(addr, data)
        return 0


class DynamixelBus(EmulatedBus):
    """X-series servos on an emulated Protocol 2.0 bus, served from a thread on a pty.

    Args:
        positions: ``{servo id: initial encoder position}`` (ticks, before any homing offset).
        models: ``{servo id: model number}`` (default every servo an XL430-W250; a Koch:
            :data:`KOCH_MODELS`).
        speed, script, clock: as :class:`~robopolicy.control.emulator.base.EmulatedBus`.
    """

    name: ClassVar[str] = "dynamixel emulator"

    def __init__(
        self,
        positions: Mapping[int, float],
        models: Mapping[int, int] | None = None,
        speed: float = 3000.0,
        script: Callable[[float], Mapping[int, float]] | None = None,
        **kwargs: object,
    ) -> None:
        self._models = dict(models or {})
        super().__init__(positions, speed, script, **kwargs)  # type: ignore[arg-type]

    def make_servo(self, id_: int, position: float, speed: float) -> Servo:
        return Servo(id_, position, speed, self._models.get(id_, XL430_W250))

    def take_packet(self, buf: bytearray) -> bytes | None:
        """The next complete packet in ``buf`` (removed from it), CRC not yet checked; None to wait."""
        start = buf.find(HEADER)
        if start < 0:
            del buf[: max(0, len(buf) - 3)]
            return None
        del buf[:start]
        if len(buf) < 7:
            return None
        total = 7 + int.from_bytes(buf[5:7], "little")
        if len(buf) < total:
            return None
        pkt = bytes(buf[:total])
        del buf[:total]
        return pkt

    def handle(self, pkt: bytes) -> bytes:
        """Execute one instruction packet; the bytes the servos answer."""
        id_ = pkt[4]
        with self._lock:
            if len(pkt) < 10 or crc16(pkt[:-2]) != int.from_bytes(pkt[-2:], "little"):
                self.bad_packets += 1
                if id_ != BROADCAST_ID and self._alive(id_):
                    return self._status(id_, b"", ERR_CRC)
                return b""
            body = unstuff(pkt[7:-2])
            inst, params = body[0], body[1:]
            self.log.append((id_, inst))
            self._advance()
            if inst == INST_SYNC_READ:
                addr, n = int.from_bytes(params[0:2], "little"), int.from_bytes(params[2:4], "little")
                return b"".join(self._status(i, self.servos[i].read(addr, n)) for i in params[4:] if self._alive(i))
            if inst == INST_SYNC_WRITE:
                addr, n = int.from_bytes(params[0:2], "little"), int.from_bytes(params[2:4], "little")
                for k in range(4, len(params) - n, n + 1):
                    if self._alive(params[k]):
                        self.servos[params[k]].write_checked(addr, params[k + 1 : k + 1 + n])
                self._renumber()
                return b""
            out = []
            for i in sorted(self.servos) if id_ == BROADCAST_ID else [id_]:
                if not self._alive(i):
                    continue
                data, err = self._execute(self.servos[i], inst, params)  # type: ignore[arg-type]
                level = self.servos[i].get("Status_Return_Level")
                answers = inst == INST_PING or (
                    id_ != BROADCAST_ID and (level >= 2 or (level == 1 and inst == INST_READ))
                )
                if answers:
                    out.append(self._status(i, data, err))
            self._renumber()
            return b"".join(out)

    def _execute(self, servo: Servo, inst: int, params: bytes) -> tuple[bytes, int]:
        """Run one instruction on one servo: (status data, error number)."""
        if inst == INST_PING:
            return servo.read(0, 2) + servo.read(6, 1), 0
        if inst == INST_READ:
            addr, n = int.from_bytes(params[0:2], "little"), int.from_bytes(params[2:4], "little")
            return servo.read(addr, n), 0
        if inst == INST_WRITE:
            return b"", servo.write_checked(int.from_bytes(params[0:2], "little"), params[2:])
        if inst == INST_REG_WRITE:
            servo.pending = (int.from_bytes(params[0:2], "little"), bytes(params[2:]))
            return b"", 0
        if inst == INST_ACTION:
            err = servo.write_checked(*servo.pending) if servo.pending is not None else 0
            servo.pending = None
            return b"", err
        return b"", ERR_INSTRUCTION

    def _status(self, id_: int, data: bytes, error: int = 0) -> bytes:
        return self._corrupt(id_, status(id_, error, data))


class DynamixelBusProcess(BusProcess):
    """A :class:`DynamixelBus` served from a forked child process, with the same methods (each a
    round trip over a pipe; :meth:`servo` returns a copy)."""

    bus_class = DynamixelBus


__all__ = [
    "BROADCAST_ID",
    "KOCH_MODELS",
    "REGISTERS",
    "SIGNED",
    "XL330_M288",
    "XL430_W250",
    "DynamixelBus",
    "DynamixelBusProcess",
    "Fault",
    "Servo",
    "crc16",
    "instruction",
    "packet",
    "status",
    "stuff",
    "unstuff",
]
