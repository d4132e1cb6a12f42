"""The daemon's HTTP API, WebSocket telemetry stream and status page (aiohttp).

Endpoints (JSON in and out; every one but the page needs the token, see :mod:`robopolicy.daemon.auth`)::

    GET  /                      the status page (static; it holds no data and asks for the token)
    POST /api/session           {"token": ...} -> a session cookie for the page (204)
    DELETE /api/session         end the page's session
    GET  /api/status            state, policy, episode, last episode, recording
    POST /api/policy            {"checkpoint": "/abs/path", "device": "cpu"?}
    POST /api/episode/start     {"seed": int?, "max_ticks": int?, "task": str?}
    POST /api/episode/stop      {}
    POST /api/episode/label     {"success": bool, "episode": int?, "note": str?}
    POST /api/estop             {"reason": str?}
    POST /api/reset             {}
    GET  /api/telemetry?since=N&limit=M   buffered records after seq N
    GET  /api/ws                WebSocket: {"type": "hello", "status": ...}, then
                                {"type": "records", "records": [...]} batches every 50 ms

Errors are ``{"error": message}`` with 400 (malformed JSON, schema), 401 (no or wrong token),
403 (Host, Origin, or a checkpoint outside ``policy_roots``), 404, 409 (wrong state), 413 (body
too large) or 422 (a checkpoint that does not load or fit). A refused request changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from robopolicy.daemon import auth
from robopolicy.daemon.service import Daemon, RequestError, jsonable_status
from robopolicy.daemon.systemd import notify, watchdog_period_s

log = logging.getLogger("robopolicy.daemon")

STATIC = Path(__file__).parent / "static"
BROADCAST_PERIOD_S = 0.05
WS_SEND_TIMEOUT_S = 1.0
MAX_WS_CLIENTS = 64


# ---------------------------------------------------------------------- request schemas
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SessionBody(_Body):
    token: str = Field(min_length=1, max_length=256)


class PolicyBody(_Body):
    checkpoint: str = Field(min_length=1, max_length=4096)
    device: str | None = Field(default=None, pattern=r"^(cpu|cuda|cuda:\d+|auto)$")


class StartBody(_Body):
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    max_ticks: int | None = Field(default=None, ge=1, le=1_000_000)
    task: str | None = Field(default=None, max_length=200)


class EmptyBody(_Body):
    pass


class EstopBody(_Body):
    reason: str | None = Field(default=None, max_length=200)


class LabelBody(_Body):
    success: bool
    episode: int | None = Field(default=None, ge=0)
    note: str | None = Field(default=None, max_length=500)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def _body(request: web.Request, model: type[_Body]) -> Any:
    """The request's JSON body validated by ``model``; an empty body is ``{}``."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(413, f"request body larger than {request.app['max_body']} bytes") from None
    if raw.strip():
        if request.content_type != "application/json":
            raise RequestError(400, f"expected Content-Type application/json, got {request.content_type!r}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"malformed JSON: {e}") from None
    else:
        data = {}
    if not isinstance(data, dict):
        raise RequestError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
        raise RequestError(400, f"invalid request: {problems}") from None


# ---------------------------------------------------------------------- security middleware
PUBLIC = {("GET", "/"), ("GET", "/favicon.ico"), ("POST", "/api/session")}


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    app = request.app
    host = (request.headers.get("Host") or "").lower()
    if host not in app["hosts"]:
        return _error(403, "Host header not allowed (DNS rebinding protection)")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in app["origins"]:
        return _error(403, "Origin not allowed")
    if (request.method, request.path) in PUBLIC:
        return await handler(request)
    token = auth.bearer(request.headers.get("Authorization"))
    if token is not None:
        if not auth.same_secret(token, app["token"]):
            return _error(401, "wrong token", {"WWW-Authenticate": "Bearer"})
    elif app["sessions"].valid(request.cookies.get(auth.SESSION_COOKIE)):
        # a browser session: anything but a plain read must show it comes from our own page
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if (request.method != "GET" or is_ws) and origin is None:
            return _error(403, "a session request that changes state needs an Origin header")
    else:
        return _error(401, "authentication required: Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
    try:
        return await handler(request)
    except RequestError as e:
        return _error(e.status, e.message)


# ---------------------------------------------------------------------- handlers
def _daemon(request: web.Request) -> Daemon:
    return request.app["daemon"]


async def page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        STATIC / "index.html",
        headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            "X-Frame-Options": "DENY",
            "Cache-Control": "no-store",
        },
    )


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def session_new(request: web.Request) -> web.Response:
    try:
        body = await _body(request, SessionBody)
    except RequestError as e:
        return _error(e.status, e.message)
    if not auth.same_secret(body.token, request.app["token"]):
        return _error(401, "wrong token")
    resp = web.Response(status=204)
    resp.set_cookie(
        auth.SESSION_COOKIE, request.app["sessions"].new(), httponly=True, samesite="Strict", path="/", max_age=None
    )
    return resp


async def session_end(request: web.Request) -> web.Response:
    request.app["sessions"].drop(request.cookies.get(auth.SESSION_COOKIE))
    resp = web.Response(status=204)
    resp.del_cookie(auth.SESSION_COOKIE, path="/")
    return resp


async def status(request: web.Request) -> web.Response:
    return web.json_response(jsonable_status(_daemon(request).status()))


