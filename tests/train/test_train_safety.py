"""`robopolicy train` / `eval` refuse bad outputs and bad data before any work, and Ctrl-C
stops training at a step boundary with a checkpoint to resume from. Driven through the CLI in
a subprocess (with the fixture policy registered), with a real SIGINT."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
from policy_fixture import make_store

from robopolicy.data.store import EpisodeStore
from tests.cli_subprocess import cli as _cli
from tests.cli_subprocess import run_cli as _run_cli

REPO = Path(__file__).resolve().parents[2]
CONFIG = (
    "policy_name: test_mlp\npolicy: {horizon: 8, n_obs_steps: 2, n_action_steps: 4, hidden: 16}\n"
    "obs_keys: [state]\nbatch_size: 8\nnum_steps: {steps}\ncheckpoint_every: {steps}\nlog_every: 5\n"
    "device: cpu\nval_ratio: 0\nnum_threads: 1\n"
)


def cli(*argv: str):
    return _cli(*argv, with_test_policies=True)


def run_cli(*argv: str, timeout: float = 300):
    return _run_cli(*argv, timeout=timeout, with_test_policies=True)


def config(tmp_path: Path, steps: int) -> Path:
    cfg = tmp_path / f"train_{steps}.yaml"
    cfg.write_text(CONFIG.replace("{steps}", str(steps)))
    return cfg


def test_out_that_is_a_file_exits_2_before_any_work(tmp_path):
    store = make_store(tmp_path / "toy.zarr", n_episodes=2)
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    r = run_cli("train", "--config", str(config(tmp_path, 4)), "--data", str(store), "--out", str(out))
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("eval", "--checkpoint", str(tmp_path), "--suite", "sim/lift_lowdim.yaml", "--out", str(out))
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr, r.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.tex").write_text("x")
    for argv in (
        ("train", "--config", str(config(tmp_path, 4)), "--data", str(store), "--out", str(mine)),
        ("eval", "--checkpoint", str(tmp_path), "--suite", "sim/lift_lowdim.yaml", "--out", str(mine)),
    ):
        r = run_cli(*argv)
        assert r.returncode == 2 and "directory of other files" in r.stderr, r.stderr
    assert out.read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["paper.tex"]


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    d = tmp_path / "somewhere"
    d.mkdir()
    r = run_cli("train", "--resume", str(d))
    assert r.returncode == 2 and "not a run directory" in r.stderr, r.stderr
    assert list(d.iterdir()) == []


def test_nan_in_the_data_is_refused_up_front_naming_field_and_step(tmp_path):
    store = make_store(tmp_path / "toy.zarr", n_episodes=3, length=30)
    s = EpisodeStore.open(store, mode="a")
    state = s["state"][:]
    state[47, 3] = np.nan  # episode 1, step 17
    s["state"][:] = state
    s.close()
    run = tmp_path / "run"
    r = run_cli("train", "--config", str(config(tmp_path, 4)), "--data", str(store), "--out", str(run))
    assert r.returncode == 2, r.stderr
    assert "'state'" in r.stderr and "step 47" in r.stderr and "episode 1, step 17" in r.stderr
    assert not (run / "checkpoints").exists()


def test_sigint_stops_training_at_a_step_with_a_checkpoint_and_resume_continues(tmp_path):
    store = make_store(tmp_path / "toy.zarr", n_episodes=3)
    run = tmp_path / "run"
    p = cli("train", "--config", str(config(tmp_path, 1_000_000)), "--data", str(store), "--out", str(run))
    metrics = run / "metrics.jsonl"
    t0 = time.monotonic()
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert p.poll() is None and time.monotonic() - t0 < 120, p.communicate()[1]
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    summary = json.loads((run / "summary.json").read_text())
    step = summary["steps"]
    assert summary["interrupted"] is True and 10 <= step < 1_000_000
    ckpt = run / "checkpoints" / f"step_{step}"
    assert (ckpt / "train_state" / "COMPLETE").is_file() and (ckpt / "policy" / "model.safetensors").is_file()

    r = run_cli("train", "--resume", str(run), "--no-progress", f"num_steps={step + 3}")
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["steps"], summary["resumed_from"], summary["interrupted"]) == (step + 3, step, False)
