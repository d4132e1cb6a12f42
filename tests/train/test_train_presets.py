"""Every shipped train preset loads and builds a valid policy config."""

from __future__ import annotations

from pathlib import Path

import pytest

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
