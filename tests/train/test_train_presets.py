"""Every shipped train preset loads and builds a valid policy config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robopolicy.policy import get_policy_class
from robopolicy.train.config import load_train_config
from robopolicy.train.data import build_policy_config
from robopolicy.types import FieldSpec, ObservationSpec, kind_of_key, osc_pose_action_spec

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "configs" / "train").glob("*.yaml"))
SHAPES = {"state": (19,), "eef_pos": (3,), "eef_quat": (4,), "gripper_qpos": (2,)}


def test_expected_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"lift_lowdim_small", "can_lowdim", "lift_image_small"} <= names
    assert any(n.endswith("_gpu") for n in names) and any("transformer" in n for n in names)


def leaves(d, prefix=""):
    """``{"a.b": value}`` for every leaf of a nested mapping (lists compared as lists)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_builds_the_policy_it_declares(path):
    """The preset's files exist, and every policy field it sets arrives in the built config
    (none silently dropped or coerced), and the policy builds from it."""
    cfg = load_train_config(path)
    assert cfg.policy_preset is None or (ROOT / cfg.policy_preset).is_file(), cfg.policy_preset
    assert cfg.eval_suite is None or (ROOT / cfg.eval_suite).is_file(), cfg.eval_suite
    fields = [FieldSpec(k, SHAPES.get(k, (84, 84, 3)), kind_of_key(k)) for k in cfg.obs_keys]
    policy_cls = get_policy_class(cfg.policy_name)
    pc = build_policy_config(policy_cls, cfg.policy_fields(), ObservationSpec(tuple(fields)), osc_pose_action_spec())
    built = leaves(pc.to_dict())
    for key, value in leaves(cfg.policy_fields()).items():
        assert key in built, f"{path.name}: {key} is not a field of the built config"
        assert built[key] == value, f"{path.name}: {key} = {value!r} in the preset, {built[key]!r} in the config"
    assert [f.key for f in pc.obs_spec.fields] == list(cfg.obs_keys)
    policy = policy_cls(pc)  # the full-size GPU presets too (a few seconds on CPU)
    assert sum(p.numel() for p in policy.parameters()) > 0


def _build(cfg):
    fields = [FieldSpec(k, SHAPES.get(k, (84, 84, 3)), kind_of_key(k)) for k in cfg.obs_keys]
    policy_cls = get_policy_class(cfg.policy_name)
    return build_policy_config(policy_cls, cfg.policy_fields(), ObservationSpec(tuple(fields)), osc_pose_action_spec())


def test_policy_overrides_merge_into_the_preset_part_by_part():
    path = ROOT / "configs/train/lift_lowdim_small.yaml"
    cfg = load_train_config(path, ["policy.backbone.down_dims=[32,64]", "policy.inference.num_inference_steps=4"])
    unet = {"kind": "unet", "down_dims": [32, 64], "kernel_size": 5, "n_groups": 8, "diffusion_step_embed_dim": 128}
    assert cfg.policy_fields()["backbone"] == unet
    assert cfg.policy_fields()["inference"] == {"sampler": "ddim", "num_inference_steps": 4}
    pc = _build(cfg)
    assert pc.backbone.down_dims == (32, 64) and pc.inference.num_inference_steps == 4
    assert _build(load_train_config(path, ["policy.backbone.kind=transformer"])).backbone.kind == "transformer"
    with pytest.raises(ValueError, match=r"backbone\.n_layer is not a field of the unet backbone \(its fields: "):
        _build(load_train_config(path, ["policy.backbone.n_layer=2"]))
    with pytest.raises(ValueError, match=r"down_dims is a flat \(old\) key.*write it as backbone\.down_dims"):
        _build(load_train_config(path, ["policy.down_dims=[32,64]"]))


def test_a_run_config_saved_with_flat_policy_fields_still_builds(tmp_path):
    """``train_config.yaml`` of a run started before the parts (resume reads it)."""
    flat = {"backbone": "unet", "horizon": 16, "down_dims": [32, 64], "kernel_size": 5, "n_groups": 8}
    flat |= {"diffusion_step_embed_dim": 32, "beta_schedule": "squaredcos_cap_v2", "sampler": "ddim"}
    flat |= {"num_inference_steps": 10, "image_width": 64}
    (tmp_path / "train_config.yaml").write_text(yaml.safe_dump({"policy_name": "diffusion", "policy": flat}))
    pc = _build(load_train_config(tmp_path / "train_config.yaml"))
    assert pc.backbone.down_dims == (32, 64) and pc.backbone.diffusion_step_embed_dim == 32
    assert (pc.inference.sampler.value, pc.inference.num_inference_steps) == ("ddim", 10)
