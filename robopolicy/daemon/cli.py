"""``robopolicy daemon --config real/<arm>.yaml`` (the service) and ``robopolicy daemonctl`` (its client)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("robopolicy.daemon")
ACCESS_LOG = "robopolicy.daemon.access"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "daemon",
        help="the control daemon: an authenticated local API, live telemetry and a status page for one arm",
        description=(
            "Run the control daemon for one arm. It connects the arm, holds it and waits: it moves only when an "
            "episode is started through the API (also after a crash or restart). Every request needs the token "
            "in server.token_file (created, mode 600, on the first start). See real/README.md."
        ),
    )
    p.add_argument("--config", required=True, help="daemon config, e.g. real/mock.yaml or real/so101.yaml")
    p.add_argument("--port", type=int, default=None, help="override server.port (0: any free port)")
    p.add_argument("--ready-file", default=None, help="write {port, pid} here as JSON once serving (for scripts)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=serve)

    c = subparsers.add_parser(
        "daemonctl",
        help="command a running control daemon (status, load, start, stop, estop, reset, label)",
        description="Talk to a running `robopolicy daemon` with the token from its config's token file.",
    )
    c.add_argument("--config", required=True, help="the daemon's config (for its address and token file)")
    c.add_argument("--port", type=int, default=None, help="the daemon's port if not server.port")
    c.add_argument(
        "action", choices=["status", "load", "start", "stop", "estop", "reset", "label", "wait"], help="what to do"
    )
    c.add_argument("value", nargs="?", default=None, help="load: checkpoint path; label: success or failure")
    c.add_argument("--seed", type=int, default=None, help="start: the episode's seed")
    c.add_argument("--max-ticks", type=int, default=None, help="start: the episode's length limit")
    c.add_argument("--task", default=None, help="start: task text recorded with the episode")
    c.add_argument("--episode", type=int, default=None, help="label: the store episode (default: the last)")
    c.add_argument("--timeout", type=float, default=300.0, help="wait: seconds to wait for the episode to end")
    c.set_defaults(func=ctl)


def serve(args: argparse.Namespace) -> int:
    from robopolicy.daemon.auth import load_or_create_token
    from robopolicy.daemon.config import load_config
    from robopolicy.daemon.service import Daemon

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # one line per request only when debugging (status polling at 50 Hz would flood the journal)
    logging.getLogger(ACCESS_LOG).setLevel(logging.DEBUG if args.log_level == "DEBUG" else logging.WARNING)
    overrides = {"server": {"port": args.port}} if args.port is not None else None
    cfg = load_config(args.config, overrides)
    token, created = load_or_create_token(cfg.token_path)
    if created:
        log.info("created the API token file %s (mode 600); give its content to the status page", cfg.token_path)
    daemon = Daemon(cfg)
    daemon.start()  # connect and hold; a driver fault leaves it in state "fault", answering the API
    try:
        asyncio.run(_serve(daemon, token, cfg.server.host, cfg.server.port, args.ready_file))
    finally:
        daemon.close()
    return 0


async def _serve(daemon: Any, token: str, host: str, port: int, ready_file: str | None) -> None:
    from aiohttp import web

    from robopolicy.daemon.server import make_app
    from robopolicy.daemon.systemd import notify

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    app = make_app(daemon, token, port)
    runner = web.AppRunner(app, access_log=logging.getLogger(ACCESS_LOG))
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    log.info("serving http://%s:%d (state %s)", host, port, daemon.state)
    if ready_file:
        tmp = Path(ready_file).with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": __import__("os").getpid()}))
        tmp.replace(ready_file)
    notify("READY=1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    notify("STOPPING=1")
    log.info("stopping")
    await runner.cleanup()


def ctl(args: argparse.Namespace) -> int:
    from robopolicy.daemon.client import DaemonClient, DaemonError

    c = DaemonClient.from_config(args.config, args.port)
    try:
        if args.action == "status":
            out = c.status()
        elif args.action == "load":
            if not args.value:
                raise ValueError("daemonctl load needs a checkpoint path")
            out = c.load_policy(args.value)
        elif args.action == "start":
            out = c.start(seed=args.seed, max_ticks=args.max_ticks, task=args.task)
        elif args.action == "stop":
            out = c.stop()
        elif args.action == "estop":
            out = c.estop(args.value)
        elif args.action == "reset":
            out = c.reset()
        elif args.action == "label":
            if args.value not in ("success", "failure"):
                raise ValueError("daemonctl label needs 'success' or 'failure'")
            out = c.label(args.value == "success", args.episode)
        else:
            out = c.wait_state(("idle", "estopped", "fault"), args.timeout)
    except DaemonError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


__all__ = ["add_parser"]
