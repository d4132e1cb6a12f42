"""A small client of the daemon's HTTP API (standard library only), for scripts and ``robopolicy daemonctl``::

    c = DaemonClient.from_config("real/mock.yaml")       # URL and token file from the config
    c.load_policy("/abs/path/to/run")
    c.start(seed=3, max_ticks=400)
    c.wait_idle()
    c.label(success=True)

Every refused request raises :class:`DaemonError` with the HTTP status and the daemon's message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class DaemonError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class DaemonClient:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, config: str | Path, port: int | None = None) -> DaemonClient:
        from robopolicy.daemon.auth import load_or_create_token
        from robopolicy.daemon.config import load_config

        cfg = load_config(config)
        if not cfg.token_path.exists():
            raise FileNotFoundError(f"token file {cfg.token_path} not found: is the daemon set up (robopolicy daemon)?")
        token, _ = load_or_create_token(cfg.token_path)
        host = cfg.server.host if cfg.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return cls(f"http://{host}:{port or cfg.server.port}", token)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self._token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                msg = str(e.reason)
            raise DaemonError(e.code, msg) from None
        return json.loads(raw) if raw else None

    # the API
    def status(self) -> dict[str, Any]:
        return self.request("GET", "/api/status")

    def load_policy(self, checkpoint: str | Path, device: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"checkpoint": str(Path(checkpoint).resolve())}
        if device:
            body["device"] = device
        return self.request("POST", "/api/policy", body)

    def start(self, seed: int | None = None, max_ticks: int | None = None, task: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in {"seed": seed, "max_ticks": max_ticks, "task": task}.items() if v is not None}
        return self.request("POST", "/api/episode/start", body)

    def stop(self) -> dict[str, Any]:
        return self.request("POST", "/api/episode/stop", {})

    def estop(self, reason: str | None = None) -> dict[str, Any]:
        return self.request("POST", "/api/estop", {"reason": reason} if reason else {})

    def reset(self) -> dict[str, Any]:
        return self.request("POST", "/api/reset", {})

    def label(self, success: bool, episode: int | None = None, note: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"success": success}
        if episode is not None:
            body["episode"] = episode
        if note is not None:
            body["note"] = note
        return self.request("POST", "/api/episode/label", body)

    def telemetry(self, since: int = 0, limit: int = 500) -> dict[str, Any]:
        return self.request("GET", f"/api/telemetry?since={since}&limit={limit}")

    def wait_state(self, states: tuple[str, ...] = ("idle",), timeout_s: float = 120.0) -> dict[str, Any]:
        """Poll the status until its state is one of ``states``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            s = self.status()
            if s["state"] in states and s["episode"] is None:
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon still {s['state']!r} after {timeout_s} s")
            time.sleep(0.1)


__all__ = ["DaemonClient", "DaemonError"]
