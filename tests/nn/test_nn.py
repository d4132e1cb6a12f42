"""Denoiser networks and observation encoders: shapes, masks, crops, parameter groups."""

from __future__ import annotations

import pytest
import torch

from robopolicy.nn import (
    ConditionalUnet1D,
    CropTransform,
    ImageEncoder,
    MultiModalObsEncoder,
    SinusoidalPosEmb,
    SpatialSoftmax,
    TransformerForDiffusion,
)
from robopolicy.types import FieldKind, FieldSpec, ObservationSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unet_shapes_conditioning_and_horizon_check():
    torch.manual_seed(0)
    net = ConditionalUnet1D(3, 6, down_dims=(16, 32, 64), kernel_size=3, diffusion_step_embed_dim=16)
    x, cond = torch.randn(2, 8, 3), torch.randn(2, 6)
    out = net(x, torch.tensor([3, 50]), cond)
    assert out.shape == (2, 8, 3)
    assert not torch.allclose(out, net(x, torch.tensor([3, 50]), cond + 1))  # FiLM reads the cond
    assert not torch.allclose(out, net(x, 7, cond))  # and the step
    with pytest.raises(ValueError, match="multiple of 4, got 6"):
        net(torch.randn(2, 6, 3), 0, cond)
    with pytest.raises(ValueError, match="n_groups"):
        ConditionalUnet1D(3, 6, down_dims=(12,))


def test_sinusoidal_embedding_is_smooth_in_t():
    emb = SinusoidalPosEmb(32)
    e = emb(torch.tensor([10.0, 10.001, 60.0]))
    assert e.shape == (3, 32)
    assert (e[0] - e[1]).abs().max() < 1e-2 < (e[0] - e[2]).abs().max()


def _transformer(causal: bool = True) -> TransformerForDiffusion:
    torch.manual_seed(0)
    return TransformerForDiffusion(
        2, 5, horizon=6, n_obs_steps=3, n_layer=2, n_head=2, n_emb=16, p_drop_attn=0.0, causal_attn=causal
    ).eval()


@torch.no_grad()
def test_transformer_causal_masks():
    """Action token t depends on actions <= t and on obs tokens j <= t, never on later ones."""
    net = _transformer()
    x, cond = torch.randn(1, 6, 2), torch.randn(1, 3, 5)
    out = net(x, 10, cond)
    assert out.shape == (1, 6, 2)
    x2 = x.clone()
    x2[:, 4] += 1.0  # a later action token
    changed = (net(x2, 10, cond) - out).abs().amax(-1)[0]
    assert changed[:4].max() < 1e-6 and changed[4:].min() > 1e-6
    c2 = cond.clone()
    c2[:, 2] += 1.0  # the newest obs token (j = 2)
    changed = (net(x, 10, c2) - out).abs().amax(-1)[0]
    assert changed[:2].max() < 1e-6 and changed[2:].min() > 1e-6
    assert (net(x, 11, cond) - out).abs().amax(-1).min() > 1e-6  # the time token reaches every action


@torch.no_grad()
def test_transformer_non_causal_sees_everything():
    net = _transformer(causal=False)
    x, cond = torch.randn(1, 6, 2), torch.randn(1, 3, 5)
    x2 = x.clone()
    x2[:, 5] += 1.0
    assert (net(x2, 10, cond) - net(x, 10, cond)).abs().amax(-1).min() > 1e-6


def test_transformer_optim_groups():
    net = _transformer()
    decay, no_decay = net.optim_groups(1e-3)
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(decay).isdisjoint(ids(no_decay))
    assert len(ids(decay)) + len(ids(no_decay)) == len(list(net.parameters()))
    assert id(net.pos_emb) in ids(no_decay) and id(net.cond_pos_emb) in ids(no_decay)
    assert id(net.head.weight) in ids(decay) and id(net.head.bias) in ids(no_decay)
    assert id(net.decoder.layers[0].self_attn.in_proj_weight) in ids(decay)
    assert id(net.decoder.layers[0].norm1.weight) in ids(no_decay)
    with pytest.raises(ValueError, match="n_head"):
        TransformerForDiffusion(2, 5, 6, 3, n_head=3, n_emb=16)


def test_crop_transform_center_in_eval_random_in_training():
    x = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).reshape(2, 3, 10, 12)
    crop = CropTransform((6, 8))
    c = crop(x, train=False)
    assert c.shape == (2, 3, 6, 8) and c.equal(x[:, :, 2:8, 2:10])
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(20):
        r = crop(x, train=True, generator=gen)
        assert r.shape == (2, 3, 6, 8)
        for i in range(2):  # every crop is a contiguous window of its own image, channels aligned
            top, left = divmod(int(r[i, 0, 0, 0] - x[i, 0, 0, 0]), 12)
            assert r[i].equal(x[i, :, top : top + 6, left : left + 8])
            seen.add((top, left))
    assert len(seen) > 5
    with pytest.raises(ValueError, match="larger"):
        CropTransform((11, 8))(x, train=False)
    with pytest.raises(ValueError, match="crop shape"):
        CropTransform((0, 8))


def test_spatial_softmax_finds_a_bright_spot():
    ss = SpatialSoftmax(1, num_kp=1)
    with torch.no_grad():
        ss.kp.weight.fill_(50.0)
        ss.kp.bias.zero_()
    img = torch.zeros(1, 1, 9, 9)
    img[0, 0, 0, 8] = 1.0  # top-right corner: x = +1, y = -1
    torch.testing.assert_close(ss(img), torch.tensor([[1.0, -1.0]]), atol=1e-3, rtol=0)


def test_image_encoder_and_multimodal_encoder_shapes():
    enc = ImageEncoder(3, width=8, num_kp=4, feature_dim=10, crop_shape=(28, 28))
    assert enc(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    spec = ObservationSpec(
        (
            FieldSpec("state", (2, 2)),
            FieldSpec("image.front", (32, 32, 3), FieldKind.IMAGE),
            FieldSpec("eef", (3,)),
            FieldSpec("image.wrist", (32, 32, 1), FieldKind.IMAGE),
        )
    )
    mm = MultiModalObsEncoder(spec, width=8, num_kp=4, feature_dim=10, crop_shape=(28, 28))
    obs = {
        "state": torch.randn(2, 3, 4),
        "eef": torch.randn(2, 3, 3),
        "image.front": torch.rand(2, 3, 3, 32, 32) * 2 - 1,
        "image.wrist": torch.rand(2, 3, 1, 32, 32) * 2 - 1,
    }
    out = mm(obs)
    assert mm.out_dim == 4 + 3 + 2 * 10 and out.shape == (2, 3, mm.out_dim)
    torch.testing.assert_close(out[..., :4], obs["state"])  # low-dim first, in spec order
    torch.testing.assert_close(out[..., 4:7], obs["eef"])
    mm.eval()
    torch.testing.assert_close(mm(obs), mm(obs))  # eval crops are deterministic