async def load_policy(request: web.Request) -> web.Response:
    body = await _body(request, PolicyBody)
    out = await asyncio.to_thread(_daemon(request).load_policy, body.checkpoint, body.device)
    return web.json_response(out)


async def episode_start(request: web.Request) -> web.Response:
    body = await _body(request, StartBody)
    out = await asyncio.to_thread(_daemon(request).start_episode, body.seed, body.max_ticks, body.task)
    return web.json_response(out)


async def episode_stop(request: web.Request) -> web.Response:
    await _body(request, EmptyBody)
    return web.json_response(_daemon(request).stop_episode())


async def episode_label(request: web.Request) -> web.Response:
    body = await _body(request, LabelBody)
    out = await asyncio.to_thread(_daemon(request).label, body.success, body.episode, body.note)
    return web.json_response(out)


async def estop(request: web.Request) -> web.Response:
    body = await _body(request, EstopBody)
    return web.json_response(_daemon(request).estop(body.reason or "operator e-stop"))


async def reset(request: web.Request) -> web.Response:
    await _body(request, EmptyBody)
    return web.json_response(await asyncio.to_thread(_daemon(request).reset))


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise RequestError(400, f"query {name}={raw!r} is not an integer") from None
    if not lo <= v <= hi:
        raise RequestError(400, f"query {name}={v} is outside [{lo}, {hi}]")
    return v


async def telemetry(request: web.Request) -> web.Response:
    since = _int_query(request, "since", 0, 0, 2**62)
    limit = _int_query(request, "limit", 500, 1, 5000)
    seq, records = _daemon(request).records_since(since, limit)
    return web.json_response({"seq": seq, "records": records})


async def ws_handler(request: web.Request) -> web.StreamResponse:
    clients: set[web.WebSocketResponse] = request.app["ws_clients"]
    if len(clients) >= MAX_WS_CLIENTS:
        return _error(503, f"too many telemetry clients (max {MAX_WS_CLIENTS})")
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
    await ws.prepare(request)
    d = _daemon(request)
    await ws.send_str(json.dumps({"type": "hello", "status": jsonable_status(d.status())}))
    clients.add(ws)
    try:
        async for msg in ws:  # clients only listen; anything they send is ignored
            if msg.type == WSMsgType.ERROR:
                break
    finally:
        clients.discard(ws)
    return ws


# ---------------------------------------------------------------------- background tasks
async def _broadcast(app: web.Application) -> None:
    """Every BROADCAST_PERIOD_S: the new records, one JSON text for all clients."""
    d: Daemon = app["daemon"]
    seq = d.last_seq
    while True:
        await asyncio.sleep(BROADCAST_PERIOD_S)
        clients = list(app["ws_clients"])
        if not clients:
            seq = d.last_seq
            continue
        seq, records = d.records_since(seq, limit=2000)
        if not records:
            continue
        text = json.dumps({"type": "records", "records": records})
        await asyncio.gather(*(_send(app, ws, text) for ws in clients))


async def _send(app: web.Application, ws: web.WebSocketResponse, text: str) -> None:
    try:
        await asyncio.wait_for(ws.send_str(text), WS_SEND_TIMEOUT_S)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        app["ws_clients"].discard(ws)  # too slow or gone: drop it, never wait on it
        with contextlib.suppress(Exception):
            await ws.close()


async def _watchdog(app: web.Application, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s / 2)
        if app["daemon"].healthy():
            notify("WATCHDOG=1")
        else:
            log.error("control loop not ticking: withholding the systemd watchdog ping")


async def _on_startup(app: web.Application) -> None:
    app["tasks"] = [asyncio.create_task(_broadcast(app))]
    period = watchdog_period_s()
    if period:
        app["tasks"].append(asyncio.create_task(_watchdog(app, period)))


async def _on_shutdown(app: web.Application) -> None:
    for ws in list(app["ws_clients"]):
        await ws.close()
    for t in app.get("tasks", []):
        t.cancel()


def make_app(daemon: Daemon, token: str, port: int) -> web.Application:
    """The aiohttp application for ``daemon``; ``port`` is the one it serves on (for the Host and
    Origin allowlists)."""
    cfg = daemon.config.server
    app = web.Application(middlewares=[guard], client_max_size=cfg.max_body_bytes)
    app["daemon"] = daemon
    app["token"] = token
    app["sessions"] = auth.Sessions()
    app["hosts"] = auth.allowed_hosts(port, cfg.allowed_hosts)
    app["origins"] = auth.allowed_origins(port, cfg.allowed_origins)
    app["max_body"] = cfg.max_body_bytes
    app["ws_clients"] = set()
    app.router.add_routes(
        [
            web.get("/", page),
            web.get("/favicon.ico", favicon),
            web.post("/api/session", session_new),
            web.delete("/api/session", session_end),
            web.get("/api/status", status),
            web.post("/api/policy", load_policy),
            web.post("/api/episode/start", episode_start),
            web.post("/api/episode/stop", episode_stop),
            web.post("/api/episode/label", episode_label),
            web.post("/api/estop", estop),
            web.post("/api/reset", reset),
            web.get("/api/telemetry", telemetry),
            web.get("/api/ws", ws_handler),
        ]
    )
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    return app


__all__ = ["make_app"]
