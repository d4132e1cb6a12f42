"""``robopolicy data ...`` through robopolicy.cli.main."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from robopolicy.cli import main
from robopolicy.data.store import EpisodeStore
from tests.data.test_importers import write_robomimic
from tests.data.test_store import make_episode, write_dp_store
from tests.data.test_store_corruption import damage, grow_tail, make_store, tree_digest

REPO = Path(__file__).resolve().parents[2]


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
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["junk.hdf5"]
    assert main(["data", "import", "robomimic", str(tmp_path / "missing.hdf5"), "--out", str(dst)]) == 2
    assert "source not found" in capsys.readouterr().err
    (tmp_path / "lr" / "meta").mkdir(parents=True)
    (tmp_path / "lr" / "meta" / "info.json").write_text("{}")
    rc = main(["data", "import", "lerobot", str(tmp_path / "lr"), "--out", str(dst)])
    assert rc == 2 and not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["junk.hdf5", "lr"]


def test_import_overwrite_refuses_a_folder_of_user_files_and_keeps_a_store_on_failure(tmp_path, capsys):
    write_robomimic(tmp_path / "lift.hdf5", [3, 4])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    argv = ["data", "import", "robomimic", str(tmp_path / "lift.hdf5"), "--overwrite", "--out"]
    assert main([*argv, str(mine)]) == 2
    assert "not an episode store" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"
    (tmp_path / "file.zarr").write_text("x")
    assert main([*argv, str(tmp_path / "file.zarr")]) == 2 and "is a file" in capsys.readouterr().err
    dst = tmp_path / "lift.zarr"
    assert main([*argv, str(dst)]) == 0
    before = EpisodeStore.open(dst).episode(1)
    (tmp_path / "junk.hdf5").write_text("junk")  # a failing import over the store leaves the store whole
    assert main(["data", "import", "robomimic", str(tmp_path / "junk.hdf5"), "--overwrite", "--out", str(dst)]) == 2
    after = EpisodeStore.open(dst).episode(1)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lift.zarr")]


@pytest.mark.parametrize("argv", [["data"], ["data", "info"], ["data", "import", "robomimic"]])
def test_usage_errors(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


@pytest.mark.parametrize("sub", ["info", "validate", "repair", "import"])
def test_help(sub, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", sub, "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage" in out
    if sub in ("validate", "repair"):
        assert "exit codes:" in out and "  1  " in out and "  2  usage error, not an episode store" in out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "robopolicy.cli", "data", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_validate_deep_names_damaged_chunks_in_a_subprocess(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path)
    r = run_cli("validate", "--deep", str(path))
    assert r.returncode == 0 and "OK (every chunk decoded)" in r.stdout, r.stdout + r.stderr
    damage(path)  # action chunk 0 bytes flipped, image shard 1 truncated, eef_pos chunk 0 deleted
    r = run_cli("validate", "--deep", str(path))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "3 problem(s)" in r.stdout
    assert "field 'action': chunk 0 (steps 0-" in r.stdout and "cannot be decoded: ValueError" in r.stdout
    assert "field 'eef_pos': chunk 0 (steps 0-" in r.stdout and "is missing (zarr would read it as zeros)" in r.stdout
    assert "field 'image.agentview': shard 1 (steps 256-511) has a damaged or truncated chunk index" in r.stdout
    (tmp_path / "plain").mkdir()
    r = run_cli("validate", "--deep", str(tmp_path / "plain"))
    assert r.returncode == 2 and "not an episode store" in r.stderr and "Traceback" not in r.stderr


def test_validate_exit_codes(tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.zarr"
    make_store(path, n_episodes=5, image=False)
    ez = zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    good = ez[:]
    ez[2] = 1
    assert main(["data", "validate", str(path)]) == 1  # corruption is a finding, not a usage error
    assert "meta/episode_ends entry 2 (chunk 0) is 1" in capsys.readouterr().out
    assert main(["data", "info", str(path)]) == 2
    assert "corrupt episode store" in capsys.readouterr().err
    ez[:] = good

    def crash(self, deep=False):
        raise RuntimeError("boom")

    monkeypatch.setattr(EpisodeStore, "validate", crash)
    assert main(["data", "validate", str(path)]) == 2  # a crash of the check itself is never exit 1
    assert "could not validate" in capsys.readouterr().err


def test_repair_command(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    make_store(path, n_episodes=6)
    assert main(["data", "repair", str(path)]) == 0
    assert "nothing to repair (6 episodes" in capsys.readouterr().out
    grow_tail(path, {"action": 5, "eef_pos": 5, "image.agentview": 5}, metadata=1, ends=True)
    before = tree_digest(path)
    assert main(["data", "validate", str(path)]) == 1
    assert "partly written tail episode past the 6 complete episodes" in capsys.readouterr().out
    assert main(["data", "repair", "--dry-run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "would drop: 5 steps of 'action', 5 steps of 'eef_pos'" in out and "nothing changed" in out
    assert tree_digest(path) == before and not list(tmp_path.glob("*backup*"))
    assert main(["data", "repair", str(path)]) == 0
    out = capsys.readouterr().out
    backup = next(tmp_path.glob("s.zarr.meta-backup-*"))
    assert "dropped: 5 steps of 'action'" in out and "1 meta/episode_metadata entry" in out
    assert f"backup of meta/ and the array metadata: {backup}" in out and "now holds 6 episodes" in out
    assert (backup / "meta" / "episode_metadata").is_dir() and (backup / "repair.json").is_file()
    assert main(["data", "validate", "--deep", str(path)]) == 0
    capsys.readouterr()
    # corruption: refused with exit 1, nothing changed, no backup
    ez = zarr.open_group(str(path), mode="r+")["meta/episode_ends"]
    ez[4] = ez[3]
    before = tree_digest(path)
    assert main(["data", "repair", str(path)]) == 1
    err = capsys.readouterr().err
    assert "meta/episode_ends entry 4" in err and "refused" in err and "was not changed" in err
    assert tree_digest(path) == before and len(list(tmp_path.glob("*backup*"))) == 1
    assert main(["data", "repair", str(tmp_path / "nope")]) == 2


def test_info_and_validate_show_an_incomplete_generation(store_path, capsys):
    assert main(["data", "info", str(store_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generation"] is None  # absent: imported stores
    store = EpisodeStore.open(store_path, mode="a")
    store.set_attrs(
        task="Lift",
        cameras=["agentview"],
        generation={"requested": 40, "seed_start": 0, "next_seed": 31, "complete": False, "n_success": 23},
    )
    assert main(["data", "info", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert (
        "generation: INCOMPLETE — 23 of 40 requested successful demos (resume with "
        f"`robopolicy demos generate --task Lift --out {store_path} --append --cameras agentview --image-size 6`)"
    ) in out
    assert main(["data", "info", str(store_path), "--json"]) == 0
    gen = json.loads(capsys.readouterr().out)["generation"]
    assert gen["complete"] is False and gen["requested"] == 40 and gen["n_success"] == 23
    assert gen["resume"].startswith("robopolicy demos generate --task Lift")
    assert main(["data", "validate", str(store_path)]) == 0  # a note, not a failure
    out = capsys.readouterr().out
    assert "OK" in out and "note: generation INCOMPLETE — 23 of 40" in out
    store.set_attrs(generation={"requested": 40, "seed_start": 0, "next_seed": 50, "complete": True, "n_success": 40})
    assert main(["data", "info", str(store_path)]) == 0
    assert "generation: complete (40 of 40 requested successful demos)" in capsys.readouterr().out
    store.set_attrs(generation={"requested": "junk"})  # read defensively
    assert main(["data", "info", str(store_path)]) == 0
    assert "generation: INCOMPLETE — ? of ? requested" in capsys.readouterr().out
