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


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_builds_policy_config(path):
    cfg = load_train_config(path)
    if cfg.policy_preset and not (ROOT / cfg.policy_preset).exists():
        pytest.skip(f"{cfg.policy_preset} not written yet")
    fields = [FieldSpec(k, SHAPES.get(k, (84, 84, 3)), kind_of_key(k)) for k in cfg.obs_keys]
    policy_cls = get_policy_class(cfg.policy_name)
    pc = build_policy_config(policy_cls, cfg.policy_fields(), ObservationSpec(tuple(fields)), osc_pose_action_spec())
    assert pc.timing.n_obs_steps >= 1
    assert cfg.eval_suite is None or (ROOT / cfg.eval_suite).is_file()
