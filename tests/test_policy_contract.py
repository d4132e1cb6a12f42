"""Contract tests every registered policy runs through (lerobot test_policies / diffusers
PipelineTesterMixin style): save/load round trip, batch == N single calls, seeded determinism,
clear shape/key errors, loss is a finite differentiable scalar; inputs checked at the contract
(non-finite / huge values, frame count, batch dim, empty batch) and no non-finite action ever
returned; corrupt checkpoint files named."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import tests.fixture_policy  # noqa: F401  (registers the test-only policy)
from robopolicy.inference.output import PolicyOutput
from robopolicy.policy import NonFiniteActionError, Policy, registered_policies
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
    policy.reset()  # a stateful policy (per-environment state) is deterministic from the same state
    a2 = policy.predict_action_chunk(obs, generator=_gen(7))
    assert a1.shape == (3, cfg.horizon, ACTION_SPEC.dim)
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    policy.reset()
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
        policy.reset()  # each single call starts its environment fresh, as the batched call did
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


# ---------------------------------------------------------------- inputs and outputs checked at the contract


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e30, -1e30])
@pytest.mark.parametrize("cls,cfg", CASES)
def test_nonfinite_and_huge_inputs_are_refused_naming_key_row_and_frame(cls, cfg, value):
    policy = _build(cls, cfg)
    obs = _obs(cfg, batch=3)
    obs["eef_pos"][2, 1, 0] = value
    with pytest.raises(ValueError, match=r"'eef_pos'.*batch row 2, frame 1, dim 0"):
        policy.predict_action_chunk(obs, generator=_gen(0))


@pytest.mark.parametrize("cls,cfg", CASES)
def test_values_overflowing_float32_are_refused(cls, cfg):
    policy = _build(cls, cfg)
    obs = {k: v.astype(np.float64) for k, v in _obs(cfg, batch=2).items()}
    obs["state"][0, 0, 4] = 1e39  # finite in float64, inf in the model's float32
    with pytest.raises(ValueError, match=r"'state'.*batch row 0, frame 0, dim 4"):
        policy.predict_action_chunk(obs)
    obs["state"][0, 0, 4] = 50.0  # out of the training range, but a plausible reading: accepted
    assert torch.isfinite(policy.predict_action_chunk(obs)).all()


@pytest.mark.parametrize("cls,cfg", CASES)
def test_more_or_fewer_frames_than_to_are_refused(cls, cfg):
    policy = _build(cls, cfg)
    to = cfg.n_obs_steps
    obs = _obs(cfg, batch=2)
    more = {k: np.concatenate([v, v], axis=1) for k, v in obs.items()}
    with pytest.raises(ValueError, match=rf"'state' has {2 * to} frames.*To={to}"):
        policy.predict_action_chunk(more)
    fewer = {k: v[:, :1] for k, v in obs.items()}
    if to > 1:
        with pytest.raises(ValueError, match=rf"'state' has 1 frames.*To={to}"):
            policy.predict_action_chunk(fewer)


@pytest.mark.parametrize("cls,cfg", CASES)
def test_missing_batch_dim_names_the_shape_as_passed(cls, cfg):
    policy = _build(cls, cfg)
    obs = {k: v[0] for k, v in _obs(cfg, batch=1).items()}  # (To, D): no batch dim
    to = cfg.n_obs_steps
    with pytest.raises(ValueError, match=rf"'state'.*\(B, {to}, 5\), got \({to}, 5\).*batch dimension missing"):
        policy.predict_action_chunk(obs)


@pytest.mark.parametrize("cls,cfg", CASES)
def test_empty_batch_and_mismatched_batch_sizes_are_clear_errors(cls, cfg):
    policy = _build(cls, cfg)
    obs = _obs(cfg, batch=2)
    with pytest.raises(ValueError, match="empty batch"):
        policy.predict_action_chunk({k: v[:0] for k, v in obs.items()})
    with pytest.raises(ValueError, match="disagree on the batch size"):
        policy.predict_action_chunk(dict(obs, eef_pos=obs["eef_pos"][:1]))
    with pytest.raises(ValueError, match="num_samples"):
        policy.predict_action_chunk(obs, num_samples=0)


@pytest.mark.parametrize("cls,cfg", CASES)
def test_nonfinite_weights_never_give_nonfinite_actions(cls, cfg):
    policy = _build(cls, cfg)
    with torch.no_grad():
        for p in policy.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteActionError, match=f"policy '{cls.name}' produced non-finite actions.*parameters"):
        policy.predict_action_chunk(_obs(cfg), generator=_gen(0))


def test_base_snap_discrete_keeps_nonfinite_values():
    cls, cfg = next(c.values for c in CASES if c.values[0].name == "test_mlp")
    policy = _build(cls, cfg)
    out = policy.snap_discrete(torch.tensor([[0.3, 0.5, float("nan")], [0.3, 0.5, 0.2], [0.1, 0.1, float("inf")]]))
    assert torch.isnan(out[0, 2]) and out[1, 2] == 1 and torch.isinf(out[2, 2])


class _RogueMLP(tests.fixture_policy.MLPPolicy):
    """Its _predict returns garbage with no checks of its own; the contract still checks it."""

    mode = "nan"

    def _predict(self, obs, *, env_ids, generator, num_samples, options):
        c = self.config
        b = len(obs["state"])
        if self.mode == "shape":
            return torch.zeros(b, c.horizon + 1, c.action_spec.dim)
        return torch.full((b, c.horizon, c.action_spec.dim), float("nan"))


def test_a_subclass_cannot_skip_the_checks():
    cfg = tests.fixture_policy.MLPPolicy.tiny_configs(OBS_SPEC, ACTION_SPEC)["default"]
    policy = _RogueMLP(cfg)
    policy.fit_normalizer(_fields())
    obs = _obs(cfg)
    with pytest.raises(NonFiniteActionError, match="rows \\[0, 1, 2\\].*all parameters are finite"):
        policy.predict_action_chunk(obs)
    policy.mode = "shape"
    with pytest.raises(RuntimeError, match=r"shape \(3, 9, 3\), expected \(3, 8, 3\)"):
        policy.predict(obs)
    obs["state"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="'state'"):
        policy.predict_action_chunk(obs)
    for method in ("predict", "predict_action_chunk"):  # overriding the checked entry points is refused
        with pytest.raises(TypeError, match=f"overrides {method}"):
            type("Sneaky", (tests.fixture_policy.MLPPolicy,), {method: lambda self, obs, **kw: None})


@pytest.mark.parametrize("cls,cfg", CASES)
def test_config_parts_are_typed_and_checked_against_the_spec(cls, cfg):
    """Every declared part must be its config type (a raw dict is refused naming the part); an
    image encoder's crop larger than a camera is refused naming ``obs_encoder``."""
    for name, part in type(cfg).parts.items():
        with pytest.raises(TypeError, match=f"{name} must be a {part.__name__}"):
            dataclasses.replace(cfg, **{name: {}})
    if "obs_encoder" in type(cfg).parts:
        images = ObservationSpec((FieldSpec("state", (5,)), FieldSpec("cam_image", (8, 8, 3), kind="image")))
        enc = dataclasses.replace(cfg.obs_encoder, crop_shape=(12, 12))
        with pytest.raises(ValueError, match="^obs_encoder: "):
            dataclasses.replace(cfg, obs_spec=images, obs_encoder=enc)


