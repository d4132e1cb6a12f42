"""The registry without the import cycle, and a golden checkpoint.

* A checkpoint records its policy's module; loading imports that module and no other policy.
* Policies from outside the package register through the ``robopolicy.policies`` entry points.
* ``tests/golden/dp_unet_tiny`` (made by ``tests/golden/make_golden.py``) must still load and
  give the stored chunks for the stored noise: any change of format or numerics shows here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import robopolicy.policy as policy_module
from robopolicy.policy import Policy, get_policy_class

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"


def test_the_golden_checkpoint_gives_the_stored_chunks():
    expected = json.loads((GOLDEN / "expected.json").read_text())
    policy = Policy.load(GOLDEN / "dp_unet_tiny")
    obs = {"state": np.asarray(expected["obs"], dtype=np.float32)}
    noise = torch.tensor(expected["noise"])
    for sampler in ("ddim", "ddpm"):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        got = policy.predict(obs, generator=gens, options={"noise": noise, "sampler": sampler}).actions
        torch.testing.assert_close(got, torch.tensor(expected["chunks"][sampler]), atol=1e-5, rtol=1e-5)


LOAD_IN_FRESH_PROCESS = r"""
import json, sys
from robopolicy.policy import Policy
p = Policy.load(sys.argv[1])
mods = sorted(m for m in sys.modules if m.startswith(("robopolicy.policies.", "tests.")))
print(json.dumps({"policy": p.name, "modules": mods}))
"""


def load_fresh(path: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(path)], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_loading_a_diffusion_checkpoint_imports_no_other_policy():
    out = load_fresh(GOLDEN / "dp_unet_tiny")
    assert out["policy"] == "diffusion"
    assert all(m.startswith("robopolicy.policies.diffusion") for m in out["modules"]), out["modules"]


def test_a_checkpoint_of_a_policy_defined_elsewhere_loads_by_its_recorded_module(tmp_path):
    from tests.fixture_policy import MLPPolicy
    from tests.test_policy_contract import ACTION_SPEC, OBS_SPEC, _fields

    policy = MLPPolicy(MLPPolicy.tiny_configs(OBS_SPEC, ACTION_SPEC)["default"])
    policy.fit_normalizer(_fields())
    policy.save(tmp_path / "mlp")
    assert json.loads((tmp_path / "mlp" / "config.json").read_text())["module"] == "tests.fixture_policy"
    out = load_fresh(tmp_path / "mlp")  # the fresh process never imported tests.fixture_policy itself
    assert out["policy"] == "test_mlp" and "tests.fixture_policy" in out["modules"]


class _EntryPoint:
    def __init__(self, module: str) -> None:
        self.module = module

    def load(self):
        import importlib

        return importlib.import_module(self.module)


def test_policies_from_outside_register_through_entry_points(monkeypatch):
    monkeypatch.setattr(policy_module, "_entry_points", lambda: {"test_ext": _EntryPoint("tests.ext_policy")})
    sys.modules.pop("tests.ext_policy", None)
    policy_module._REGISTRY.pop("test_ext", None)
    cls = get_policy_class("test_ext")
    assert cls.__name__ == "ExtPolicy" and "test_ext" in policy_module.registered_policies()
    with pytest.raises(KeyError, match="unknown policy 'nope'.*test_ext"):
        get_policy_class("nope")
