"""Does serving clients disturb the control loop? The daemon under telemetry and status load (issue 12).

A ``robopolicy daemon`` process drives the mock arm at 50 Hz with a trained policy. Episodes
alternate between two conditions, in one run:

* **quiet**: no client (only the episode start and the wait for its end);
* **loaded**: 20 WebSocket telemetry clients reading every record, plus a client polling
  ``GET /api/status`` at 50 Hz, all from this process, for the whole episode.

Each episode's ``telemetry.jsonl`` gives every tick's lateness; the ticks of all episodes of a
condition are pooled. Both loop priorities are measured (``none``: plain threads; ``auto``:
SCHED_FIFO where permitted, as the daemon's config ships). The goal in the issue: no measurable
rise of tick lateness p99 with the clients::

    python benchmarks/bench_daemon_load.py --checkpoint runs/lift_ttc --seconds 40 --reps 2 \\
        --out benchmarks/results/daemon_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_meta  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from robopolicy.daemon.client import DaemonClient  # noqa: E402


def start_daemon(root: Path, hz: float, priority: str) -> tuple[subprocess.Popen, DaemonClient, str]:
    cfg = yaml.safe_load((REPO / "real" / "mock.yaml").read_text())
    cfg["server"]["token_file"] = str(root / "token")
    cfg["recording"] = {"store": str(root / "rec.zarr"), "runs_dir": str(root / "runs"), "images": False}
    cfg["controller"].update(hz=hz, priority=priority)
    (root / "daemon.yaml").write_text(yaml.safe_dump(cfg))
    ready = root / "ready.json"
    cmd = [sys.executable, "-m", "robopolicy.cli", "daemon", "--config", str(root / "daemon.yaml")]
    cmd += ["--port", "0", "--ready-file", str(ready), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(root / "daemon.log", "w"))  # noqa: SIM115
    t0 = time.monotonic()
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() - t0 > 120:
            raise RuntimeError(f"daemon did not start: {(root / 'daemon.log').read_text()[-2000:]}")
        time.sleep(0.1)
    port = json.loads(ready.read_text())["port"]
    token = (root / "token").read_text().strip()
    return proc, DaemonClient(f"http://127.0.0.1:{port}", token), token


async def load_clients(url: str, token: str, n_ws: int, poll_hz: float, stop: asyncio.Event) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    counts = [0] * n_ws
    records = [0] * n_ws
    polls: list[float] = []

    async def ws_client(i: int, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(f"{url}/api/ws", headers=headers) as ws:
            while not stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                counts[i] += 1
                records[i] += len(json.loads(msg.data).get("records", []))

    async def poller(session: aiohttp.ClientSession) -> None:
        period = 1.0 / poll_hz
        nxt = time.perf_counter()
        while not stop.is_set():
            t = time.perf_counter()
            async with session.get(f"{url}/api/status", headers=headers) as r:
                await r.read()
            polls.append((time.perf_counter() - t) * 1e3)
            nxt += period
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(ws_client(i, session)) for i in range(n_ws)]
        if poll_hz > 0:
            tasks.append(asyncio.create_task(poller(session)))
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
    p = np.asarray(polls) if polls else np.zeros(1)
    return {
        "ws_clients": n_ws,
        "ws_messages_per_client_min": min(counts) if counts else 0,
        "ws_records_per_client_min": min(records) if records else 0,
        "status_polls": len(polls),
        "status_ms_p50": float(np.percentile(p, 50)),
        "status_ms_p99": float(np.percentile(p, 99)),
    }


async def episode(client: DaemonClient, url: str, token: str, ticks: int, loaded: bool, args) -> dict:
    stop = asyncio.Event()
    load_task = None
    if loaded:
        load_task = asyncio.create_task(load_clients(url, token, args.clients, args.poll_hz, stop))
        await asyncio.sleep(1.0)  # every client connected before the episode starts
    started = await asyncio.to_thread(client.start, 0, ticks)
    while True:
        s = await asyncio.to_thread(client.status)
        if s["state"] != "running":
            break
        await asyncio.sleep(0.5)
    stop.set()
    clients = await load_task if load_task else None
    last = s["last_episode"]
    recs = [json.loads(x) for x in (Path(started["run_dir"]) / "telemetry.jsonl").read_text().splitlines()]
    late = [r["lateness_ms"] for r in recs if r["type"] == "tick"]
    body = [r["body_ms"] for r in recs if r["type"] == "tick"]
    misses = sum(1 for r in recs if r["type"] == "tick" and r["deadline_miss"])
    return {"end": last["end_reason"], "lateness": late, "body": body, "misses": misses, "clients": clients}


def pct(x: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(x), q)) if x else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="runs/lift_ttc", help="a policy for the mock arm (state 19, osc_pose)")
    ap.add_argument("--hz", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=40.0, help="length of each episode")
    ap.add_argument("--reps", type=int, default=2, help="quiet/loaded pairs per priority")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--poll-hz", type=float, default=50.0)
    ap.add_argument("--priorities", default="none,auto")
    ap.add_argument("--out", default="benchmarks/results/daemon_load.json")
    args = ap.parse_args()
    ticks = int(args.seconds * args.hz)
    out: dict = {"meta": {**machine_meta(), "args": vars(args)}, "runs": []}
    for priority in args.priorities.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            proc, client, token = start_daemon(Path(tmp), args.hz, priority)
            try:
                client.load_policy(Path(args.checkpoint).resolve())
                pooled: dict[str, dict] = {"quiet": {"lateness": [], "body": [], "misses": 0, "clients": []}}
                pooled["loaded"] = {"lateness": [], "body": [], "misses": 0, "clients": []}
                for rep in range(args.reps):
                    for cond in ("quiet", "loaded") if rep % 2 == 0 else ("loaded", "quiet"):
                        r = asyncio.run(episode(client, client.url, token, ticks, cond == "loaded", args))
                        if r["end"] != "max_ticks":
                            raise RuntimeError(f"episode ended {r['end']!r}, not after {ticks} ticks")
                        p = pooled[cond]
                        p["lateness"] += r["lateness"]
                        p["body"] += r["body"]
                        p["misses"] += r["misses"]
                        if r["clients"]:
                            p["clients"].append(r["clients"])
                        print(
                            f"priority {priority:5s} {cond:6s} rep {rep}: lateness p99 "
                            f"{pct(r['lateness'], 99):.3f} ms, max {max(r['lateness']):.3f} ms, misses {r['misses']}"
                            + (f", clients {r['clients']}" if r["clients"] else ""),
                            flush=True,
                        )
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        for cond, p in pooled.items():
            out["runs"].append(
                {
                    "priority": priority,
                    "condition": cond,
                    "ticks": len(p["lateness"]),
                    "lateness_ms_p50": pct(p["lateness"], 50),
                    "lateness_ms_p99": pct(p["lateness"], 99),
                    "lateness_ms_max": max(p["lateness"]),
                    "body_ms_p99": pct(p["body"], 99),
                    "deadline_misses": p["misses"],
                    "clients": p["clients"],
                }
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(
        f"\n{'priority':8s} {'condition':9s} {'ticks':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'misses':>6s}"
    )
    for r in out["runs"]:
        print(
            f"{r['priority']:8s} {r['condition']:9s} {r['ticks']:6d} {r['lateness_ms_p50']:8.3f} "
            f"{r['lateness_ms_p99']:8.3f} {r['lateness_ms_max']:8.3f} {r['deadline_misses']:6d}"
        )
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
