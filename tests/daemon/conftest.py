"""A real daemon process on the mock arm, started as a user starts it (``robopolicy daemon``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from robopolicy.daemon.client import DaemonClient
from tests.cli_subprocess import cli
from tests.control.test_controller import constant_policy

REPO = Path(__file__).resolve().parents[2]


class DaemonProcess:
    """``robopolicy daemon --config <dir>/daemon.yaml --port 0`` with the test policies registered."""

    def __init__(self, root: Path, **overrides) -> None:
        self.root = root
        self.config = root / "daemon.yaml"
        if not self.config.exists():
            cfg = yaml.safe_load((REPO / "real" / "mock.yaml").read_text())
            cfg["server"]["token_file"] = str(root / "token")
            cfg["recording"] = {"store": str(root / "rec.zarr"), "runs_dir": str(root / "runs"), "images": True}
            cfg["controller"]["priority"] = "none"
            for section, values in overrides.items():
                cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
            self.config.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, env: dict[str, str] | None = None, timeout_s: float = 60.0) -> DaemonProcess:
        ready = self.root / "ready.json"
        ready.unlink(missing_ok=True)
        old = dict(os.environ)
        os.environ.update(env or {})
        try:
            self.proc = cli(
                "daemon", "--config", str(self.config), "--port", "0", "--ready-file", str(ready),
                with_test_policies=True,
            )  # fmt: skip
        finally:
            os.environ.clear()
            os.environ.update(old)
        deadline = time.monotonic() + timeout_s
        while not ready.exists():
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {err[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise TimeoutError("daemon did not come up")
            time.sleep(0.05)
        self.port = json.loads(ready.read_text())["port"]
        return self

    @property
    def token(self) -> str:
        return (self.root / "token").read_text().strip()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> DaemonClient:
        return DaemonClient(self.url, self.token if token is None else token)

    def output(self) -> str:
        """Everything the process wrote (after it ended)."""
        assert self.proc is not None
        out, err = self.proc.communicate(timeout=30)
        return out + err  # text mode (cli() opens the pipes as text)

    def stop(self, sig: int = signal.SIGTERM) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.output()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "policy"
    constant_policy().save(path)
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonProcess(tmp_path_factory.mktemp("daemon")).start()
    yield d
    d.stop()
