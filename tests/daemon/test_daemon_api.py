"""The control daemon's API as a client sees it: a real daemon process on the mock arm.

Every refused request must change nothing: the tests compare the daemon's state, its episode
count and the recording store before and after.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import time

import aiohttp
import numpy as np
import pytest

from robopolicy.daemon.client import DaemonError
from robopolicy.data.store import EpisodeStore
from tests.daemon.conftest import DaemonProcess


def raw(daemon, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One HTTP request with exactly these headers (urllib would add its own); (status, json)."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    h = {"Host": f"127.0.0.1:{daemon.port}", **(headers or {})}
    conn.request(method, path, body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    try:
        return r.status, json.loads(data) if data else None, r
    except ValueError:
        return r.status, data.decode(errors="replace"), r


def auth(daemon, **extra) -> dict:
    return {"Authorization": f"Bearer {daemon.token}", **extra}


def snapshot(daemon) -> tuple:
    s = daemon.client().status()
    return s["state"], s["policy"], s["last_episode"], s["recording"]["episodes"]


# ---------------------------------------------------------------------- authentication
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-wrong-token-wrong"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "basic", "empty"],
)
def test_a_wrong_or_missing_token_gets_401_and_changes_nothing(daemon, headers):
    before = snapshot(daemon)
    for method, path, body in [
        ("POST", "/api/estop", b"{}"),
        ("POST", "/api/episode/start", b"{}"),
        ("POST", "/api/policy", json.dumps({"checkpoint": "/tmp"}).encode()),
        ("GET", "/api/status", None),
        ("GET", "/api/telemetry", None),
    ]:
        status, data, r = raw(daemon, method, path, body, {**headers, "Content-Type": "application/json"})
        assert status == 401, (method, path, data)
        assert r.getheader("WWW-Authenticate") == "Bearer"
    assert snapshot(daemon) == before


def test_a_websocket_with_a_wrong_or_missing_token_is_refused(daemon):
    async def attempt(headers):
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(f"{daemon.url}/api/ws", headers=headers) as ws:
                    return "open", await ws.receive_str(timeout=5)
            except aiohttp.WSServerHandshakeError as e:
                return e.status, None

    assert asyncio.run(attempt({})) == (401, None)
    assert asyncio.run(attempt({"Authorization": "Bearer nope-nope-nope-nope"})) == (401, None)
    state, hello = asyncio.run(attempt(auth(daemon)))
    assert state == "open" and json.loads(hello)["type"] == "hello"


def test_the_token_never_appears_in_the_log_and_its_file_is_private(tmp_path):
    d = DaemonProcess(tmp_path).start()
    try:
        token = d.token
        assert (tmp_path / "token").stat().st_mode & 0o077 == 0
        d.client().status()
        raw(d, "GET", "/api/status", headers={"Authorization": f"Bearer {token}x"})
    finally:
        out = d.stop()
    assert "serving http://127.0.0.1" in out
    assert token not in out and token[:12] not in out


def test_a_token_file_others_can_read_is_refused(tmp_path):
    d = DaemonProcess(tmp_path)
    (tmp_path / "token").write_text("a-long-enough-token-value\n")
    (tmp_path / "token").chmod(0o644)
    with pytest.raises(RuntimeError, match="readable or writable by group/others.*chmod 600"):
        d.start()


# ---------------------------------------------------------------------- Host, Origin, sessions
@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example:80"},  # a DNS-rebinding page: the attacker's name resolves to 127.0.0.1
        {"Host": "127.0.0.1:1"},  # another port
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ],
    ids=["rebinding-host", "wrong-port", "foreign-origin", "null-origin"],
)
def test_a_foreign_host_or_origin_is_refused_even_with_the_token(daemon, headers):
    before = snapshot(daemon)
    status, data, _ = raw(
        daemon, "POST", "/api/estop", b"{}", {**auth(daemon), "Content-Type": "application/json", **headers}
    )
    assert status == 403, data
    assert "not allowed" in data["error"]
    status, _, _ = raw(daemon, "GET", "/", headers=headers)
    assert status == 403
    assert snapshot(daemon) == before


def test_the_page_session_needs_the_token_and_its_own_origin(daemon):
    origin = {"Origin": f"http://127.0.0.1:{daemon.port}", "Content-Type": "application/json"}
    status, data, _ = raw(daemon, "POST", "/api/session", json.dumps({"token": "guess-guess-guess"}).encode(), origin)
    assert status == 401
    status, _, r = raw(daemon, "POST", "/api/session", json.dumps({"token": daemon.token}).encode(), origin)
    assert status == 204
    cookie = r.getheader("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and daemon.token not in cookie
    session = {"Cookie": cookie.split(";")[0]}
    assert raw(daemon, "GET", "/api/status", headers=session)[0] == 200
    # a state change with the cookie but no Origin (not from our page) is refused
    before = snapshot(daemon)
    status, data, _ = raw(daemon, "POST", "/api/estop", b"{}", {**session, "Content-Type": "application/json"})
    assert status == 403 and "Origin" in data["error"]
    # from another site: the browser sends its Origin
    status, _, _ = raw(daemon, "POST", "/api/estop", b"{}", {**session, **origin, "Origin": "http://evil.example"})
    assert status == 403
    assert snapshot(daemon) == before
    # a made-up session id
    assert raw(daemon, "GET", "/api/status", headers={"Cookie": "robopolicy_session=abc"})[0] == 401


# ---------------------------------------------------------------------- bad requests
@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/api/episode/start", b"{not json", 400, "malformed JSON"),
        ("/api/episode/start", b"[1, 2]", 400, "JSON object"),
        ("/api/episode/start", b'{"seed": -1}', 400, "seed"),
        ("/api/episode/start", b'{"max_ticks": 0}', 400, "max_ticks"),
        ("/api/episode/start", b'{"max_ticks": 10000000}', 400, "max_ticks"),
        ("/api/episode/start", b'{"seed": "3"}', 400, "seed"),
        ("/api/episode/start", b'{"speed": 11}', 400, "speed"),
        ("/api/policy", b'{"checkpoint": "/nonexistent/run"}', 404, "checkpoint not found: /nonexistent/run"),
        ("/api/policy", b'{"checkpoint": "relative/run"}', 400, "absolute path"),
        ("/api/policy", b'{"checkpoint": "/tmp", "device": "tpu"}', 400, "device"),
        ("/api/policy", b"{}", 400, "checkpoint"),
        ("/api/episode/label", b'{"success": "yes"}', 400, "success"),
        ("/api/episode/label", b'{"success": true, "episode": 99}', 404, "episode 99"),
        ("/api/estop", b'{"reason": 5}', 400, "reason"),
        ("/api/episode/stop", b"{}", 409, "no episode is running"),
    ],
)
def test_malformed_and_out_of_range_requests_get_a_clear_4xx_and_change_nothing(daemon, path, body, status, message):
    before = snapshot(daemon)
    got, data, _ = raw(daemon, "POST", path, body, auth(daemon, **{"Content-Type": "application/json"}))
    assert got == status, data
    assert message in data["error"]
    assert snapshot(daemon) == before


def test_a_body_over_the_size_limit_gets_413(daemon):
    body = json.dumps({"task": "x" * 40000}).encode()
    status, _, _ = raw(daemon, "POST", "/api/episode/start", body, auth(daemon, **{"Content-Type": "application/json"}))
    assert status == 413


def test_a_checkpoint_that_does_not_fit_the_arm_gets_422(daemon, tmp_path):
    from robopolicy.types import FieldSpec, ObservationSpec, osc_pose_action_spec
    from tests import fixture_policy as fixture

    cfg = fixture.MLPConfig(
        ObservationSpec((FieldSpec("state", (5,)),)), osc_pose_action_spec(), horizon=8, n_action_steps=4, hidden=8
    )
    p = fixture.MLPPolicy(cfg)
    p.fit_normalizer({"state": np.random.default_rng(0).normal(size=(8, 5)), "action": np.zeros((8, 7))})
    p.save(tmp_path / "misfit")
    before = snapshot(daemon)
    with pytest.raises(DaemonError) as e:
        daemon.client().load_policy(tmp_path / "misfit")
    assert e.value.status == 422 and "does not fit this arm" in e.value.message and "state" in e.value.message
    assert snapshot(daemon) == before


# ---------------------------------------------------------------------- episodes
def test_an_episode_runs_streams_telemetry_is_recorded_and_labelled(daemon, checkpoint):
    c = daemon.client()
    assert c.status()["state"] == "idle"
    with pytest.raises(DaemonError, match="no policy loaded"):
        c.start()
    c.load_policy(checkpoint)

    async def watch():
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{daemon.url}/api/ws", headers=auth(daemon)) as ws:
            hello = json.loads(await ws.receive_str(timeout=5))
            assert hello["status"]["policy"]["checkpoint"] == str(checkpoint)
            await asyncio.to_thread(c.start, 5, 30, "reach")
            ticks, end = [], None
            while end is None:
                msg = json.loads(await ws.receive_str(timeout=10))
                for r in msg["records"]:
                    if r["type"] == "tick":
                        ticks.append(r)
                    elif r["type"] == "episode_end":
                        end = r
            return ticks, end

    ticks, end = asyncio.run(watch())
    assert end["reason"] == "max_ticks" and len(ticks) == 30
    assert [t["tick"] for t in ticks] == list(range(30))
    s = c.wait_state()
    last = s["last_episode"]
    assert last["end_reason"] == "max_ticks" and last["ticks"] == 30 and last["seed"] == 5
    n = s["recording"]["episodes"]
    assert last["store_episode"] == n - 1
    with pytest.raises(DaemonError, match="409.*no episode is running"):
        c.stop()
    out = c.label(False, note="knocked the cube")
    assert out["metadata"]["operator_success"] is False
    store = EpisodeStore.open(daemon.root / "rec.zarr")
    ep = store.episode(n - 1)
    meta = store.episode_metadata(n - 1)
    assert meta["operator_success"] is False and meta["operator_note"] == "knocked the cube"
    assert meta["task"] == "reach" and meta["checkpoint"] == str(checkpoint) and meta["end_reason"] == "max_ticks"
    assert len(ep["action"]) == 30 and ep["state"].shape == (30, 19)
    np.testing.assert_allclose(ep["action"], [t["action"] for t in ticks], rtol=1e-6)
    assert np.isfinite(ep["predicted_chunk"][ep["chunk_index"] >= 0]).all()
    assert (np.diff(ep["timestamp"]) > 0).all() and list(ep["tick"]) == list(range(30))


def test_estop_holds_latches_and_reset_returns_to_idle_without_motion(daemon, checkpoint):
    c = daemon.client()
    c.load_policy(checkpoint)
    c.start(seed=1, max_ticks=100000)
    time.sleep(0.5)
    assert c.status()["state"] == "running"
    assert c.estop("test")["from"] == "running"
    s = c.wait_state(("estopped",))
    last = s["last_episode"]
    assert last["end_reason"] == "fault" and last["faults"][0]["kind"] == "estop"
    with pytest.raises(DaemonError, match="409.*reset first"):
        c.start()
    seq = c.status()["telemetry_seq"]
    assert c.reset()["state"] == "idle"
    time.sleep(0.3)
    new = c.telemetry(since=seq)["records"]
    assert not [r for r in new if r["type"] == "tick"], "reset must not move the arm"
    store = EpisodeStore.open(daemon.root / "rec.zarr")
    meta = store.episode_metadata(last["store_episode"])
    assert [e["kind"] for e in meta["events"]] == ["estop"] and meta["faults"][0]["kind"] == "estop"


def test_a_sigkill_mid_episode_keeps_finished_episodes_and_the_restart_is_idle(tmp_path, checkpoint):
    d = DaemonProcess(tmp_path).start()
    c = d.client()
    c.load_policy(checkpoint)
    c.start(seed=0, max_ticks=20)
    c.wait_state()
    c.label(True)
    c.start(seed=1, max_ticks=100000)
    time.sleep(0.8)
    assert c.status()["state"] == "running"
    d.stop(signal.SIGKILL)
    assert d.proc.returncode == -signal.SIGKILL
    before = EpisodeStore.open(tmp_path / "rec.zarr")
    assert before.n_episodes == 1 and before.episode_metadata(0)["operator_success"] is True
    d.start()
    try:
        c = d.client()
        s = c.status()
        assert s["state"] == "idle" and s["episode"] is None and s["policy"] is None
        assert s["recording"]["episodes"] == 1
        time.sleep(0.3)
        assert not [r for r in c.telemetry()["records"] if r["type"] == "tick"], "a restart must not move"
        with pytest.raises(DaemonError, match="no policy loaded"):
            c.start()
    finally:
        d.stop()
    after = EpisodeStore.open(tmp_path / "rec.zarr")
    np.testing.assert_array_equal(after.episode(0)["action"], before.episode(0)["action"])


def test_systemd_gets_ready_and_watchdog_pings(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    d = DaemonProcess(tmp_path)
    d.start(env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
    try:
        got = [sock.recv(256).decode() for _ in range(3)]
    finally:
        d.stop()
        got.append(sock.recv(256).decode())
        sock.close()
    assert got[0] == "READY=1" and got[1:3] == ["WATCHDOG=1", "WATCHDOG=1"]
    assert "STOPPING=1" in got
