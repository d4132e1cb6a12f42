"""`robopolicy demos` command line: help, errors (nothing written), a tiny generate run."""

from __future__ import annotations

import json

import pytest

from robopolicy.cli import main
from robopolicy.data.store import EpisodeStore


def test_help(capsys):
    for argv in (["demos", "--help"], ["demos", "generate", "--help"], ["demos", "record", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "--keep-failed" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "Lfit"], "unknown task 'Lfit'"),
        (["--task", "Lift", "--cameras", "agentview,wrist"], "unknown camera 'wrist'"),
    ],
)
def test_bad_input_exits_nonzero_and_writes_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "d.zarr"
    rc = main(["demos", "generate", "--episodes", "2", "--out", str(out), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_record_bad_task(tmp_path, capsys):
    rc = main(["demos", "record", "--task", "Nope", "--device", "keyboard", "--out", str(tmp_path / "r.zarr")])
    assert rc == 2 and "unknown task 'Nope'" in capsys.readouterr().err
    assert not (tmp_path / "r.zarr").exists()


def test_generate_one_episode(tmp_path, capsys):
    out = tmp_path / "lift.zarr"
    argv = ["demos", "generate", "--task", "Lift", "--episodes", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n_success"] == 1
    assert EpisodeStore.open(out).n_episodes == 1
    assert main(argv) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--seed", "4"]) == 0
    assert EpisodeStore.open(out).episode_metadata(0)["seed"] == 4
