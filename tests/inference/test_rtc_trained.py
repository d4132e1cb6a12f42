"""Training-time action conditioning (Black et al., arXiv 2512.05964) on Diffusion Policy's
transformer: per-token timesteps, the clean prefix at timestep 0 left out of the loss, the
view's per-position sigmas, :func:`sample_prefix`, and RTC's ``trained`` mode. The behaviour
test trains a tiny policy on chunks whose offset the observation does not show: given the
executed prefix, the trained policy continues it; without, it cannot know it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from robopolicy.inference.rtc import RTC, RTCConfig, RTCMode, sample_prefix
from robopolicy.nn.transformer import TransformerForDiffusion
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.types import ActionSpec, FieldSpec, ObservationSpec

OBS = ObservationSpec((FieldSpec("state", (2,)),))
ACT = ActionSpec(("x", "y"), (-2.0, -2.0), (2.0, 2.0))

pytestmark = pytest.mark.usefixtures("one_thread")


def ttc_config(max_delay: int = 4, **backbone):
    base = DiffusionPolicy.tiny_configs(OBS, ACT)["transformer"]
    bb = dataclasses.replace(base.backbone, token_time=True, **backbone)
    return dataclasses.replace(base, backbone=bb, train_max_delay=max_delay)


def test_per_token_timesteps_equal_to_the_rows_are_the_row_timestep():
    torch.manual_seed(0)
    net = TransformerForDiffusion(3, 5, horizon=8, n_obs_steps=2, n_layer=1, n_head=2, n_emb=16, token_time=True)
    net.eval()
    x, cond, t = torch.randn(2, 8, 3), torch.randn(2, 2, 5), torch.tensor([3.0, 70.0])
    torch.testing.assert_close(net(x, t, cond), net(x, t[:, None].expand(2, 8), cond), rtol=0, atol=0)
    mixed = t[:, None].expand(2, 8).clone()
    mixed[:, 1:3] = 0.0  # a clean prefix changes the output
    assert not torch.allclose(net(x, mixed, cond), net(x, t, cond))
    plain = TransformerForDiffusion(3, 5, horizon=8, n_obs_steps=2, n_layer=1, n_head=2, n_emb=16)
    with pytest.raises(ValueError, match="token_time=True"):
        plain(x, mixed, cond)
    with pytest.raises(ValueError, match="per-token timesteps must have shape"):
        net(x, mixed[:, :4], cond)


def test_the_config_needs_per_token_noise_levels():
    base = DiffusionPolicy.tiny_configs(OBS, ACT)
    with pytest.raises(ValueError, match="token_time"):
        dataclasses.replace(base["unet"], train_max_delay=2)
    with pytest.raises(ValueError, match="token_time"):
        dataclasses.replace(base["transformer"], train_max_delay=2)
    with pytest.raises(ValueError, match="at most horizon - n_obs_steps = 6"):
        ttc_config(7)
    with pytest.raises(ValueError, match=">= 0"):
        ttc_config(-1)
    assert ttc_config(6).train_max_delay == 6


def test_the_prefix_is_clean_at_timestep_zero_and_out_of_the_loss():
    torch.manual_seed(0)
    policy = DiffusionPolicy(ttc_config(max_delay=6))
    rng = np.random.default_rng(0)
    policy.fit_normalizer({"state": rng.normal(size=(64, 2)), "action": rng.uniform(-2, 2, (64, 2))})
    seen = {}

    def spy(module, args, out):
        seen["x"], seen["t"] = args[0].detach(), args[1].detach()

    policy.model.register_forward_hook(spy)
    batch = {"obs": {"state": rng.normal(size=(32, 2, 2))}, "action": rng.uniform(-2, 2, (32, 8, 2))}
    loss, info = policy.compute_loss(batch)
    t = seen["t"]
    assert t.shape == (32, 8)
    prefix = t == 0
    assert not prefix[:, 0].all() or True  # index 0 (the past) is an ordinary noisy position
    assert not bool(prefix[:, 0][t[:, 0].ne(0)].any())
    # the prefix starts at To-1 = 1 and is contiguous; its inputs are sqrt(alpha_bar_0) * action
    for row in range(32):
        d = int(prefix[row, 1:].sum())
        assert prefix[row, 1 : 1 + d].all() and not prefix[row, 1 + d :].any()
        a = policy.normalizer.normalize("action", torch.as_tensor(batch["action"][row], dtype=torch.float32))
        ab0 = policy.noise_scheduler.alphas_cumprod[0].sqrt()
        torch.testing.assert_close(seen["x"][row, 1 : 1 + d], ab0 * a[1 : 1 + d])
    assert 0 < info["prefix_frac"] < 1
    # the loss ignores the network's output on the prefix
    pred = {}

    def override(module, args, out):
        pred["out"] = out
        return out + 100.0 * (seen["t"] == 0)[..., None] * (torch.arange(8) > 0)[None, :, None]

    torch.manual_seed(1)
    loss_a, _ = policy.compute_loss(batch)
    h = policy.model.register_forward_hook(override)
    torch.manual_seed(1)
    loss_b, _ = policy.compute_loss(batch)
    h.remove()
    torch.testing.assert_close(loss_a, loss_b)


def offset_chunks(n: int, rng) -> np.ndarray:
    """Chunks a_i = c + 0.15 i (x) and -c (y) with c ~ U(-1, 1): the observation does not show c."""
    c = rng.uniform(-1, 1, (n, 1))
    i = np.arange(8)[None, :]
    return np.stack([c + 0.15 * i, np.broadcast_to(-c, (n, 8))], -1).astype(np.float32)


@pytest.fixture(scope="module")
def trained_policy():
    torch.manual_seed(0)
    cfg = ttc_config(max_delay=3, n_emb=32, n_layer=2, n_head=2)
    policy = DiffusionPolicy(cfg)
    rng = np.random.default_rng(0)
    data = offset_chunks(4096, rng)
    policy.fit_normalizer({"state": np.zeros((8, 2)), "action": data.reshape(-1, 2)})
    opt = torch.optim.AdamW(policy.parameters(), lr=2e-3)
    for _ in range(500):
        idx = rng.integers(0, len(data), 128)
        batch = {"obs": {"state": np.zeros((128, 2, 2), np.float32)}, "action": data[idx]}
        loss, _ = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.set_engine("eager")
    return policy.eval()


def test_given_the_prefix_the_trained_policy_continues_it(trained_policy):
    policy = trained_policy
    rng = np.random.default_rng(7)
    truth = torch.as_tensor(offset_chunks(64, rng))
    obs = {"state": np.zeros((64, 2, 2), np.float32)}
    rtc = RTC(policy)
    assert rtc.mode is RTCMode.TRAINED and rtc.config_dict["mode_resolved"] == "trained"
    # the previous chunk, shifted by executed = 2, is the truth; d = 2 positions are frozen
    prev = torch.cat([truth[:, :2] - 0.3, truth[:, :6]], dim=1)  # prev[2 + i] = truth[i]
    for e in range(64):
        rtc._prev[e] = prev[e]
    out = rtc.predict(obs, env_ids=list(range(64)), delay=2, executed=2, generator=torch.Generator().manual_seed(0))
    frozen = slice(1, 3)
    torch.testing.assert_close(out.actions[:, frozen], truth[:, frozen], rtol=0, atol=1e-5)
    rest = slice(3, 8)
    err = (out.actions[:, rest] - truth[:, rest]).abs().mean()
    plain = policy.predict(obs, generator=torch.Generator().manual_seed(0)).actions
    plain_err = (plain[:, rest] - truth[:, rest]).abs().mean()
    assert err < 0.25 * plain_err, (float(err), float(plain_err))
    assert out.info["guided"].all() and out.info["nfe"].tolist() == [rtc.steps] * 64
    # zero delay: the policy's own chunk
    noise = torch.randn(64, 8, 2, generator=torch.Generator().manual_seed(3))
    zero = rtc.predict(obs, env_ids=list(range(64)), delay=0, options={"noise": noise})
    assert torch.equal(zero.actions, policy.predict(obs, options={"noise": noise}).actions)


def test_sample_prefix_and_the_modes_refuse_what_they_cannot_do(trained_policy):
    view = trained_policy.denoiser_view()
    cond = view.encode({"state": np.zeros((1, 2, 2), np.float32)})
    prefix = torch.zeros(1, 8, 2)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        sample_prefix(view, cond, prefix, torch.ones(1, 8), steps=2)
    with pytest.raises(ValueError, match="steps with one of"):
        sample_prefix(view, cond, prefix, torch.zeros(1, 8, dtype=torch.bool), method="ddpm")
    torch.manual_seed(0)
    unet = DiffusionPolicy(DiffusionPolicy.tiny_configs(OBS, ACT)["unet"])
    unet.fit_normalizer({"state": np.zeros((8, 2)), "action": np.random.default_rng(0).uniform(-2, 2, (8, 2))})
    with pytest.raises(ValueError, match="mode 'trained' needs a policy trained"):
        RTC(unet, RTCConfig(mode="trained"))
    assert RTC(unet).mode is RTCMode.GUIDED
    uview = unet.denoiser_view()
    with pytest.raises(ValueError, match="train_max_delay > 0"):
        sample_prefix(uview, uview.encode({"state": np.zeros((1, 2, 2))}), prefix, torch.zeros(1, 8, dtype=bool))
    with pytest.raises(ValueError, match="per-position sigmas"):
        uview.denoise(prefix, torch.ones(1, 8, dtype=torch.float64), uview.encode({"state": np.zeros((1, 2, 2))}))
    with pytest.raises(ValueError, match="unknown RTC mode"):
        RTCConfig(mode="learned")
    # guided mode still runs on the trained policy (the sweep compares both on one checkpoint)
    guided = RTC(trained_policy, RTCConfig(mode="guided"))
    guided.predict({"state": np.zeros((1, 2, 2), np.float32)}, env_ids=[0])
    out = guided.predict({"state": np.zeros((1, 2, 2), np.float32)}, env_ids=[0], delay=2, executed=2)
    assert out.info["guided"].all()
