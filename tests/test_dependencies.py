"""Dependency direction: training and evaluation do not import each other.

Checked twice: statically (every ``import`` statement of a package's modules, including the
lazy ones inside functions) and in a fresh interpreter (importing one side must not load any
module of the other). The CLI layer (``*/cli.py``, ``quickstart``) may wire them together.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def loaded_after(module: str) -> set[str]:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("robopolicy.train", "robopolicy.eval"),
        ("robopolicy.train.trainer", "robopolicy.eval"),
        ("robopolicy.train.run", "robopolicy.eval"),
        ("robopolicy.eval", "robopolicy.train"),
        ("robopolicy.eval.runner", "robopolicy.train"),
        ("robopolicy.eval.suite", "robopolicy.train"),
    ],
)
def test_train_and_eval_do_not_import_each_other(module, forbidden):
    bad = sorted(m for m in loaded_after(module) if m == forbidden or m.startswith(forbidden + "."))
    assert not bad, f"importing {module} loads {bad}"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package, forbidden", [("train", "robopolicy.eval"), ("eval", "robopolicy.train")])
def test_no_import_statement_crosses_between_train_and_eval(package, forbidden):
    for path in sorted((REPO / "robopolicy" / package).glob("*.py")):
        if path.name == "cli.py":
            continue  # the CLI layer wires training and evaluation together
        bad = sorted(m for m in imported_modules(path) if m == forbidden or m.startswith(forbidden + "."))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_trainer_with_eval_every_needs_a_callback(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "train"))
    from policy_fixture import make_store, tiny_config

    from robopolicy.train.data import open_store
    from robopolicy.train.run import build_policy
    from robopolicy.train.trainer import Trainer

    cfg = tiny_config(num_steps=2, eval_every=1, eval_suite="sim/lift_lowdim.yaml")
    policy, train_set, _ = build_policy(cfg, open_store(str(make_store(tmp_path / "s.zarr", n_episodes=2))))
    with pytest.raises(ValueError, match="evaluation callback"):
        Trainer(cfg, policy, train_set, tmp_path / "run", progress=False)


CORE_WITHOUT_SIM = r"""
import sys
for name in ("robosuite", "mujoco", "mink"):
    sys.modules[name] = None  # as if the `sim` extra were not installed
import numpy as np, torch
from robopolicy.cli import main
from robopolicy.policy import Policy

policy = Policy.load(sys.argv[1])
obs = {"state": np.zeros((1, 2, 5), dtype=np.float32)}
chunk = policy.predict_action_chunk(obs, generator=torch.Generator().manual_seed(0))
assert chunk.shape == (1, 8, 3) and bool(torch.isfinite(chunk).all())
rc = main(["eval", "--checkpoint", sys.argv[1], "--suite", "sim/lift_lowdim.yaml", "--out", sys.argv[2]])
print("eval rc", rc)
"""


def test_the_core_loads_and_runs_a_policy_without_the_simulator(tmp_path):
    """robosuite / mujoco are the optional `sim` extra: a checkpoint loads and predicts without
    them, and a command that needs the simulator says how to install it (exit 2)."""
    from robopolicy.policies.diffusion import DiffusionPolicy
    from robopolicy.types import ActionSpec, FieldSpec, ObservationSpec

    obs_spec = ObservationSpec((FieldSpec("state", (5,)),))
    action_spec = ActionSpec(names=("x", "y", "g"), low=(-1.0,) * 3, high=(1.0,) * 3, discrete=(False, False, True))
    cfg = DiffusionPolicy.tiny_configs(obs_spec, action_spec)["unet"]
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(0)
    policy.fit_normalizer({"state": rng.normal(size=(50, 5)), "action": rng.uniform(-1, 1, size=(50, 3))})
    policy.save(tmp_path / "ckpt")
    r = subprocess.run(
        [sys.executable, "-c", CORE_WITHOUT_SIM, str(tmp_path / "ckpt"), str(tmp_path / "report")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "eval rc 2" in r.stdout and "pip install 'robopolicy[sim]'" in r.stderr
    assert not (tmp_path / "report").exists()
