"""Who may command the arm: the token file, sessions for the status page, Host and Origin checks.

* **Token.** A random token in a file only its owner can read (mode 600; created on first start).
  A request carries it as ``Authorization: Bearer <token>``; the status page exchanges it once
  (``POST /api/session``, token in the JSON body) for a session cookie (``HttpOnly``,
  ``SameSite=Strict``). The token never travels in a URL, and nothing here logs it.
* **Host.** Every request's ``Host`` header must be one the daemon serves under (loopback names
  with its port, plus ``allowed_hosts``): a DNS-rebinding page, whose requests carry the
  attacker's host name, is refused before anything else is looked at.
* **Origin.** A request that carries an ``Origin`` must come from an allowed origin (the daemon's
  own page, plus ``allowed_origins``); a cookie-authenticated request that changes state must
  carry one. So a page from another site cannot use the operator's session.

Comparisons of secrets are constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import threading
import time
from pathlib import Path

SESSION_COOKIE = "robopolicy_session"
SESSION_TTL_S = 12 * 3600.0


class TokenFileError(ValueError):
    """The token file is unsafe or unreadable (the message names the file and the fix)."""


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token in ``path``, creating the file (mode 600, 32 random bytes) if it is missing.

    Returns ``(token, created)``. Refuses (TokenFileError) a file that its group or others may
    read or write, one owned by another user, or one shorter than 16 characters.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token, True
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenFileError(
            f"token file {path} is readable or writable by group/others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise TokenFileError(f"token file {path} belongs to another user (uid {st.st_uid})")
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise TokenFileError(f"token file {path} holds a token shorter than 16 characters; delete it to make a new one")
    return token, False


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison; None or a non-ASCII value is never equal."""
    if not given:
        return False
    try:
        return hmac.compare_digest(given.encode("ascii"), expected.encode("ascii"))
    except UnicodeEncodeError:
        return False


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class Sessions:
    """Session ids handed to the status page for the token; they expire after ``ttl_s``."""

    def __init__(self, ttl_s: float = SESSION_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._ids: dict[str, float] = {}
        self._lock = threading.Lock()

    def new(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._ids = {k: t for k, t in self._ids.items() if t > now}
            self._ids[sid] = now + self.ttl_s
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        with self._lock:
            # constant time over the known ids: no early exit on the first match
            now = time.monotonic()
            ok = False
            for k, t in self._ids.items():
                ok |= same_secret(sid, k) and t > now
            return ok

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._ids.pop(sid or "", None)


def allowed_hosts(port: int, extra: tuple[str, ...] = ()) -> set[str]:
    """Host header values the daemon answers to: loopback names with ``port`` (and without, for
    port 80), plus ``extra``."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    out = {f"{n}:{port}" for n in names}
    if port == 80:
        out |= set(names)
    return out | {h.lower() for h in extra}


def allowed_origins(port: int, extra: tuple[str, ...] = ()) -> set[str]:
    """Origin values allowed: the daemon's own page under its loopback names, plus ``extra``."""
    return {f"http://{h}" for h in allowed_hosts(port)} | set(extra)


__all__ = [
    "SESSION_COOKIE",
    "Sessions",
    "TokenFileError",
    "allowed_hosts",
    "allowed_origins",
    "bearer",
    "load_or_create_token",
    "same_secret",
]
