"""The LeRobotDataset exporter where lerobot is absent (the main env): clear errors, nothing
written, and the field names that import back. Against lerobot itself:
``tests/real/test_lerobot_dataset.py`` (the ``real`` env)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from robopolicy.cli import main
from robopolicy.data.exporters import export_lerobot, field_to_lerobot_key
from robopolicy.data.importers.lerobot import lerobot_key_to_field
from robopolicy.data.store import EpisodeStore

no_lerobot = pytest.mark.skipif(importlib.util.find_spec("lerobot") is not None, reason="lerobot is installed here")


def small_store(path):
    s = EpisodeStore.create(path, control_rate=10)
    s.add_episode({"state": np.zeros((3, 2), np.float32), "image.cam": np.zeros((3, 4, 4, 3), np.uint8)}, {"task": "t"})
    s.close()
    return path


def test_field_names_are_the_importers_inverse():
    names = {
        "state": "observation.state",
        "action": "action",
        "reward": "next.reward",
        "done": "next.done",
        "eef_pos": "observation.eef_pos",
        "image.agentview": "observation.images.agentview",
        "image.main": "observation.images.main",
    }
    for field, key in names.items():
        assert field_to_lerobot_key(field) == key and lerobot_key_to_field(key) == field
    for bad in ("image", "images.x"):
        with pytest.raises(ValueError, match="imports back"):
            field_to_lerobot_key(bad)


@no_lerobot
def test_export_without_lerobot_is_a_clear_error(tmp_path, capsys):
    store = small_store(tmp_path / "s.zarr")
    with pytest.raises(ImportError, match="make real-env"):
        export_lerobot(store, tmp_path / "ds")
    assert main(["data", "export", "lerobot", str(store), "--out", str(tmp_path / "ds")]) == 2
    assert "make real-env" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # nothing written


def test_export_refuses_an_existing_out(tmp_path, capsys):
    store = small_store(tmp_path / "s.zarr")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="already exists"):
        export_lerobot(store, tmp_path / "ds")
    assert main(["data", "export", "lerobot", str(store), "--out", str(tmp_path / "ds")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "ds" / "mine.txt").read_text() == "keep"


def test_video_backend_is_for_lerobot_imports_only(tmp_path, capsys):
    store = small_store(tmp_path / "s.zarr")
    rc = main(["data", "import", "zarr", str(store), "--out", str(tmp_path / "o.zarr"), "--video-backend", "pyav"])
    assert rc == 2 and "--video-backend applies to lerobot imports only" in capsys.readouterr().err
