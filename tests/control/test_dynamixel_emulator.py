"""The emulated Dynamixel X-series bus, driven with raw Protocol 2.0 packets over its pty: framing,
CRC and byte stuffing, every served instruction, the control table and two's complement registers,
the EEPROM lock, the simulated motion, and each injected fault."""

from __future__ import annotations

import os
import select
import time

import pytest

from robopolicy.control.emulator.dynamixel import (
    BROADCAST_ID,
    KOCH_MODELS,
    REGISTERS,
    XL330_M288,
    XL430_W250,
    DynamixelBus,
    Fault,
    crc16,
    instruction,
    status,
    stuff,
    unstuff,
)

PING, READ, WRITE, REG_WRITE, ACTION, SYNC_READ, SYNC_WRITE = 1, 2, 3, 4, 5, 0x82, 0x83


class Client:
    """The host side of the bus: raw bytes on the pty's slave."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)

    def send(self, id_: int, inst: int, params=b"") -> None:
        os.write(self.fd, instruction(id_, inst, bytes(params)))

    def recv(self, timeout: float = 0.5, expect: int | None = None) -> bytes:
        out = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end and (expect is None or len(out) < expect):
            ready, _, _ = select.select([self.fd], [], [], max(0.0, end - time.monotonic()))
            if ready:
                out += os.read(self.fd, 4096)
        return out

    def close(self) -> None:
        os.close(self.fd)


def statuses(raw: bytes) -> list[tuple[int, int, bytes, bool]]:
    """Split status packets: (id, error, data, CRC ok), data unstuffed."""
    out = []
    while raw:
        assert raw[:4] == b"\xff\xff\xfd\x00", raw
        n = int.from_bytes(raw[5:7], "little")
        pkt, raw = raw[: 7 + n], raw[7 + n :]
        assert pkt[7] == 0x55
        body = unstuff(pkt[7:-2])
        out.append((pkt[4], body[1], body[2:], crc16(pkt[:-2]) == int.from_bytes(pkt[-2:], "little")))
    return out


def reg(name: str, *data: int) -> list[int]:
    """``addr_l addr_h`` (+ data) of a register, for READ/WRITE params."""
    addr, n = REGISTERS[name]
    return [addr & 0xFF, addr >> 8, *(data or (n & 0xFF, n >> 8))]


def le(value: int, n: int) -> list[int]:
    return list((value & ((1 << (8 * n)) - 1)).to_bytes(n, "little"))


@pytest.fixture
def bus():
    with DynamixelBus({1: 1000, 2: 2048, 3: 3000}, models={3: XL330_M288}, speed=4000.0) as b:
        yield b


@pytest.fixture
def host(bus):
    c = Client(bus.port)
    yield c
    c.close()


def test_packet_framing_crc_and_stuffing():
    # the e-Manual's Protocol 2.0 examples: ping servo 1; read 4 bytes at 132 from servo 1
    assert instruction(1, PING) == bytes.fromhex("FFFFFD0001030001194E")
    assert instruction(1, READ, [0x84, 0x00, 0x04, 0x00]) == bytes.fromhex("FFFFFD0001070002840004001D15")
    assert status(1, 0, [0x06, 0x04, 0x26]) == bytes.fromhex("FFFFFD000107005500060426655D")
    # FF FF FD inside the body gets an extra FD, counted in the length and under the CRC
    assert stuff(bytes([3, 0xFF, 0xFF, 0xFD, 1])) == bytes([3, 0xFF, 0xFF, 0xFD, 0xFD, 1])
    assert unstuff(stuff(bytes([0xFF, 0xFF, 0xFD, 0xFD, 0xFF, 0xFF, 0xFD]))) == bytes(
        [0xFF, 0xFF, 0xFD, 0xFD, 0xFF, 0xFF, 0xFD]
    )
    pkt = instruction(1, WRITE, [0x70, 0x00, 0x00, 0xFF, 0xFF, 0xFD])
    assert int.from_bytes(pkt[5:7], "little") == 1 + 6 + 1 + 2 and pkt.count(b"\xfd\xfd") == 1


def test_ping_model_numbers_and_broadcast(bus, host):
    host.send(3, PING)  # data: model number, firmware version
    assert statuses(host.recv(expect=14)) == [(3, 0, bytes([*le(XL330_M288, 2), 46]), True)]
    host.send(BROADCAST_ID, PING)  # every servo answers, in id order
    got = statuses(host.recv(expect=42))
    assert [(i, int.from_bytes(d[:2], "little")) for i, _, d, _ in got] == [
        (1, XL430_W250),
        (2, XL430_W250),
        (3, XL330_M288),
    ]
    host.send(9, PING)  # nobody there
    assert host.recv(0.1) == b""


def test_read_write_registers_and_status_levels(bus, host):
    host.send(1, WRITE, reg("Return_Delay_Time", 0))
    assert statuses(host.recv(expect=11)) == [(1, 0, b"", True)]
    host.send(1, WRITE, reg("Position_P_Gain", *le(1500, 2)))
    host.recv(expect=11)
    s = bus.servo(1)
    assert s.get("Return_Delay_Time") == 0 and s.get("Position_P_Gain") == 1500
    assert (s.get("Operating_Mode"), s.get("Protocol_Type"), s.get("Velocity_Limit")) == (3, 2, 265)
    host.send(3, READ, reg("Current_Limit"))
    [(_, err, data, ok)] = statuses(host.recv(expect=13))
    assert ok and err == 0 and int.from_bytes(data, "little") == 1750  # an XL330's
    host.send(2, WRITE, reg("Status_Return_Level", 1))  # from now: PING and READ only
    host.recv(expect=11)
    host.send(2, WRITE, reg("LED", 1))
    assert host.recv(0.1) == b"" and bus.servo(2).get("LED") == 1
    host.send(2, 0x42)  # an unknown instruction: error 2
    host.send(1, 0x42)
    assert statuses(host.recv(expect=11)) == [(1, 2, b"", True)]


def test_stuffed_values_round_trip(bus, host):
    value = [0x00, 0xFF, 0xFF, 0xFD]  # FF FF FD in the data, both ways
    host.send(1, WRITE, reg("Profile_Velocity", *value))
    assert statuses(host.recv(expect=11)) == [(1, 0, b"", True)]
    assert bus.servo(1).read(REGISTERS["Profile_Velocity"][0], 4) == bytes(value)
    host.send(1, READ, reg("Profile_Velocity"))
    raw = host.recv(expect=16)
    assert len(raw) == 16 and statuses(raw) == [(1, 0, bytes(value), True)]  # 15 + a stuffing byte


def test_homing_offset_is_twos_complement_and_adds_to_present_position(bus, host):
    host.send(1, WRITE, reg("Homing_Offset", *le(-200, 4)))
    host.recv(expect=11)
    assert bus.servo(1).homing_offset == -200
    host.send(1, READ, reg("Present_Position"))
    [(_, _, data, _)] = statuses(host.recv(expect=15))
    assert int.from_bytes(data, "little", signed=True) == 1000 - 200  # actual + offset
    host.send(1, WRITE, reg("Homing_Offset", *le(-1500, 4)))
    host.recv(expect=11)
    assert bus.servo(1).present == -500  # negative, not wrapped


def test_eeprom_is_locked_while_torque_is_on(bus, host):
    host.send(1, WRITE, reg("Torque_Enable", 1))
    host.recv(expect=11)
    host.send(1, WRITE, reg("Operating_Mode", 4))
    assert statuses(host.recv(expect=11)) == [(1, 7, b"", True)]  # access error
    host.send(BROADCAST_ID, SYNC_WRITE, [*reg("Homing_Offset")[:2], 4, 0, 1, *le(300, 4)])
    time.sleep(0.05)
    assert bus.servo(1).get("Operating_Mode") == 3 and bus.servo(1).homing_offset == 0
    host.send(1, WRITE, reg("Torque_Enable", 0))
    host.send(1, WRITE, reg("Operating_Mode", 4))
    assert statuses(host.recv(expect=22)) == [(1, 0, b"", True)] * 2
    assert bus.servo(1).get("Operating_Mode") == 4


def test_torque_on_moves_toward_the_goal_limits_in_position_mode_only(bus, host):
    host.send(2, WRITE, reg("Goal_Position", *le(3000, 4)))  # torque off: the goal follows the position
    host.recv(expect=11)
    time.sleep(0.05)
    assert bus.servo(2).present == 2048 and bus.servo(2).goal == 2048
    host.send(2, WRITE, reg("Max_Position_Limit", *le(2500, 4)))
    host.send(2, WRITE, reg("Torque_Enable", 1))
    host.send(2, WRITE, reg("Goal_Position", *le(3000, 4)))
    host.recv(expect=33)
    first = bus.servo(2).present
    assert 2048 <= first < 2500 and bus.servo(2).get("Moving") == 1  # rate-limited, not a jump
    assert bus.servo(2).get("Present_Velocity") > 0
    time.sleep(0.25)
    assert bus.servo(2).present == 2500 and bus.servo(2).get("Moving") == 0  # the max position limit
    host.send(2, WRITE, reg("Torque_Enable", 0))
    host.send(2, WRITE, reg("Operating_Mode", 4))  # extended position: no limits
    host.send(2, WRITE, reg("Torque_Enable", 1))
    host.send(2, WRITE, reg("Goal_Position", *le(5000, 4)))  # past one turn
    host.recv(expect=44)
    time.sleep(0.9)
    assert bus.servo(2).present == 5000


def test_sync_read_and_sync_write(bus, host):
    addr, n = REGISTERS["Present_Position"]
    host.send(BROADCAST_ID, SYNC_READ, [*le(addr, 2), *le(n, 2), 3, 1])  # answered in the listed order
    got = statuses(host.recv(expect=30))
    assert [(i, int.from_bytes(d, "little")) for i, _, d, _ in got] == [(3, 3000), (1, 1000)]
    torque = REGISTERS["Torque_Enable"][0]
    host.send(BROADCAST_ID, SYNC_WRITE, [*le(torque, 2), 1, 0, 1, 1, 2, 1, 3, 1])
    goal = REGISTERS["Goal_Position"][0]
    host.send(BROADCAST_ID, SYNC_WRITE, [*le(goal, 2), 4, 0, 1, *le(1100, 4), 3, *le(2900, 4)])
    assert host.recv(0.1) == b""  # sync write has no answer
    time.sleep(0.1)
    assert bus.servo(1).present == 1100 and bus.servo(3).present == 2900 and bus.servo(2).present == 2048


def test_reg_write_waits_for_action(bus, host):
    host.send(1, WRITE, reg("Torque_Enable", 1))
    host.send(1, REG_WRITE, reg("Goal_Position", *le(1200, 4)))
    host.recv(expect=22)
    time.sleep(0.05)
    assert bus.servo(1).goal == 1000
    host.send(BROADCAST_ID, ACTION)
    time.sleep(0.1)
    assert bus.servo(1).goal == 1200 and bus.servo(1).present == 1200


def test_bad_instruction_crc_is_not_executed(bus, host):
    bad = bytearray(instruction(1, WRITE, reg("LED", 1)))
    bad[-1] ^= 0xFF
    os.write(host.fd, bytes(bad) + instruction(2, PING))  # the next packet is still understood
    assert [(i, e) for i, e, _, _ in statuses(host.recv(expect=25))] == [(1, 3), (2, 0)]  # 1: CRC error
    assert bus.bad_packets == 1 and bus.servo(1).get("LED") == 0


def test_fault_no_reply(bus, host):
    bus.inject(2, Fault.NO_REPLY)
    host.send(2, PING)
    assert host.recv(0.1) == b""
    addr, n = REGISTERS["Present_Position"]
    host.send(BROADCAST_ID, SYNC_READ, [*le(addr, 2), *le(n, 2), 1, 2, 3])
    assert [s[0] for s in statuses(host.recv(0.2))] == [1, 3]
    bus.clear(2)
    host.send(2, PING)
    assert statuses(host.recv(expect=14))[0][0] == 2


def test_fault_bad_crc(bus, host):
    bus.inject(1, Fault.BAD_CHECKSUM)
    host.send(1, PING)
    [(id_, _, _, ok)] = statuses(host.recv(expect=14))
    assert id_ == 1 and not ok


def test_fault_stop_after_n_packets(bus, host):
    bus.inject(3, Fault.STOP_AFTER, after=2)
    for _ in range(2):
        host.send(3, PING)
        assert len(host.recv(expect=14)) == 14
    host.send(3, PING)
    assert host.recv(0.1) == b""


def test_fault_stuck_joint_answers_but_does_not_move(bus, host):
    bus.inject(1, Fault.STUCK)
    host.send(1, WRITE, reg("Torque_Enable", 1))
    host.send(1, WRITE, reg("Goal_Position", *le(1500, 4)))
    assert len(statuses(host.recv(expect=22))) == 2
    time.sleep(0.1)
    assert bus.servo(1).present == 1000 and bus.servo(1).goal == 1500


def test_scripted_leader_and_new_id():
    with DynamixelBus({1: 2048}, script=lambda t: {1: 2048 + 1000 * min(t, 0.1)}) as bus:
        host = Client(bus.port)
        try:
            time.sleep(0.15)
            host.send(1, READ, reg("Present_Position"))
            [(_, _, data, _)] = statuses(host.recv(expect=15))
            assert int.from_bytes(data, "little") == 2148  # moved by the script, torque off
            host.send(1, WRITE, reg("ID", 7))
            host.recv(expect=11)
            host.send(7, PING)
            assert statuses(host.recv(expect=14))[0][0] == 7
        finally:
            host.close()


def test_the_bus_in_a_child_process():
    from robopolicy.control.emulator.dynamixel import DynamixelBusProcess

    with DynamixelBusProcess({i: 2048 for i in KOCH_MODELS}, models=KOCH_MODELS) as bus:
        host = Client(bus.port)
        try:
            host.send(BROADCAST_ID, PING)
            got = statuses(host.recv(expect=6 * 14))
            assert [(i, int.from_bytes(d[:2], "little")) for i, _, d, _ in got] == list(KOCH_MODELS.items())
            bus.inject(2, Fault.NO_REPLY)
            host.send(2, PING)
            assert host.recv(0.1) == b""
            host.send(1, WRITE, reg("Torque_Enable", 1))
            host.send(1, WRITE, reg("Goal_Position", *le(2100, 4)))
            host.recv(expect=22)
            time.sleep(0.1)
            s = bus.servo(1)  # a copy of the child's servo
            assert s.torque and s.present == 2100 and bus.log[-1] == (1, WRITE)
            with pytest.raises(KeyError, match="no servo 9"):
                bus.inject(9, Fault.STUCK)
        finally:
            host.close()
    assert bus.port and bus._proc is None


def test_emulate_arm_koch_serves_a_linked_port_and_cleans_up(tmp_path):
    import json
    import signal

    from tests.cli_subprocess import cli

    link = tmp_path / "koch"
    proc = cli("emulate-arm", "koch", "--link", str(link), "--calibration-dir", str(tmp_path / "cal"))
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[-1].startswith("serving"), lines
        assert link.is_symlink() and os.readlink(link).startswith("/dev/pts/")
        c = Client(str(link))
        try:
            c.send(BROADCAST_ID, PING)  # the six servos of a Koch answer, with their models
            got = statuses(c.recv(expect=6 * 14))
            assert [(i, int.from_bytes(d[:2], "little")) for i, _, d, _ in got] == list(KOCH_MODELS.items())
        finally:
            c.close()
        cal = json.loads((tmp_path / "cal" / "follower.json").read_text())
        assert cal["shoulder_pan"]["range_max"] == 4095 and cal["gripper"]["id"] == 6
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0 and not link.exists()
