"""The daemon's configuration: one YAML per arm in ``real/`` (``real/mock.yaml``, ``real/so101.yaml``).

Every section and key is checked on load; an unknown or bad key is a ``ValueError`` naming the
file and the key::

    server:
      host: 127.0.0.1          # bind address; anything but loopback needs allow_remote: true
      port: 8765
      token_file: ~/.config/robopolicy/daemon.token   # created (mode 600) if missing
      allowed_hosts: []        # extra Host header values (e.g. "arm-pc.local:8765")
      allowed_origins: []      # extra Origin values (e.g. "http://arm-pc.local:8765")
      max_body_bytes: 16384
      allow_remote: false
    driver:
      name: mock               # a robopolicy driver (robopolicy.control.drivers)
      options: {profile: robosuite_panda}
    controller:                # robopolicy.control.controller.ControllerConfig fields
      hz: 20
      strategy: replace
      priority: auto
      max_ticks: 600           # an episode's length when the start request gives none
    recording:
      store: ~/robopolicy/recordings/mock.zarr   # every episode is appended here
      runs_dir: ~/robopolicy/recordings/mock.runs  # telemetry.jsonl per episode
      images: true             # record camera images (false: low-dim only)
    policy_roots: []           # if set, checkpoints load only from under these folders
    device: cpu                # where the policy runs (cpu, cuda, auto)

Paths may start with ``~``; relative paths are relative to the config file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

from robopolicy.config import from_dict, load_yaml


def _path(p: str, base: Path) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else (base / q).resolve()


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token_file: str = "~/.config/robopolicy/daemon.token"
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 16384
    allow_remote: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if not 256 <= self.max_body_bytes <= 16 * 2**20:
            raise ValueError(f"max_body_bytes must be in [256, 16 MiB], got {self.max_body_bytes}")
        if not self.allow_remote and not _is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address: the API would be reachable from the network. "
                "Bind 127.0.0.1 and use an SSH tunnel, or set allow_remote: true (and keep the token secret)"
            )
        for o in self.allowed_origins:
            if not (o.startswith("http://") or o.startswith("https://")) or o.endswith("/"):
                raise ValueError(f"allowed_origins: {o!r} must look like http://host:port (scheme, no trailing /)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class DriverSection:
    name: str = "mock"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ControllerSection:
    hz: float = 20.0
    strategy: str = "replace"
    priority: str = "auto"
    max_ticks: int = 600
    n_action_steps: int | None = None
    chunk_deadline_s: float | None = None
    reading_deadline_s: float | None = None

    def __post_init__(self) -> None:
        if not self.max_ticks >= 1:
            raise ValueError(f"max_ticks must be >= 1, got {self.max_ticks}")


@dataclasses.dataclass(frozen=True)
class RecordingSection:
    store: str = "~/robopolicy/recordings/daemon.zarr"
    runs_dir: str = "~/robopolicy/recordings/daemon.runs"
    images: bool = True


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    server: ServerConfig = ServerConfig()
    driver: DriverSection = DriverSection()
    controller: ControllerSection = ControllerSection()
    recording: RecordingSection = RecordingSection()
    policy_roots: tuple[str, ...] = ()
    device: str = "cpu"
    base_dir: str = "."
    """Folder relative paths are resolved against (the config file's; set by :func:`load_config`)."""

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")

    # resolved paths
    @property
    def token_path(self) -> Path:
        return _path(self.server.token_file, Path(self.base_dir))

    @property
    def store_path(self) -> Path:
        return _path(self.recording.store, Path(self.base_dir))

    @property
    def runs_path(self) -> Path:
        return _path(self.recording.runs_dir, Path(self.base_dir))

    @property
    def policy_root_paths(self) -> list[Path]:
        return [_path(p, Path(self.base_dir)) for p in self.policy_roots]


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> DaemonConfig:
    """Read ``path`` (a ``real/*.yaml``); ``overrides`` replace whole sections' keys
    (``{"server": {"port": 0}}``). ValueError names the file and the bad key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"daemon config not found: {path}")
    data = load_yaml(path) or {}
    if not isinstance(data, dict):
        raise ValueError(f"daemon config {path}: expected a mapping at the top level")
    for section, values in (overrides or {}).items():
        data[section] = {**(data.get(section) or {}), **values} if isinstance(values, dict) else values
    if "base_dir" in data:
        raise ValueError(f"daemon config {path}: 'base_dir' is set by the loader, not the file")
    try:
        return from_dict(DaemonConfig, {**data, "base_dir": str(path.resolve().parent)})
    except ValueError as e:
        raise ValueError(f"daemon config {path}: {e}") from None


__all__ = ["ControllerSection", "DaemonConfig", "DriverSection", "RecordingSection", "ServerConfig", "load_config"]
