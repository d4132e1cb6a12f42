"""Normalizer modes, discrete dims untouched or scaled, per-key modes, safetensors round trip,
missing keys raise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.data.normalizer import Normalizer, NormMode, normalization_modes
from robopolicy.types import FieldKind, FieldSpec, ObservationSpec


def test_limits_maps_to_unit_range_and_inverts():
    rng = np.random.default_rng(0)
    x = rng.uniform([-3, 10, 5], [2, 20, 5], size=(500, 3)).astype(np.float32)  # dim 2 constant
    n = Normalizer().fit("a", x, NormMode.LIMITS)
    y = n.normalize("a", x)
    assert np.allclose(y[:, :2].min(0), -1, atol=1e-5) and np.allclose(y[:, :2].max(0), 1, atol=1e-5)
    assert np.allclose(y[:, 2], 0)
    assert np.allclose(n.unnormalize("a", y), x, atol=1e-4)
    t = n.normalize("a", torch.as_tensor(x))
    assert torch.allclose(t, torch.as_tensor(y), atol=1e-6)


def test_gaussian_and_keep_dims():
    rng = np.random.default_rng(1)
    x = rng.normal([1, 2, 0], [3, 4, 1], size=(4000, 3))
    x[:, 2] = np.sign(x[:, 2])  # a gripper
    n = Normalizer().fit("a", x, NormMode.GAUSSIAN, keep_dims=[2])
    y = n.normalize("a", x)
    assert np.allclose(y[:, :2].mean(0), 0, atol=1e-3) and np.allclose(y[:, :2].std(0), 1, atol=1e-3)
    assert np.array_equal(y[:, 2], x[:, 2].astype(np.float32))


def test_image_mode_and_round_trip(tmp_path):
    n = Normalizer().set_image("image.cam").fit("s", np.arange(10.0)[:, None])
    img = torch.tensor([0, 255], dtype=torch.uint8)
    assert torch.allclose(n.normalize("image.cam", img.float()), torch.tensor([-1.0, 1.0]))
    save_file(n.state_dict(), str(tmp_path / "n.safetensors"), metadata=n.metadata())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "n.safetensors"), "pt") as f:
        meta = f.metadata()
    m = Normalizer.from_state_dict(load_file(str(tmp_path / "n.safetensors")), meta)
    assert m.modes == n.modes
    assert np.allclose(m.normalize("s", np.array([[4.5]])), n.normalize("s", np.array([[4.5]])))


def test_missing_key_raises():
    with pytest.raises(KeyError, match="'state'"):
        Normalizer().normalize("state", np.zeros(3))
    with pytest.raises(KeyError, match="missing"):
        Normalizer.from_state_dict({}, {"modes": '{"x": "limits"}'})


@pytest.mark.parametrize("mode", [NormMode.LIMITS, NormMode.GAUSSIAN])
def test_scaled_discrete_dims_map_plus_minus_one_to_the_scale_and_back_exactly(mode):
    """RTI's scaled-gripper training: +-1 is stored as +-0.1, and unnormalize restores +-1 bit for bit."""
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-3, 3, (200, 2)), rng.choice([-1.0, 1.0], (200, 1))], axis=1)
    n = Normalizer().fit("action", x, mode, keep_dims=[2], keep_scale=0.1)
    grip = np.array([[0.5, 0.5, -1.0], [0.5, 0.5, 1.0], [0.5, 0.5, 0.0]], np.float32)
    y = n.normalize("action", grip)
    assert y[:, 2].tolist() == [np.float32(-0.1), np.float32(0.1), 0.0]
    assert np.array_equal(n.unnormalize("action", y)[:, 2], grip[:, 2])
    yt = n.normalize("action", torch.from_numpy(grip))
    assert torch.equal(n.unnormalize("action", yt)[:, 2], torch.from_numpy(grip[:, 2]))
    assert np.array_equal(n.unnormalize("action", n.normalize("action", x))[:, 2], x[:, 2].astype(np.float32))
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="keep_scale"):
            Normalizer().fit("action", x, mode, keep_dims=[2], keep_scale=bad)


def test_normalization_modes_per_key_default_and_refuse_by_name():
    spec = ObservationSpec((FieldSpec("state", (3,)), FieldSpec("image.cam", (8, 8, 3), FieldKind.IMAGE)))
    default = {"state": NormMode.LIMITS, "image.cam": NormMode.IMAGE, "action": NormMode.LIMITS}
    assert normalization_modes({}, spec) == default
    assert normalization_modes({"state": "gaussian"}, spec) == {**default, "state": NormMode.GAUSSIAN}
    with pytest.raises(ValueError, match=r"normalization\.eef_pos: not a key of this policy.*'action'.*'state'"):
        normalization_modes({"eef_pos": "gaussian"}, spec)
    with pytest.raises(ValueError, match=r"normalization\.image\.cam: 'gaussian' does not apply.*\['image'\]"):
        normalization_modes({"image.cam": "gaussian"}, spec)
    with pytest.raises(ValueError, match=r"normalization\.action: 'image' does not apply"):
        normalization_modes({"action": "image"}, spec)
    with pytest.raises(ValueError, match=r"normalization\.state: 'zscore' is not one of"):
        normalization_modes({"state": "zscore"}, spec)
