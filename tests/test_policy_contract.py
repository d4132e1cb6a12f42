"""Contract tests every registered policy runs through (lerobot test_policies / diffusers
PipelineTesterMixin style): save/load round trip, batch == N single calls, seeded determinism,
clear shape/key errors, loss is a finite differentiable scalar."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import tests.fixture_policy  # noqa: F401  (registers the test-only policy)
from robopolicy.policy import Policy, registered_policies
from robopolicy.types import ActionSpec, FieldSpec, ObservationSpec

OBS_SPEC = ObservationSpec((FieldSpec("state", (5,)), FieldSpec("eef_pos", (3,))))
ACTION_SPEC = ActionSpec(
    names=("x", "y", "gripper"), low=(-1, -2, -1), high=(1, 2, 1), units=("m", "m", ""), discrete=(False, False, True)
)


def _cases():
    cases = []
    for name, cls in sorted(registered_policies().items()):
        if not (cls.__module__.startswith("robopolicy.") or name == "test_mlp"):
            continue
        for variant, cfg in cls.tiny_configs(OBS_SPEC, ACTION_SPEC).items():
            cases.append(pytest.param(cls, cfg, id=f"{name}-{variant}"))
    return cases


CASES = _cases()


def _fields(n=200, seed=0):
    rng = np.random.default_rng(seed)
    act = rng.uniform(-1, 1, (n, 3)).astype(np.float32) * np.array([1, 2, 1], np.float32)
    act[:, 2] = np.sign(act[:, 2])
    return {
        "state": rng.normal(size=(n, 5)).astype(np.float32),
        "eef_pos": rng.normal(size=(n, 3)).astype(np.float32),
        "action": act,
    }


def _build(cls, cfg) -> Policy:
    torch.manual_seed(0)
    policy = cls(cfg)
    policy.fit_normalizer(_fields())
    return policy.eval()


def _obs(cfg, batch=3, seed=1):
    rng = np.random.default_rng(seed)
    return {f.key: rng.normal(size=(batch, cfg.n_obs_steps, *f.shape)).astype(np.float32) for f in cfg.obs_spec.fields}


def _batch(cfg, batch=4):
    f = _fields(batch * cfg.horizon, seed=2)
    return {"obs": _obs(cfg, batch), "action": torch.as_tensor(f["action"]).view(batch, cfg.horizon, -1)}


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cls,cfg", CASES)
def test_output_shape_units_and_determinism(cls, cfg):
    policy = _build(cls, cfg)
    obs = _obs(cfg)
    a1 = policy.predict_action_chunk(obs, generator=_gen(7))
    a2 = policy.predict_action_chunk(obs, generator=_gen(7))
    assert a1.shape == (3, cfg.horizon, ACTION_SPEC.dim)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    many = policy.predict_action_chunk(obs, num_samples=4, generator=_gen(7))
    assert many.shape == (3, 4, cfg.horizon, ACTION_SPEC.dim)
    assert torch.isfinite(many).all()
    # the discrete gripper dim comes out at its limits
    grip = many[..., 2]
    assert torch.all((grip == -1) | (grip == 1))


@pytest.mark.parametrize("cls,cfg", CASES)
def test_batch_equals_single_calls(cls, cfg):
    policy = _build(cls, cfg)
    obs = _obs(cfg, batch=3)
    batched = policy.predict_action_chunk(obs, generator=[_gen(10 + i) for i in range(3)])
    for i in range(3):
        single = policy.predict_action_chunk({k: v[i : i + 1] for k, v in obs.items()}, generator=[_gen(10 + i)])
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls,cfg", CASES)
def test_save_load_round_trip(cls, cfg, tmp_path):
    policy = _build(cls, cfg)
    obs = _obs(cfg)
    before = policy.predict_action_chunk(obs, generator=_gen(3))
    policy.save(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["policy"] == cls.name
    loaded = Policy.load(tmp_path / "ckpt")
    assert type(loaded) is cls and loaded.config == cfg
    after = loaded.predict_action_chunk(obs, generator=_gen(3))
    torch.testing.assert_close(before, after, rtol=0, atol=0)


@pytest.mark.parametrize("cls,cfg", CASES)
def test_loss_is_finite_and_differentiable(cls, cfg):
    policy = _build(cls, cfg).train()
    loss, metrics = policy.compute_loss(_batch(cfg))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert "loss" in metrics
    loss.backward()
    grads = [p.grad for p in policy.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("cls,cfg", CASES)
def test_missing_or_misshaped_keys_are_named(cls, cfg):
    policy = _build(cls, cfg)
    obs = _obs(cfg)
    with pytest.raises(KeyError, match="eef_pos"):
        policy.predict_action_chunk({k: v for k, v in obs.items() if k != "eef_pos"})
    bad = dict(obs, state=obs["state"][..., :4])
    with pytest.raises(ValueError, match="state"):
        policy.predict_action_chunk(bad)
    batch = _batch(cfg)
    batch["action"] = batch["action"][:, :, :2]
    with pytest.raises(ValueError, match="action"):
        policy.compute_loss(batch)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Policy.load(tmp_path)
    cls, cfg = CASES[0].values
    policy = _build(cls, cfg)
    policy.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "config.json").read_text())
    meta["policy"] = "no_such_policy"
    (tmp_path / "p" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(KeyError, match="no_such_policy"):
        Policy.load(tmp_path / "p")


@pytest.mark.parametrize("cls,cfg", [c for c in CASES if c.values[0].__module__.startswith("robopolicy.")][:1])
def test_loaded_in_fresh_process_predicts_same_chunk(cls, cfg, tmp_path):
    """A checkpoint loads with no training code, no dataset and no test fixtures present."""
    policy = _build(cls, cfg)
    obs = _obs(cfg, batch=1)
    before = policy.predict_action_chunk(obs, generator=_gen(5)).numpy()
    policy.save(tmp_path / "ckpt")
    np.savez(tmp_path / "obs.npz", **obs)
    code = (
        "import sys, numpy as np, torch\n"
        "from robopolicy.policy import Policy\n"
        f"p = Policy.load({str(tmp_path / 'ckpt')!r})\n"
        f"obs = dict(np.load({str(tmp_path / 'obs.npz')!r}))\n"
        "a = p.predict_action_chunk(obs, generator=torch.Generator().manual_seed(5))\n"
        f"np.save({str(tmp_path / 'out.npy')!r}, a.numpy())\n"
        "assert 'robopolicy.train' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    np.testing.assert_array_equal(before, np.load(tmp_path / "out.npy"))
