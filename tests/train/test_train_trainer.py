"""Trainer behaviour on the fixture policy: learning, exact resume, checkpoints, config errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from policy_fixture import make_store, tiny_config, train_losses

from robopolicy.policy import Policy
from robopolicy.train import checkpoint as ckpt
from robopolicy.train.config import load_train_config
from robopolicy.train.data import open_store
from robopolicy.train.run import build_policy, train
from robopolicy.train.trainer import Trainer

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "toy.zarr")


def _trainer(config, store_path: Path, run_dir: Path) -> Trainer:
    policy, train_set, val_set = build_policy(config, open_store(str(store_path)))
    return Trainer(config, policy, train_set, run_dir, val_set=val_set, progress=False)


def test_loss_falls_and_run_dir_is_complete(store_path, tmp_path):
    run = tmp_path / "run"
    summary = train(tiny_config(num_steps=60), str(store_path), run, progress=False)
    losses = train_losses(run)
    first, last = losses[5], losses[60]
    assert last < 0.5 * first, losses
    assert summary["steps"] == 60 and summary["final_loss"] == pytest.approx(last)
    assert summary["samples_per_s"] > 0 and summary["final_val_loss"] is not None
    for name in ("train_config.yaml", "run.json", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_20", "step_40", "step_60"]
    assert (run / "latest").resolve() == (run / "checkpoints/step_60/policy").resolve()
    for f in ("model.safetensors", "state.pt", "COMPLETE"):
        assert (run / "checkpoints/step_60/train_state" / f).is_file()
    saved = yaml.safe_load((run / "train_config.yaml").read_text())
    assert saved["policy"]["hidden"] == 32 and saved["obs_keys"] == ["state"]
    assert load_train_config(run / "train_config.yaml") == tiny_config(num_steps=60)


def test_resume_is_exact(store_path, tmp_path):
    cfg = tiny_config(num_steps=6, checkpoint_every=2, log_every=1, warmup_steps=2)
    full = tmp_path / "full"
    _trainer(cfg, store_path, full).fit()
    part = tmp_path / "part"
    _trainer(cfg, store_path, part).fit(stop_at=2)
    assert ckpt.latest_complete(part).name == "step_2"
    torch.manual_seed(999)  # a fresh process would not share the global RNG state
    np.random.seed(999)
    _trainer(cfg, store_path, part).fit(resume=True, stop_at=3)
    a, b = train_losses(full), train_losses(part)
    assert [a[s] for s in (1, 2)] == [b[s] for s in (1, 2)]
    assert b[3] == a[3]  # bit-exact, not approx
    trainer = _trainer(cfg, store_path, part)
    trainer.fit(resume=True)
    assert train_losses(part)[6] == a[6]
    full_w = Policy.load(full / "latest").state_dict()
    part_w = Policy.load(part / "latest").state_dict()
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)


def test_resume_without_checkpoint_is_a_clear_error(store_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        _trainer(tiny_config(), store_path, tmp_path / "empty").fit(resume=True)


def test_checkpoint_loads_in_fresh_process(store_path, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(num_steps=10, checkpoint_every=10), str(store_path), run, progress=False)
    policy = Policy.load(run / "latest")
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(size=(3, 2, 19)).astype(np.float32)}
    np.save(tmp_path / "obs.npy", obs["state"])
    expected = policy.predict_action_chunk(obs).numpy()
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import policy_fixture\n"
        "from robopolicy.policy import Policy\n"
        "p = Policy.load(sys.argv[2]); obs = {'state': np.load(sys.argv[3])}\n"
        "np.save(sys.argv[4], p.predict_action_chunk(obs).numpy())\n"
    )
    out = tmp_path / "pred.npy"
    subprocess.run(
        [sys.executable, "-c", code, str(HERE), str(run / "latest"), str(tmp_path / "obs.npy"), str(out)],
        check=True,
    )
    got = np.load(out)
    assert got.shape == (3, 8, 7)
    np.testing.assert_array_equal(got, expected)


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy_name: test_mlp\nbatch_sise: 3\n")
    with pytest.raises(ValueError, match="batch_sise"):
        load_train_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("policy_name: test_mlp\nobs_keys: [state]\n")
    cfg = load_train_config(good, ["batch_size=8", "ema.power=0.5", "policy.hidden=16"])
    assert (cfg.batch_size, cfg.ema.power, cfg.policy) == (8, 0.5, {"hidden": 16})
    with pytest.raises(ValueError, match="mixed_precision"):
        load_train_config(good, ["mixed_precision=fp8"])
    with pytest.raises(ValueError, match="eval_suite"):
        load_train_config(good, ["eval_every=10"])


def test_missing_obs_key_names_it(store_path, tmp_path):
    with pytest.raises(KeyError, match="eef_pos"):
        train(tiny_config(obs_keys=("eef_pos",)), str(store_path), tmp_path / "r", progress=False)


def test_store_without_action_spec_warns(tmp_path):
    path = make_store(tmp_path / "nospec.zarr", n_episodes=3, spec=False)
    with pytest.warns(UserWarning, match="no action spec"):
        summary = train(tiny_config(num_steps=2, val_ratio=0.0), str(path), tmp_path / "r", progress=False)
    assert summary["steps"] == 2


def test_periodic_eval_tracks_best(store_path, tmp_path):
    rates = iter([0.2, 0.6, 0.4])
    calls = []

    def fake_eval(policy, step, out):
        calls.append((step, policy.training))
        return {"success_rate": next(rates), "ci95": [0.0, 1.0], "episodes": 5}

    cfg = tiny_config(num_steps=6, eval_every=2, eval_suite="sim/lift_lowdim.yaml", checkpoint_every=100)
    policy, train_set, val_set = build_policy(cfg, open_store(str(store_path)))
    run = tmp_path / "run"
    summary = Trainer(cfg, policy, train_set, run, val_set=val_set, progress=False, eval_fn=fake_eval).fit()
    assert [c[0] for c in calls] == [2, 4, 6]
    assert summary["best"]["step"] == 4 and [e["success_rate"] for e in summary["eval"]] == [0.2, 0.6, 0.4]
    assert (run / "best").resolve() == (run / "checkpoints/step_4/policy").resolve()
    assert (run / "latest").resolve() == (run / "checkpoints/step_6/policy").resolve()
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert [e["success_rate"] for e in evals] == [0.2, 0.6, 0.4]


def test_time_limit_ends_the_session_with_a_resumable_checkpoint(store_path, tmp_path, monkeypatch):
    import robopolicy.train.trainer as trainer_mod

    clock = {"t": 0.0}

    def fake_clock() -> float:  # every call advances 10 s: the limit (0.5 min) passes after a few steps
        clock["t"] += 10.0
        return clock["t"]

    cfg = tiny_config(num_steps=50, checkpoint_every=20, log_every=1, time_limit_minutes=0.5)
    run = tmp_path / "run"
    monkeypatch.setattr(trainer_mod.time, "perf_counter", fake_clock)
    summary = _trainer(cfg, store_path, run).fit()
    monkeypatch.undo()
    assert summary["time_limit_reached"] and not summary["interrupted"]
    assert 0 < summary["steps"] < 50
    assert ckpt.latest_complete(run).name == f"step_{summary['steps']}"
    done = _trainer(tiny_config(num_steps=50, checkpoint_every=20, log_every=1), store_path, run).fit(resume=True)
    assert not done["time_limit_reached"]
    assert ckpt.latest_complete(run).name == "step_50" and 50 in train_losses(run)
