"""`demos generate` never loses data: --overwrite refuses user files and keeps the old store
until the new one is complete, Ctrl-C stops at an episode boundary with a valid store that
records its generation as incomplete, and --append continues it with fresh seeds.

Driven through the CLI in a subprocess, with a real SIGINT (to the whole process group, as a
terminal's Ctrl-C is delivered, so pool workers receive it too).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from robopolicy.data.store import EpisodeStore
from robopolicy.envs.generate import GenerateReport
from tests.cli_subprocess import cli, run_cli

REPO = Path(__file__).resolve().parents[2]


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def generation_attr(store: Path) -> dict:
    """The store's ``generation`` attribute, read from zarr.json without opening the store."""
    return json.loads((store / "zarr.json").read_text())["attributes"].get("generation", {})


def wait_for(cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def small_store(path: Path, n: int = 3) -> None:
    store = EpisodeStore.create(path, source="user's own demos")
    rng = np.random.default_rng(0)
    for i in range(n):
        store.add_episode(
            {"action": rng.standard_normal((12, 7)).astype(np.float32), "state": rng.standard_normal((12, 4))},
            {"seed": i, "success": True},
        )


def test_overwrite_refuses_a_directory_of_user_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("1,2,3")
    before = tree_digest(out)
    r = run_cli("demos", "generate", "--task", "Lift", "--episodes", "1", "--out", str(out), "--overwrite")
    assert r.returncode == 2, r.stderr
    assert "not an episode store" in r.stderr and str(out) in r.stderr
    assert tree_digest(out) == before


@pytest.mark.parametrize("command", ["generate", "record"])
def test_out_that_is_a_file_exits_2_before_any_work(tmp_path, command):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    extra = ["--episodes", "1", "--overwrite"] if command == "generate" else ["--device", "keyboard"]
    t0 = time.monotonic()
    r = run_cli("demos", command, "--task", "Lift", *extra, "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert "is a file" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text() == "keep me"
    assert time.monotonic() - t0 < 60  # refused up front, not after building the simulator


def test_report_json_has_no_nan():
    report = GenerateReport(path="x", task="Lift", requested=1, n_success=1, n_attempts=1, seconds=1.0)
    text = json.dumps(report.to_dict(), allow_nan=False)  # raises on NaN
    assert json.loads(text)["steady_episodes_per_min"] is None


def test_interrupted_overwrite_leaves_the_old_store_intact(tmp_path):
    out = tmp_path / "old.zarr"
    small_store(out)
    before = tree_digest(out)
    p = cli(
        "demos", "generate", "--task", "Lift", "--episodes", "40", "--out", str(out), "--overwrite", "--no-progress"
    )
    staged = lambda: [d for d in tmp_path.iterdir() if d.name.startswith(".old.zarr.partial")]  # noqa: E731

    def staged_has_an_episode() -> bool:
        return any(generation_attr(d).get("n_success", 0) >= 1 for d in staged() if (d / "zarr.json").is_file())

    wait_for(lambda: staged_has_an_episode() or p.poll() is not None, 240, "the first new episode")
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "old store is unchanged" in err
    assert tree_digest(out) == before
    assert staged() == []


def test_sigint_during_generation_leaves_a_valid_store_and_append_continues(tmp_path):
    out = tmp_path / "lift.zarr"
    p = cli("demos", "generate", "--task", "Lift", "--episodes", "40", "--out", str(out), "--workers", "2")
    wait_for(
        lambda: (out / "zarr.json").is_file() and generation_attr(out).get("n_success", 0) >= 2 or p.poll() is not None,
        300,
        "two finished episodes",
    )
    os.killpg(p.pid, signal.SIGINT)  # a terminal's Ctrl-C: the pool workers get it too
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "SystemError" not in err

    v = run_cli("data", "validate", str(out))
    assert v.returncode == 0, v.stdout + v.stderr
    gen = generation_attr(out)
    store = EpisodeStore.open(out)
    n = store.n_episodes
    assert 2 <= n < 40 and gen["requested"] == 40 and gen["complete"] is False and gen["n_success"] == n
    seeds = [m["seed"] for m in store.episodes_metadata]
    assert gen["next_seed"] > max(seeds)

    info = run_cli("data", "info", str(out), "--json")
    assert info.returncode == 0
    assert json.loads(info.stdout)["attrs"]["generation"]["complete"] is False

    r = run_cli(
        "demos", "generate", "--task", "Lift", "--episodes", "1", "--out", str(out), "--append", "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    store = EpisodeStore.open(out)
    new_seeds = [m["seed"] for m in store.episodes_metadata]
    assert store.n_episodes == n + 1 and new_seeds[:n] == seeds
    assert new_seeds[-1] >= gen["next_seed"] and len(set(new_seeds)) == len(new_seeds)
    assert generation_attr(out)["requested"] == n + 1 and generation_attr(out)["complete"] is True

    r = run_cli("demos", "generate", "--task", "Lift", "--episodes", "1", "--out", str(out), "--append", "--seed", "0")
    assert r.returncode == 2 and "already used" in r.stderr
    r = run_cli("demos", "generate", "--task", "Stack", "--episodes", "1", "--out", str(out), "--append")
    assert r.returncode == 2 and "not 'Stack'" in r.stderr
