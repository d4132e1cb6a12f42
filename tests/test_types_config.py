"""Specs validate and round-trip; typed configs reject unknown keys and bad values by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from robopolicy.config import apply_overrides, from_dict, load_yaml, to_dict
from robopolicy.types import ActionSpec, ChunkTiming, FieldKind, FieldSpec, ObservationSpec, osc_pose_action_spec


def test_action_spec_round_trip_and_clip():
    spec = osc_pose_action_spec()
    assert ActionSpec.from_dict(spec.to_dict()) == spec
    a = np.array([[2.0, -3.0, 0.5, 0, 0, 0, 0.2], [0, 0, 0, 0, 0, 0, -0.7]])
    c = spec.clip(a)
    assert c[0, 0] == 1.0 and c[0, 1] == -1.0 and c[0, 2] == 0.5
    assert c[0, 6] == 1.0 and c[1, 6] == -1.0  # gripper snaps


def test_action_spec_rejects_bad_limits_and_lengths():
    with pytest.raises(ValueError, match="low must be < high.*'b'"):
        ActionSpec(names=("a", "b"), low=(0, 1), high=(1, 1))
    with pytest.raises(ValueError, match="units has 1 entries"):
        ActionSpec(names=("a", "b"), low=(0, 0), high=(1, 1), units=("m",))
    with pytest.raises(KeyError, match="high"):
        ActionSpec.from_dict({"names": ["a"], "low": [0]})


def test_observation_spec_validate_names_key():
    spec = ObservationSpec((FieldSpec("state", (5,)), FieldSpec("image.agentview", (84, 84, 3), FieldKind.IMAGE)))
    obs = {"state": np.zeros((2, 5)), "image.agentview": np.zeros((2, 84, 84, 3), np.uint8)}
    spec.validate(obs, leading=1)
    with pytest.raises(KeyError, match="image.agentview"):
        spec.validate({"state": obs["state"]})
    with pytest.raises(ValueError, match="'state'.*\\(5,\\)"):
        spec.validate({**obs, "state": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="leading dims"):
        spec.validate(obs, leading=2)
    assert ObservationSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="image field"):
        FieldSpec("image.x", (84, 84), FieldKind.IMAGE)


def test_observation_spec_validate_batch_names_key_and_shape_as_passed():
    spec = ObservationSpec((FieldSpec("state", (5,)), FieldSpec("image.agentview", (8, 8, 3), FieldKind.IMAGE)))
    obs = {"state": np.zeros((3, 2, 5)), "image.agentview": np.zeros((3, 2, 8, 8, 3), np.uint8)}
    assert spec.validate_batch(obs, 2) == 3
    assert spec.validate_batch({**obs, "state": np.zeros((3, 2, 5)).tolist()}, 2) == 3  # lists have a shape too
    with pytest.raises(TypeError, match="mapping"):
        spec.validate_batch(obs["state"], 2)
    with pytest.raises(KeyError, match="image.agentview"):
        spec.validate_batch({"state": obs["state"]}, 2)
    with pytest.raises(
        ValueError, match=r"'state': expected shape \(B, To, \*shape\) = \(B, 2, 5\), got \(2, 5\) \(is"
    ):
        spec.validate_batch({**obs, "state": np.zeros((2, 5))}, 2)
    with pytest.raises(ValueError, match=r"'image.agentview'.*got \(2, 8, 8, 3\) \(is the batch dimension missing"):
        spec.validate_batch({**obs, "image.agentview": obs["image.agentview"][0]}, 2)
    with pytest.raises(ValueError, match=r"'state'.*got \(3, 2, 4\) \(the trailing dims must be \(5,\)\)"):
        spec.validate_batch({**obs, "state": np.zeros((3, 2, 4))}, 2)
    with pytest.raises(ValueError, match=r"'state'.*got \(1, 3, 2, 5\)$"):
        spec.validate_batch({**obs, "state": np.zeros((1, 3, 2, 5))}, 2)
    with pytest.raises(ValueError, match=r"'state' has 4 frames \(shape \(3, 4, 5\)\).*exactly To=2.*\[:, -2:\]"):
        spec.validate_batch({**obs, "state": np.zeros((3, 4, 5))}, 2)
    with pytest.raises(ValueError, match=r"'image.agentview' has 1 frames.*exactly To=2"):
        spec.validate_batch({**obs, "image.agentview": obs["image.agentview"][:, :1]}, 2)
    with pytest.raises(ValueError, match=r"disagree on the batch size B: \{'state': 3, 'image.agentview': 1\}"):
        spec.validate_batch({**obs, "image.agentview": obs["image.agentview"][:1]}, 2)
    with pytest.raises(ValueError, match=r"empty batch: observation key 'state' has shape \(0, 2, 5\)"):
        spec.validate_batch({k: v[:0] for k, v in obs.items()}, 2)


def test_chunk_timing():
    t = ChunkTiming(16, 2, 8)
    assert t.executed == slice(1, 9)
    with pytest.raises(ValueError, match="exceeds horizon"):
        ChunkTiming(8, 2, 8)


@dataclasses.dataclass(frozen=True)
class _Inner:
    lr: float = 1e-4
    dims: tuple[int, ...] = (1, 2)


@dataclasses.dataclass(frozen=True)
class _Outer:
    name: str = "x"
    inner: _Inner = _Inner()
    spec: ActionSpec | None = None


def test_config_from_dict_round_trip_and_errors(tmp_path):
    cfg = _Outer("y", _Inner(0.5, (3, 4)), osc_pose_action_spec())
    assert from_dict(_Outer, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['lrr'\\]"):
        from_dict(_Outer, {"inner": {"lrr": 1}})
    with pytest.raises(ValueError, match="inner.lr"):
        from_dict(_Outer, {"inner": {"lr": "fast"}})
    data = apply_overrides(to_dict(cfg), ["inner.lr=0.25", "inner.dims=[8, 9]", "name=z"])
    out = from_dict(_Outer, data)
    assert out.inner.lr == 0.25 and out.inner.dims == (8, 9) and out.name == "z"
    with pytest.raises(ValueError, match="dotted.key=value"):
        apply_overrides({}, ["novalue"])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
