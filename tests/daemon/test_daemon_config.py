"""The daemon's config and token file: bad input is refused with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robopolicy.daemon.auth import TokenFileError, load_or_create_token
from robopolicy.daemon.config import load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "real").glob("*.yaml")))
def test_every_shipped_config_loads(name):
    cfg = load_config(REPO / "real" / name)
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 8765
    assert cfg.controller.max_ticks >= 1 and cfg.store_path.is_absolute()


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"server": {"host": "0.0.0.0"}}, "not a loopback address"),
        ({"server": {"port": 70000}}, "port must be in"),
        ({"server": {"max_body_bytes": 10}}, "max_body_bytes"),
        ({"server": {"allowed_origins": ["evil.example"]}}, "allowed_origins"),
        ({"server": {"tokn_file": "x"}}, "tokn_file"),
        ({"controller": {"max_ticks": 0}}, "max_ticks"),
        ({"device": "tpu"}, "device"),
        ({"recorder": {}}, "recorder"),
    ],
)
def test_a_bad_config_names_the_file_and_the_key(tmp_path, patch, message):
    cfg = yaml.safe_load((REPO / "real" / "mock.yaml").read_text())
    for k, v in patch.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match=message) as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_remote_binding_is_allowed_only_when_asked(tmp_path):
    cfg = yaml.safe_load((REPO / "real" / "mock.yaml").read_text())
    cfg["server"].update(host="0.0.0.0", allow_remote=True)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert load_config(tmp_path / "c.yaml").server.host == "0.0.0.0"


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    cfg = yaml.safe_load((REPO / "real" / "mock.yaml").read_text())
    cfg["recording"]["store"] = "rec/store.zarr"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert load_config(tmp_path / "c.yaml").store_path == tmp_path / "rec" / "store.zarr"


def test_the_token_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "sub" / "token"
    token, created = load_or_create_token(path)
    assert created and len(token) >= 40 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(path) == (token, False)
    path.chmod(0o640)
    with pytest.raises(TokenFileError, match="chmod 600"):
        load_or_create_token(path)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(TokenFileError, match="shorter than 16"):
        load_or_create_token(path)
