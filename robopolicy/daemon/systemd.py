"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``): one datagram per message.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) and, with
``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). The daemon sends ``READY=1`` once it
serves, ``WATCHDOG=1`` about every half period while it is healthy (a hung control loop stops
the pings, and systemd restarts the service, which comes back idle), and ``STOPPING=1`` on exit.
Outside systemd every call is a no-op. The protocol is one ``sendto``; no library is needed.
"""

from __future__ import annotations

import os
import socket


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to systemd; False when not under systemd."""
    env = os.environ if env is None else env
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())
    return True


def watchdog_period_s(env: dict[str, str] | None = None) -> float | None:
    """The watchdog period systemd asked for (seconds), or None (no watchdog, or not for us)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1e6 if value > 0 else None


__all__ = ["notify", "watchdog_period_s"]
