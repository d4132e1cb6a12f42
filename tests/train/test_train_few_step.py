"""A short training run of each few-step policy on real Lift demonstrations: the loss falls,
the checkpoint loads and predicts, and BESO's goal windows reach its loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robopolicy.policy import BUILTIN_POLICIES, Policy
from robopolicy.train.config import TrainConfig
from robopolicy.train.run import train

# each policy's CPU preset, shrunk so that 150 steps take seconds
PRESETS = {
    "beso": ("configs/policies/beso_lowdim.yaml", {"net": {"d_model": 64, "n_layer": 2}}),
    "ebt": ("configs/policies/ebt_lowdim.yaml", {}),
}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lift_store(tmp_path_factory) -> Path:
    pytest.importorskip("robosuite")
    from robopolicy.envs.generate import generate_demos

    out = tmp_path_factory.mktemp("lift") / "lift.zarr"
    generate_demos("Lift", 4, out, progress=False)
    return out


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", [n for n in PRESETS if n in BUILTIN_POLICIES])
def test_a_short_lift_run_lowers_the_loss(name, lift_store, tmp_path):
    preset, inline = PRESETS[name]
    cfg = TrainConfig(
        policy_name=name,
        policy_preset=str(ROOT / preset),
        policy=inline,
        obs_keys=("state",),
        batch_size=32,
        num_steps=150,
        lr=1e-3,
        warmup_steps=10,
        val_ratio=0.0,
        log_every=10,
        checkpoint_every=150,
        eval_every=0,
        num_threads=1,
    )
    train(cfg, str(lift_store), tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses
    policy = Policy.load(tmp_path / "run" / "latest")
    assert policy.name == name
    from robopolicy.data.store import EpisodeStore

    ep = EpisodeStore.open(lift_store, mode="r").episode(0, ["state"])
    obs = {"state": ep["state"][None, :2]}
    a = policy.predict(obs).actions
    assert a.shape == (1, policy.config.horizon, 7) and bool(np.isfinite(a.numpy()).all())
