"""``robopolicy data ...`` through robopolicy.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robopolicy.cli import main
from robopolicy.data.store import EpisodeStore
from tests.data.test_importers import write_robomimic
from tests.data.test_store import make_episode, write_dp_store


@pytest.fixture
def store_path(tmp_path):
    store = EpisodeStore.create(tmp_path / "s.zarr", control_rate=20.0, source="unit")
    rng = np.random.default_rng(0)
    for i, n in enumerate((4, 6, 8)):
        store.add_episode(make_episode(rng, n), {"seed": i, "success": i > 0})
    return tmp_path / "s.zarr"


def test_info(store_path, capsys):
    assert main(["data", "info", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "episodes: 3" in out and "steps: 18" in out and "success: 2 / 3" in out
    assert "image.agentview" in out and "(1, 6, 5, 3)" in out and "control_rate: 20.0" in out
    assert main(["data", "info", str(store_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 3 and info["fields"]["action"]["shape"] == [18, 7]
    assert info["episode_length"] == {"min": 4, "max": 8, "mean": 6.0, "median": 6.0}


def test_validate(store_path, tmp_path, capsys):
    assert main(["data", "validate", str(store_path)]) == 0
    assert "OK" in capsys.readouterr().out
    EpisodeStore.open(store_path, mode="a")["eef_pos"].resize((10, 3))
    assert main(["data", "validate", str(store_path)]) == 1
    assert "'eef_pos' has 10 steps" in capsys.readouterr().out
    assert main(["data", "validate", str(tmp_path / "nope.zarr")]) == 2
    assert "no episode store" in capsys.readouterr().err


def test_import_commands(tmp_path, capsys):
    write_robomimic(tmp_path / "lift.hdf5", [3, 4, 5])
    dst = tmp_path / "lift.zarr"
    assert main(["data", "import", "robomimic", str(tmp_path / "lift.hdf5"), "--out", str(dst)]) == 0
    assert "imported 3 episodes (12 steps)" in capsys.readouterr().out
    assert EpisodeStore.open(dst).n_episodes == 3
    # existing destination: refused without --overwrite, replaced with it
    assert main(["data", "import", "robomimic", str(tmp_path / "lift.hdf5"), "--out", str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    write_dp_store(tmp_path / "pusht.zarr", [2, 3])
    assert main(["data", "import", "zarr", str(tmp_path / "pusht.zarr"), "--out", str(dst), "--overwrite"]) == 0
    assert EpisodeStore.open(dst).keys() == ["action", "image.img", "state"]


def test_import_failure_leaves_nothing(tmp_path, capsys):
    (tmp_path / "junk.hdf5").write_text("junk")
    dst = tmp_path / "out.zarr"
    assert main(["data", "import", "robomimic", str(tmp_path / "junk.hdf5"), "--out", str(dst)]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err
    assert not dst.exists() and not (tmp_path / "out.zarr.partial").exists()
    assert main(["data", "import", "robomimic", str(tmp_path / "missing.hdf5"), "--out", str(dst)]) == 2
    assert "source not found" in capsys.readouterr().err
    (tmp_path / "lr" / "meta").mkdir(parents=True)
    (tmp_path / "lr" / "meta" / "info.json").write_text("{}")
    rc = main(["data", "import", "lerobot", str(tmp_path / "lr"), "--out", str(dst)])
    assert rc == 2 and not dst.exists() and not (tmp_path / "out.zarr.partial").exists()


@pytest.mark.parametrize("argv", [["data"], ["data", "info"], ["data", "import", "robomimic"]])
def test_usage_errors(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


@pytest.mark.parametrize("sub", ["info", "validate", "import"])
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", sub, "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out
