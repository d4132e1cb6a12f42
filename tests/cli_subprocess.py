"""`robopolicy ...` in a subprocess, as a user runs it from a terminal: its own session (so a
test can send SIGINT to the whole process group, as a terminal's Ctrl-C does), SIGINT at its
default even when the test run itself ignores it (a shell starts background jobs, e.g.
``make test &`` in a script, with SIGINT ignored, and children inherit that), unbuffered output,
and every thread's stack on SIGABRT (faulthandler) for a test that finds it hanging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WITH_TEST_POLICIES = (
    "import sys; sys.path.insert(0, 'tests/train'); import policy_fixture; "
    "from robopolicy.cli import main; sys.exit(main(sys.argv[1:]))"
)
"""``python -c`` prelude: the CLI with the test-only policy "test_mlp" registered."""


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # in the child, before exec: Python then installs its handler


def cli(*argv: str, with_test_policies: bool = False) -> subprocess.Popen:
    entry = ["-c", WITH_TEST_POLICIES] if with_test_policies else ["-m", "robopolicy.cli"]
    env = {
        **os.environ,
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
    }
    return subprocess.Popen(
        [sys.executable, *entry, *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_sigint_default,
    )


def run_cli(*argv: str, timeout: float = 300, with_test_policies: bool = False) -> subprocess.CompletedProcess:
    p = cli(*argv, with_test_policies=with_test_policies)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)
