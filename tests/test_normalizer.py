"""Normalizer modes, discrete dims untouched, safetensors round trip, missing keys raise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.data.normalizer import Normalizer, NormMode


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
