"""``robopolicy train`` and ``robopolicy eval`` command lines (in-process)."""

from __future__ import annotations

import json

import pytest
from policy_fixture import make_store

from robopolicy.cli import main


def test_train_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_train_cli_runs_resumes_and_rejects_bad_input(tmp_path, capsys):
    store = make_store(tmp_path / "toy.zarr", n_episodes=3)
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        "policy_name: test_mlp\npolicy: {horizon: 8, n_obs_steps: 2, n_action_steps: 4, hidden: 16}\n"
        "obs_keys: [state]\nbatch_size: 8\nnum_steps: 4\ncheckpoint_every: 2\ndevice: cpu\nval_ratio: 0\n"
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--data", str(store), "--out", str(run), "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    # an existing run needs --resume
    assert main(["train", "--config", str(cfg), "--data", str(store), "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    # resume with the run's own config and data, extended by an override
    assert main(["train", "--out", str(run), "--resume", "--no-progress", "num_steps=6"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["steps"], summary["resumed_from"]) == (6, 4)
    assert main(["train", "--resume", str(run), "--no-progress", "num_steps=7"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 7
    assert (
        main(["train", "--config", str(cfg), "--data", str(store), "--out", str(tmp_path / "r2"), "batch_sise=3"]) == 2
    )
    assert "batch_sise" in capsys.readouterr().err
    assert (
        main(["train", "--config", str(cfg), "--data", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "r3")]) == 2
    )
    assert "not found" in capsys.readouterr().err


def test_eval_cli_errors(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path), "--suite", "sim/lift_lowdim.yaml", "--out", str(tmp_path)]) == 2
    assert "neither a policy directory" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: Lifft\n")
    assert main(["eval", "--checkpoint", str(tmp_path), "--suite", str(bad), "--out", str(tmp_path / "report")]) == 2
    assert "unknown task 'Lifft'" in capsys.readouterr().err
