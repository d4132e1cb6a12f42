"""`robopolicy eval --out` over an earlier report: the new report replaces it only when
complete (an interrupted evaluation leaves the old one), and its paths point at --out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))
from policy_fixture import make_store, tiny_config  # noqa: E402

from tests.cli_subprocess import cli  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from robopolicy.train.run import train

    tmp = tmp_path_factory.mktemp("evalout")
    run = tmp / "run"
    train(tiny_config(num_steps=3, checkpoint_every=3), str(make_store(tmp / "toy.zarr")), run, progress=False)
    return run


def eval_cli(run: Path, out: Path, suite: Path) -> subprocess.Popen:
    argv = ["eval", "--checkpoint", str(run), "--suite", str(suite), "--out", str(out), "--workers", "1"]
    return cli(*argv, "--videos", "1", "--no-progress", with_test_policies=True)


def test_a_new_report_replaces_the_old_one_only_when_complete(run_dir, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text('{"old": true}')
    long_suite = tmp_path / "long.yaml"
    long_suite.write_text("task: Lift\nmax_steps: 400\nepisodes: 50\n")
    p = eval_cli(run_dir, out, long_suite)
    staged = lambda: [d for d in tmp_path.iterdir() if d.name.startswith(".report.partial")]  # noqa: E731
    t0 = time.monotonic()
    while not any((d / "videos").exists() for d in staged()):  # rollouts have begun in the staging dir
        assert p.poll() is None and time.monotonic() - t0 < 180, p.communicate()
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # a hang: every thread's stack (faulthandler on SIGABRT) into the failure
        os.killpg(p.pid, signal.SIGABRT)
        _, err = p.communicate(timeout=30)
        raise AssertionError(f"eval did not exit within 120 s of Ctrl-C:\n{err[-20000:]}") from None
    assert p.returncode == 130, err
    assert json.loads((out / "report.json").read_text()) == {"old": True} and staged() == []

    short = tmp_path / "short.yaml"
    short.write_text("task: Lift\nmax_steps: 8\nepisodes: 1\n")
    p = eval_cli(run_dir, out, short)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["episodes"] == 1 and staged() == []
    assert report["videos"] and all(Path(v).parent == out / "videos" and Path(v).is_file() for v in report["videos"])