@pytest.mark.parametrize("cls,cfg", CASES)
def test_inference_options_are_typed(cls, cfg):
    """Options are the policy's own typed dataclass: known fields pass, an unknown one is refused
    naming the valid ones (the eval runner checks --sampler etc. this way, before any rollout)."""
    policy = _build(cls, cfg)
    fields = [f.name for f in dataclasses.fields(policy.options_class)]
    assert isinstance(policy.resolve_options(None), policy.options_class)
    with pytest.raises(ValueError, match="no inference option \\['no_such_option'\\]"):
        policy.predict(_obs(cfg), options={"no_such_option": 1})
    for name in fields:
        assert policy.resolve_options({name: None}) == policy.options_class()


@pytest.mark.parametrize("cls,cfg", CASES)
def test_predict_returns_a_policy_output_with_checked_env_ids(cls, cfg):
    policy = _build(cls, cfg)
    obs = _obs(cfg)
    out = policy.predict(obs, env_ids=[7, 3, 5], generator=[_gen(i) for i in range(3)])
    assert isinstance(out, PolicyOutput) and out.actions.shape == (3, cfg.horizon, cfg.action_spec.dim)
    torch.testing.assert_close(out.actions, policy.predict_action_chunk(obs, generator=[_gen(i) for i in range(3)]))
    with pytest.raises(ValueError, match="distinct environments"):
        policy.predict(obs, env_ids=[1, 1, 2])
    with pytest.raises(ValueError, match="distinct environments"):
        policy.predict(obs, env_ids=[1, 2])


@pytest.mark.parametrize("name", ["model.safetensors", "normalizer.safetensors"])
@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_checkpoint_files_are_named(tmp_path, name, keep):
    cls, cfg = CASES[0].values
    ckpt = _build(cls, cfg).save(tmp_path / "ckpt")
    data = (ckpt / name).read_bytes()
    (ckpt / name).write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=re.escape(f"{ckpt / name} is truncated or not a safetensors file")):
        Policy.load(ckpt)
    (ckpt / name).write_text('{"not": "safetensors"}')
    with pytest.raises(ValueError, match=re.escape(f"{ckpt / name} is truncated or not a safetensors file")):
        Policy.load(ckpt)
