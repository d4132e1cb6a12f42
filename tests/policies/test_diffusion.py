"""Diffusion Policy: learning a bimodal toy task, samplers, clear errors, config validation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robopolicy.config import from_dict, to_dict
from robopolicy.data.normalizer import NormMode
from robopolicy.diffusion import DenoiserView, InferenceDefaults, NoiseScheduleConfig, sample
from robopolicy.nn.configs import ObsEncoderConfig, TransformerConfig, UnetConfig
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionPolicy, Sampler
from robopolicy.policy import NonFiniteActionError, Policy, get_policy_class
from robopolicy.types import ActionSpec, FieldKind, FieldSpec, ObservationSpec

OBS = ObservationSpec((FieldSpec("state", (2,)),))
ACT = ActionSpec(("x", "y"), (-1.0, -1.0), (1.0, 1.0))
H, TO, C = 8, 2, 0.5
ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_policy(variant: str = "unet", obs=OBS, act=ACT, **kw) -> DiffusionPolicy:
    cfg = DiffusionPolicy.tiny_configs(obs, act)[variant]
    if kw:
        cfg = dataclasses.replace(cfg, **kw)
    policy = DiffusionPolicy(cfg)
    fields = {"state": np.random.default_rng(0).uniform(-1, 1, (64, 2))}
    fields["action"] = np.concatenate([np.full((1, act.dim), -1.0), np.full((1, act.dim), 1.0), np.zeros((4, act.dim))])
    for f in obs.fields:
        if f.kind is FieldKind.LOW_DIM and f.key not in fields:
            fields[f.key] = np.random.default_rng(1).uniform(-1, 1, (64, *f.shape))
    policy.fit_normalizer(fields)
    return policy


def bimodal_batch(gen: torch.Generator, b: int) -> dict:
    """Same obs distribution; the chunk is constant +C or -C with equal probability."""
    sign = torch.randint(0, 2, (b, 1, 1), generator=gen).float() * 2 - 1
    state = torch.rand(b, TO, 2, generator=gen) * 2 - 1
    return {"obs": {"state": state}, "action": (sign * C).expand(b, H, 2).contiguous()}


@pytest.mark.parametrize(
    "backbone, kw, lr, samplers",
    [
        (
            "unet",
            dict(backbone=UnetConfig(down_dims=(16, 32), kernel_size=3, diffusion_step_embed_dim=16)),
            3e-3,
            ("ddpm", "ddim"),
        ),
        # DP-T's causal masks make mode agreement across a chunk slower to learn; the masks
        # themselves are tested in tests/nn. Non-causal keeps this test short.
        (
            "transformer",
            dict(backbone=TransformerConfig(n_layer=2, n_emb=64, n_head=4, p_drop_attn=0.0, causal_attn=False)),
            1e-3,
            ("ddpm",),
        ),
    ],
)
def test_learns_both_modes_not_their_mean(backbone, kw, lr, samplers):
    torch.manual_seed(0)
    policy = make_policy(backbone, **kw)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(500):
        loss, metrics = policy.compute_loss(bimodal_batch(gen, 64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["loss"] < 0.2
    policy.eval()
    obs = bimodal_batch(gen, 4)["obs"]
    for sampler in samplers:
        steps = 100 if sampler == "ddpm" else 10
        chunks = policy.predict_action_chunk(
            obs, num_samples=32, generator=gen, sampler=sampler, num_inference_steps=steps
        )
        assert chunks.shape == (4, 32, H, 2)
        means = chunks.mean(dim=(2, 3)).flatten()
        near_pos = ((means - C).abs() < 0.2).float().mean()
        near_neg = ((means + C).abs() < 0.2).float().mean()
        near_zero = (means.abs() < 0.2).float().mean()
        assert near_pos > 0.25 and near_neg > 0.25, (sampler, near_pos, near_neg)
        assert near_zero < 0.1, (sampler, near_zero)  # a regressor would put everything at 0
        assert chunks.std(dim=2).mean() < 0.1  # each chunk is (nearly) constant, as in the data


@pytest.mark.parametrize("backbone", ["unet", "transformer"])
@torch.no_grad()
def test_policy_ddim_equals_ddim_on_its_view(backbone):
    policy = make_policy(backbone).eval()
    obs = {"state": torch.rand(3, TO, 2) * 2 - 1}
    noise = torch.randn(3, 2, H, 2, generator=torch.Generator().manual_seed(1))
    ref = policy.predict_action_chunk(obs, num_samples=2, noise=noise, sampler="ddim", num_inference_steps=8)
    view = policy.denoiser_view()
    assert isinstance(view, DenoiserView) and view.action_shape == (H, 2)
    cond = torch.repeat_interleave(view.encode(obs), 2, dim=0)
    sigmas = view.sigmas(8)
    x = sample(view, cond, view.noise_to_x(noise.reshape(6, H, 2), sigmas[0]), sigmas, "ddim", x0_clip=1.0)
    torch.testing.assert_close(view.to_action(x).reshape(3, 2, H, 2), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "heun"])
@torch.no_grad()
def test_batch_equals_single_calls_with_the_same_generators(sampler):
    policy = make_policy("unet").eval()
    obs = {"state": torch.rand(3, TO, 2) * 2 - 1}
    seeds = [5, 6, 7]
    batch = policy.predict_action_chunk(
        obs, num_samples=2, generator=[torch.Generator().manual_seed(s) for s in seeds], sampler=sampler
    )
    for i, s in enumerate(seeds):
        single = policy.predict_action_chunk(
            {"state": obs["state"][i : i + 1]},
            num_samples=2,
            generator=torch.Generator().manual_seed(s),
            sampler=sampler,
        )
        torch.testing.assert_close(batch[i : i + 1], single, atol=1e-5, rtol=1e-5)
    again = policy.predict_action_chunk(
        obs, num_samples=2, generator=[torch.Generator().manual_seed(s) for s in seeds], sampler=sampler
    )
    assert again.equal(batch)


@torch.no_grad()
def test_discrete_dims_are_snapped_and_output_is_env_units():
    act = ActionSpec(("x", "grip"), (-2.0, 0.0), (2.0, 1.0), discrete=(False, True))
    policy = make_policy("transformer", act=act).eval()
    out = policy.predict_action_chunk({"state": np.zeros((2, TO, 2))}, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, H, 2)
    assert set(out[..., 1].unique().tolist()) <= {0.0, 1.0}
    assert out[..., 0].abs().max() <= 2.0 + 1e-5


def test_clear_errors_on_bad_input():
    policy = make_policy("unet")
    good = bimodal_batch(torch.Generator().manual_seed(0), 2)
    with pytest.raises(KeyError, match="'state'"):
        policy.compute_loss({"obs": {"other": good["obs"]["state"]}, "action": good["action"]})
    with pytest.raises(KeyError, match="'state'"):
        policy.predict_action_chunk({})
    with pytest.raises(ValueError, match="'state'"):
        policy.compute_loss({"obs": {"state": torch.zeros(2, TO, 3)}, "action": good["action"]})
    with pytest.raises(ValueError, match="action"):
        policy.compute_loss({"obs": good["obs"], "action": torch.zeros(2, H + 1, 2)})
    with pytest.raises(ValueError, match="'state' has 1 frames.*To=2"):
        policy.compute_loss({"obs": {"state": torch.zeros(2, 1, 2)}, "action": good["action"]})
    with pytest.raises(ValueError, match="noise must have shape"):
        policy.predict_action_chunk(good["obs"], noise=torch.zeros(2, H, 3))
    with pytest.raises(ValueError, match="nope"):
        policy.predict_action_chunk(good["obs"], sampler="nope")


def test_more_frames_than_to_are_refused_everywhere_not_trimmed_to_the_oldest():
    """Training, the denoiser view's encode and predict all refuse extra frames (they used to
    keep the first To silently, i.e. the oldest frames of an inference history)."""
    policy = make_policy("unet").eval()
    good = bimodal_batch(torch.Generator().manual_seed(0), 2)
    three = torch.zeros(2, TO + 1, 2)
    with pytest.raises(ValueError, match=f"'state' has {TO + 1} frames.*To={TO}"):
        policy.compute_loss({"obs": {"state": three}, "action": good["action"]})
    with pytest.raises(ValueError, match=f"'state' has {TO + 1} frames.*To={TO}"):
        policy.denoiser_view().encode({"state": three})
    with pytest.raises(ValueError, match=f"'state' has {TO + 1} frames.*To={TO}"):
        policy.predict_action_chunk({"state": three})


def test_a_nan_gripper_is_not_snapped_to_a_valid_looking_limit():
    act = ActionSpec(("x", "grip"), (-2.0, 0.0), (2.0, 1.0), discrete=(False, True))
    nan = float("nan")
    policy = make_policy("unet", act=act).eval()
    snapped = policy.snap_discrete(torch.tensor([[0.3, nan], [nan, 0.7], [0.1, float("-inf")]]))
    assert snapped[0, 0] == 0.3 and torch.isnan(snapped[0, 1]) and torch.isnan(snapped[1, 0])
    assert snapped[1, 1] == 1.0 and torch.isneginf(snapped[2, 1])
    with torch.no_grad():
        policy.model.head[-1].bias[1] = nan  # only the gripper output channel
    obs = {"state": np.zeros((2, TO, 2), np.float32)}
    # one DDIM step: the NaN stays in the gripper dim (it used to come back as 0.0, looking valid)
    with pytest.raises(NonFiniteActionError, match="non-finite actions for batch rows \\[0, 1\\].*head.1.bias"):
        policy.predict_action_chunk(obs, sampler="ddim", num_inference_steps=1, generator=torch.Generator())


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="backbone: horizon must be a multiple of 4.*got 10"):
        DiffusionConfig(OBS, ACT, horizon=10, n_action_steps=4)
    DiffusionConfig(OBS, ACT, horizon=10, n_action_steps=4, backbone=TransformerConfig())  # any horizon
    with pytest.raises(ValueError, match="backbone.kind: 'resnet' is not a registered backbone.*'transformer', 'unet'"):
        from_dict(DiffusionConfig, {"obs_spec": OBS, "action_spec": ACT, "backbone": {"kind": "resnet"}})
    with pytest.raises(TypeError, match="backbone must be a BackboneConfig, got 'transformer'"):
        DiffusionConfig(OBS, ACT, backbone="transformer")
    with pytest.raises(ValueError, match="n_groups=8"):
        DiffusionConfig(OBS, ACT, backbone=UnetConfig(down_dims=(12, 24)))
    with pytest.raises(ValueError, match="inference.num_inference_steps.*got 200"):
        DiffusionConfig(OBS, ACT, inference=InferenceDefaults(num_inference_steps=200))
    with pytest.raises(ValueError, match="n_head=3"):
        DiffusionConfig(OBS, ACT, backbone=TransformerConfig(n_head=3))
    img = ObservationSpec((FieldSpec("image.cam", (84, 84, 3), FieldKind.IMAGE),))
    with pytest.raises(ValueError, match="obs_encoder: crop_shape .*'image.cam'"):
        DiffusionConfig(img, ACT, obs_encoder=ObsEncoderConfig(crop_shape=(90, 90)))
    with pytest.raises(ValueError, match="noise.prediction_type.*'eps'"):
        from_dict(DiffusionConfig, {"obs_spec": OBS, "action_spec": ACT, "noise": {"prediction_type": "eps"}})
    cfg = from_dict(DiffusionConfig, {"obs_spec": OBS, "action_spec": ACT, "inference": {"sampler": "ddim"}})
    assert cfg.inference.sampler is Sampler.DDIM


def _config_dict(**parts) -> dict:
    return {"obs_spec": OBS, "action_spec": ACT, **parts}


@pytest.mark.parametrize(
    "backbone, bad",
    [({"kind": "unet", "down_dims": [16, 32]}, "n_layer"), ({"kind": "transformer", "n_layer": 2}, "down_dims")],
)
def test_a_field_of_the_backbone_not_chosen_is_refused_by_name(backbone, bad):
    kind = backbone["kind"]
    with pytest.raises(ValueError, match=rf"backbone\.{bad} is not a field of the {kind} backbone \(its fields: "):
        from_dict(DiffusionConfig, _config_dict(backbone={**backbone, bad: 4}))


def test_preset_overrides_change_one_field_of_a_part_and_a_kind_switch_replaces_the_part():
    path = ROOT / "configs/policies/diffusion_unet_lowdim_small.yaml"
    cfg = DiffusionConfig.from_preset(path, OBS, ACT, overrides=["backbone.down_dims=[16,32]"])
    assert cfg.backbone == UnetConfig(down_dims=(16, 32), kernel_size=5, n_groups=8, diffusion_step_embed_dim=128)
    assert to_dict(cfg)["backbone"]["kind"] == "unet"
    with pytest.raises(ValueError, match=r"backbone\.n_layer is not a field of the unet backbone"):
        DiffusionConfig.from_preset(path, OBS, ACT, overrides=["backbone.n_layer=2"])
    cfg = DiffusionConfig.from_preset(path, OBS, ACT, overrides=["backbone.kind=transformer", "backbone.n_layer=2"])
    assert cfg.backbone == TransformerConfig(n_layer=2)


def _flat_format_1(config: DiffusionConfig) -> dict:
    """A config as the flat (format 1) code wrote it: every field at top level, both backbones."""
    flat = {"obs_spec": config.obs_spec, "action_spec": config.action_spec}
    flat.update(horizon=config.horizon, n_obs_steps=config.n_obs_steps, n_action_steps=config.n_action_steps)
    flat["backbone"] = config.backbone.kind
    flat.update(to_dict(UnetConfig()) | to_dict(TransformerConfig()))
    flat.update(to_dict(config.backbone), **to_dict(config.obs_encoder), **to_dict(config.noise))
    flat.update(to_dict(config.inference))
    del flat["kind"]
    flat.pop("token_time")  # added after format 1 (training-time action conditioning)
    return flat


@pytest.mark.parametrize("backbone", ["unet", "transformer"])
def test_a_flat_format_1_config_loads_into_the_same_parts(backbone):
    img = ObservationSpec((FieldSpec("state", (2,)), FieldSpec("image.cam", (16, 16, 3), FieldKind.IMAGE)))
    config = DiffusionPolicy.tiny_configs(img, ACT)[backbone]
    flat = _flat_format_1(config)
    assert {"down_dims", "n_emb", "image_width", "num_train_timesteps", "sampler"} <= set(flat)
    assert from_dict(DiffusionConfig, flat) == config
    assert from_dict(DiffusionConfig, to_dict(config) | {"obs_spec": img, "action_spec": ACT}) == config
    with pytest.raises(ValueError, match="down_dims is a flat \\(old\\) key.*backbone.down_dims"):
        from_dict(DiffusionConfig, _config_dict(backbone={"kind": "unet"}, down_dims=[16, 32]))


def test_the_golden_format_1_checkpoint_migrates_to_the_config_that_made_it():
    golden = Path(__file__).resolve().parents[1] / "golden"
    meta = json.loads((golden / "dp_unet_tiny" / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["config"]["backbone"] == "unet" and "down_dims" in meta["config"]
    config = Policy.load(golden / "dp_unet_tiny").config
    obs, act = config.obs_spec, config.action_spec
    assert config == DiffusionPolicy.tiny_configs(obs, act)["unet"]  # as tests/golden/make_golden.py built it
    assert config.backbone == UnetConfig(down_dims=(16, 32), kernel_size=3, n_groups=8, diffusion_step_embed_dim=16)


def test_save_load_round_trip_and_registry(tmp_path):
    assert get_policy_class("diffusion") is DiffusionPolicy
    img = ObservationSpec((FieldSpec("state", (2,)), FieldSpec("image.cam", (16, 16, 3), FieldKind.IMAGE)))
    policy = make_policy("unet", obs=img).eval()
    obs = {"state": np.zeros((1, TO, 2)), "image.cam": np.full((1, TO, 16, 16, 3), 128, np.uint8)}
    noise = torch.randn(1, H, 2)
    before = policy.predict_action_chunk(obs, noise=noise)
    loaded = Policy.load(policy.save(tmp_path / "ckpt"))
    assert isinstance(loaded, DiffusionPolicy) and loaded.config == policy.config
    torch.testing.assert_close(loaded.predict_action_chunk(obs, noise=noise), before)
    assert to_dict(loaded.config)["backbone"]["kind"] == "unet"
    groups = loaded.optim_groups(1e-3)
    assert sum(len(g["params"]) for g in groups) == len(list(loaded.parameters()))


PRESETS = sorted((ROOT / "configs" / "policies").glob("diffusion_*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_presets_load_with_dataset_specs(path):
    cams = (
        FieldSpec("image.agentview", (84, 84, 3), FieldKind.IMAGE),
        FieldSpec("image.wrist", (84, 84, 3), FieldKind.IMAGE),
    )
    obs = ObservationSpec((FieldSpec("state", (9,)), *(cams if "image" in path.stem else ())))
    cfg = DiffusionConfig.from_preset(path, obs, ACT, overrides=["inference.num_inference_steps=16"])
    assert cfg.inference.num_inference_steps == 16 and cfg.action_spec == ACT
    assert cfg.backbone.kind in path.stem
    if "image" in path.stem:
        assert cfg.obs_encoder.crop_shape == (76, 76)
    with pytest.raises(ValueError, match="unknown key"):
        DiffusionConfig.from_preset(path, obs, ACT, overrides=["down_dim=[1]"])
    with pytest.raises(ValueError, match=r"backbone\.down_dim is not a field of the"):
        DiffusionConfig.from_preset(path, obs, ACT, overrides=["backbone.down_dim=[1]"])
    if "small" in path.stem:  # cheap enough to build here
        policy = DiffusionPolicy(cfg)
        assert sum(p.numel() for p in policy.parameters()) < 20e6


def test_per_key_normalization_and_scaled_grippers_are_fitted_saved_and_loaded(tmp_path):
    act = ActionSpec(("x", "grip"), (-2.0, -1.0), (2.0, 1.0), discrete=(False, True))
    base = DiffusionPolicy.tiny_configs(OBS, act)["unet"]
    cfg = from_dict(
        DiffusionConfig,
        to_dict(base)
        | {"obs_spec": OBS, "action_spec": act}
        | {"normalization": {"state": "gaussian"}, "discrete_action_scale": 0.1},
    )
    assert cfg.normalization == {"state": NormMode.GAUSSIAN} and cfg.discrete_action_scale == 0.1
    policy = DiffusionPolicy(cfg).eval()
    rng = np.random.default_rng(0)
    state = rng.normal([3.0, -5.0], [2.0, 0.5], (500, 2))
    action = np.stack([rng.uniform(-2, 2, 500), rng.choice([-1.0, 1.0], 500)], axis=1)
    norm = policy.fit_normalizer({"state": state, "action": action})
    assert norm.modes == {"state": NormMode.GAUSSIAN, "action": NormMode.LIMITS}
    z = norm.normalize("state", state)
    assert np.allclose(z.mean(0), 0, atol=1e-4) and np.allclose(z.std(0), 1, atol=1e-4)
    grip = torch.tensor([[0.5, -1.0], [0.5, 1.0]])
    y = norm.normalize("action", grip)
    assert y[:, 1].tolist() == [-torch.tensor(0.1).item(), torch.tensor(0.1).item()]
    assert torch.equal(norm.unnormalize("action", y)[:, 1], grip[:, 1])  # exactly +-1

    saved = json.loads((policy.save(tmp_path / "ckpt") / "config.json").read_text())["config"]
    assert saved["normalization"] == {"state": "gaussian"} and saved["discrete_action_scale"] == 0.1
    loaded = Policy.load(tmp_path / "ckpt")
    assert loaded.config == cfg and loaded.normalizer.modes == norm.modes
    torch.testing.assert_close(loaded.normalizer.state_dict(), norm.state_dict(), rtol=0, atol=0)
    obs = {"state": state[None, :TO].astype(np.float32)}
    noise = torch.randn(1, H, 2, generator=torch.Generator().manual_seed(0))
    chunk = loaded.predict_action_chunk(obs, noise=noise)
    torch.testing.assert_close(chunk, policy.predict_action_chunk(obs, noise=noise), rtol=0, atol=0)
    assert set(chunk[..., 1].unique().tolist()) <= {-1.0, 1.0}


def test_normalization_choices_are_checked_by_key():
    with pytest.raises(ValueError, match=r"normalization\.eef_pos: not a key of this policy"):
        from_dict(DiffusionConfig, _config_dict(normalization={"eef_pos": "gaussian"}))
    with pytest.raises(ValueError, match=r"normalization\.state: 'zscore' is not one of"):
        from_dict(DiffusionConfig, _config_dict(normalization={"state": "zscore"}))
    with pytest.raises(ValueError, match="discrete_action_scale must be finite and > 0, got 0"):
        DiffusionConfig(OBS, ACT, discrete_action_scale=0)
    with pytest.raises(ValueError, match=r"normalization\.action: 'gaussian'.*noise\.clip_sample"):
        DiffusionConfig(OBS, ACT, normalization={"action": "gaussian"})
    cfg = DiffusionConfig(OBS, ACT, normalization={"action": "gaussian"}, noise=NoiseScheduleConfig(clip_sample=False))
    assert cfg.normalization == {"action": NormMode.GAUSSIAN}
