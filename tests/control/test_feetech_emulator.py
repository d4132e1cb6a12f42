"""The emulated Feetech STS3215 bus, driven with raw protocol-0 packets over its pty: framing and
checksums, every served instruction, the control table and sign-magnitude registers, the simulated
motion, and each injected fault."""

from __future__ import annotations

import os
import select
import time

import pytest

from robopolicy.control.emulator.feetech import (
    BROADCAST_ID,
    REGISTERS,
    Fault,
    FeetechBus,
    checksum,
    decode_sign_magnitude,
    encode_sign_magnitude,
    packet,
)

PING, READ, WRITE, REG_WRITE, ACTION, SYNC_READ, SYNC_WRITE = 1, 2, 3, 4, 5, 0x82, 0x83


class Client:
    """The host side of the bus: raw bytes on the pty's slave."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)

    def send(self, id_: int, inst: int, params=b"") -> None:
        os.write(self.fd, packet(id_, inst, bytes(params)))

    def recv(self, timeout: float = 0.5, expect: int | None = None) -> bytes:
        """Bytes that arrive within ``timeout`` (until ``expect`` bytes, if given)."""
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
    """Split status packets: (id, error, data, checksum ok)."""
    out = []
    while raw:
        assert raw[:2] == b"\xff\xff", raw
        n = raw[3]
        pkt, raw = raw[: n + 4], raw[n + 4 :]
        out.append((pkt[2], pkt[4], pkt[5:-1], pkt[-1] == checksum(pkt[2:-1])))
    return out


def u16(value: int) -> list[int]:
    return [value & 0xFF, value >> 8]


@pytest.fixture
def bus():
    with FeetechBus({1: 1000, 2: 2048, 3: 3000}, speed=4000.0) as b:
        yield b


@pytest.fixture
def host(bus):
    c = Client(bus.port)
    yield c
    c.close()


def test_packet_framing_and_checksum():
    # the example of the Feetech manual: read 2 bytes at 56 from servo 1
    assert packet(1, READ, [56, 2]) == bytes([0xFF, 0xFF, 0x01, 0x04, 0x02, 0x38, 0x02, 0xBE])
    assert encode_sign_magnitude(-5, 15) == 0x8005 and decode_sign_magnitude(0x8005, 15) == -5
    assert encode_sign_magnitude(-2047, 11) == 0xFFF and decode_sign_magnitude(0x7FF, 11) == 2047


def test_ping_and_model_number(bus, host):
    host.send(2, PING)
    assert statuses(host.recv(expect=6)) == [(2, 0, b"", True)]
    host.send(2, READ, REGISTERS["Model_Number"])
    [(id_, err, data, ok)] = statuses(host.recv(expect=8))
    assert (id_, err, ok) == (2, 0, True) and int.from_bytes(data, "little") == 777
    host.send(BROADCAST_ID, PING)  # every servo answers, in id order
    assert [s[0] for s in statuses(host.recv(expect=18))] == [1, 2, 3]
    host.send(9, PING)  # nobody there
    assert host.recv(0.1) == b""


def test_read_write_registers(bus, host):
    host.send(1, WRITE, [REGISTERS["Return_Delay_Time"][0], 0])
    assert statuses(host.recv(expect=6)) == [(1, 0, b"", True)]
    host.send(1, WRITE, [REGISTERS["P_Coefficient"][0], 16])
    host.recv(expect=6)
    host.send(1, WRITE, [REGISTERS["Max_Torque_Limit"][0], *u16(500)])
    host.recv(expect=6)
    s = bus.servo(1)
    assert s.get("Return_Delay_Time") == 0 and s.get("P_Coefficient") == 16 and s.get("Max_Torque_Limit") == 500
    host.send(1, READ, [REGISTERS["Firmware_Major_Version"][0], 2])  # major, minor
    [(_, _, data, _)] = statuses(host.recv(expect=8))
    assert list(data) == [3, 10]
    for name in ("Present_Voltage", "Present_Temperature", "Operating_Mode", "Lock", "Protection_Current"):
        addr, n = REGISTERS[name]
        host.send(3, READ, [addr, n])
        [(_, err, data, ok)] = statuses(host.recv(expect=6 + n))
        assert ok and err == 0 and len(data) == n


def test_homing_offset_is_sign_magnitude_and_shifts_present_position(bus, host):
    addr = REGISTERS["Homing_Offset"][0]
    host.send(1, WRITE, [addr, *u16(encode_sign_magnitude(-200, 11))])
    host.recv(expect=6)
    assert bus.servo(1).homing_offset == -200
    host.send(1, READ, REGISTERS["Present_Position"])
    [(_, _, data, _)] = statuses(host.recv(expect=8))
    assert decode_sign_magnitude(int.from_bytes(data, "little"), 15) == 1000 + 200  # actual - offset


def test_torque_on_moves_toward_the_goal_within_limits(bus, host):
    goal = REGISTERS["Goal_Position"][0]
    host.send(2, WRITE, [goal, *u16(3000)])  # torque off: the goal follows the position
    host.recv(expect=6)
    time.sleep(0.05)
    assert bus.servo(2).present == 2048 and bus.servo(2).goal == 2048
    host.send(2, WRITE, [REGISTERS["Max_Position_Limit"][0], *u16(2500)])
    host.send(2, WRITE, [REGISTERS["Torque_Enable"][0], 1])
    host.send(2, WRITE, [goal, *u16(3000)])
    host.recv(expect=18)
    t0 = time.monotonic()
    first = bus.servo(2).present
    assert 2048 <= first < 2500 and bus.servo(2).get("Moving") == 1  # rate-limited, not a jump
    while bus.servo(2).present < 2500 and time.monotonic() - t0 < 2.0:
        time.sleep(0.02)
    time.sleep(0.05)
    assert bus.servo(2).present == 2500  # the max position limit
    assert bus.servo(2).get("Moving") == 0


def test_sync_read_and_sync_write(bus, host):
    addr, n = REGISTERS["Present_Position"]
    host.send(BROADCAST_ID, SYNC_READ, [addr, n, 3, 1])  # answered in the listed order
    got = statuses(host.recv(expect=16))
    assert [(i, int.from_bytes(d, "little")) for i, _, d, _ in got] == [(3, 3000), (1, 1000)]
    torque = REGISTERS["Torque_Enable"][0]
    host.send(BROADCAST_ID, SYNC_WRITE, [torque, 1, 1, 1, 2, 1, 3, 1])
    goal = REGISTERS["Goal_Position"][0]
    host.send(BROADCAST_ID, SYNC_WRITE, [goal, 2, 1, *u16(1100), 3, *u16(2900)])
    assert host.recv(0.1) == b""  # sync write has no answer
    time.sleep(0.1)
    assert bus.servo(1).present == 1100 and bus.servo(3).present == 2900 and bus.servo(2).present == 2048


def test_reg_write_waits_for_action(bus, host):
    host.send(1, WRITE, [REGISTERS["Torque_Enable"][0], 1])
    host.send(1, REG_WRITE, [REGISTERS["Goal_Position"][0], *u16(1200)])
    host.recv(expect=12)
    time.sleep(0.05)
    assert bus.servo(1).goal == 1000
    host.send(BROADCAST_ID, ACTION)
    time.sleep(0.1)
    assert bus.servo(1).goal == 1200 and bus.servo(1).present == 1200


def test_bad_instruction_checksum_is_ignored(bus, host):
    bad = bytearray(packet(1, PING))
    bad[-1] ^= 0xFF
    os.write(host.fd, bytes(bad) + packet(2, PING))  # the next packet is still understood
    assert [s[0] for s in statuses(host.recv(expect=6))] == [2]
    assert bus.bad_packets == 1


def test_fault_no_reply(bus, host):
    bus.inject(2, Fault.NO_REPLY)
    host.send(2, PING)
    assert host.recv(0.1) == b""
    addr, n = REGISTERS["Present_Position"]
    host.send(BROADCAST_ID, SYNC_READ, [addr, n, 1, 2, 3])
    assert [s[0] for s in statuses(host.recv(0.2))] == [1, 3]
    bus.clear(2)
    host.send(2, PING)
    assert statuses(host.recv(expect=6))[0][0] == 2


def test_fault_bad_checksum(bus, host):
    bus.inject(1, Fault.BAD_CHECKSUM)
    host.send(1, PING)
    [(id_, _, _, ok)] = statuses(host.recv(expect=6))
    assert id_ == 1 and not ok


def test_fault_stop_after_n_packets(bus, host):
    bus.inject(3, Fault.STOP_AFTER, after=2)
    for _ in range(2):
        host.send(3, PING)
        assert len(host.recv(expect=6)) == 6
    host.send(3, PING)
    assert host.recv(0.1) == b""


def test_fault_stuck_joint_answers_but_does_not_move(bus, host):
    bus.inject(1, Fault.STUCK)
    host.send(1, WRITE, [REGISTERS["Torque_Enable"][0], 1])
    host.send(1, WRITE, [REGISTERS["Goal_Position"][0], *u16(1500)])
    assert len(statuses(host.recv(expect=12))) == 2
    time.sleep(0.1)
    assert bus.servo(1).present == 1000 and bus.servo(1).goal == 1500


def test_scripted_leader_and_new_id():
    with FeetechBus({1: 2048}, script=lambda t: {1: 2048 + 1000 * min(t, 0.1)}) as bus:
        host = Client(bus.port)
        try:
            time.sleep(0.15)
            host.send(1, READ, REGISTERS["Present_Position"])
            [(_, _, data, _)] = statuses(host.recv(expect=8))
            assert int.from_bytes(data, "little") == 2148  # moved by the script, torque off
            host.send(1, WRITE, [REGISTERS["ID"][0], 7])
            host.recv(expect=6)
            host.send(7, PING)
            assert statuses(host.recv(expect=6))[0][0] == 7
        finally:
            host.close()


def test_the_bus_in_a_child_process():
    from robopolicy.control.emulator.feetech import FeetechBusProcess

    with FeetechBusProcess({1: 1000, 2: 2048}) as bus:
        host = Client(bus.port)
        try:
            host.send(BROADCAST_ID, PING)
            assert [s[0] for s in statuses(host.recv(expect=12))] == [1, 2]
            bus.inject(2, Fault.NO_REPLY)
            host.send(2, PING)
            assert host.recv(0.1) == b""
            host.send(1, WRITE, [REGISTERS["Torque_Enable"][0], 1])
            host.send(1, WRITE, [REGISTERS["Goal_Position"][0], *u16(1100)])
            host.recv(expect=12)
            time.sleep(0.1)
            s = bus.servo(1)  # a copy of the child's servo
            assert s.torque and s.present == 1100 and bus.log[-1] == (1, WRITE)
            with pytest.raises(KeyError, match="no servo 9"):
                bus.inject(9, Fault.STUCK)
        finally:
            host.close()
    assert bus.port and bus._proc is None


def test_emulate_arm_command_serves_a_linked_port_and_cleans_up(tmp_path):
    import json
    import signal

    from robopolicy.control.emulator.cli import SO101_MOTORS
    from tests.cli_subprocess import cli

    link = tmp_path / "so101"
    proc = cli("emulate-arm", "so101", "--link", str(link), "--leader", "--calibration-dir", str(tmp_path / "cal"))
    try:
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[-1].startswith("serving"), lines
        for path in (link, tmp_path / "so101-leader"):
            assert path.is_symlink() and os.readlink(path).startswith("/dev/pts/")
            c = Client(str(path))
            try:
                c.send(BROADCAST_ID, PING)  # the six servos of an SO-101 answer
                assert [s[0] for s in statuses(c.recv(expect=36))] == [1, 2, 3, 4, 5, 6]
            finally:
                c.close()
        cal = json.loads((tmp_path / "cal" / "follower.json").read_text())
        assert list(cal) == list(SO101_MOTORS) and cal["gripper"]["id"] == 6
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0 and not link.exists() and not (tmp_path / "so101-leader").exists()
