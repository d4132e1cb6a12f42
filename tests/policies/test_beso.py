"""BESO: both modes of a bimodal toy task, goals and classifier-free guidance, the EDM view,
RTI on it unchanged, random future goal windows, clear errors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from robopolicy.data.sampler import WindowSampler
from robopolicy.diffusion import EDMDenoiserView, sample_chunk
from robopolicy.inference.rti import RTI, RTIConfig
from robopolicy.policies.beso import BesoConfig, BesoPolicy, GoalConfig, ScoreNetConfig, sample_log_logistic
from robopolicy.policy import Policy
from robopolicy.types import ActionSpec, FieldSpec, ObservationSpec

OBS = ObservationSpec((FieldSpec("state", (2,)),))
ACT = ActionSpec(("x", "y"), (-1.0, -1.0), (1.0, 1.0))
H, TO, C = 8, 2, 0.5

pytestmark = pytest.mark.usefixtures("one_thread")


def make_policy(**kw) -> BesoPolicy:
    cfg = BesoPolicy.tiny_configs(OBS, ACT)["default"]
    kw.setdefault("net", ScoreNetConfig(d_model=64, n_layer=2, n_head=4, p_drop_attn=0.0))
    cfg = dataclasses.replace(cfg, **kw)
    policy = BesoPolicy(cfg)
    fields = {"state": np.random.default_rng(0).uniform(-1, 1, (64, 2))}
    fields["action"] = np.concatenate([np.full((1, 2), -1.0), np.full((1, 2), 1.0), np.zeros((4, 2))])
    policy.fit_normalizer(fields)
    return policy


def bimodal_batch(gen: torch.Generator, b: int) -> dict:
    """Same obs distribution; the chunk is constant +C or -C with equal probability. The goal
    (a future state) tells the mode: its coordinates carry the sign."""
    sign = torch.randint(0, 2, (b, 1, 1), generator=gen).float() * 2 - 1
    state = torch.rand(b, TO, 2, generator=gen) * 2 - 1
    goal = sign * 0.8 + 0.1 * torch.randn(b, 1, 2, generator=gen)
    return {"obs": {"state": state}, "goal.state": goal, "action": (sign * C).expand(b, H, 2).contiguous()}


def modes(chunks: torch.Tensor) -> tuple[float, float, float]:
    means = chunks.mean(dim=(-2, -1)).flatten()
    pos = float(((means - C).abs() < 0.2).float().mean())
    neg = float(((means + C).abs() < 0.2).float().mean())
    return pos, neg, float((means.abs() < 0.2).float().mean())


@pytest.fixture(scope="module")
def trained() -> BesoPolicy:
    torch.manual_seed(0)
    policy = make_policy()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    steps = 1000
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(steps):
        loss, metrics = policy.compute_loss(bimodal_batch(gen, 64))
        first = metrics["loss"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    policy.__dict__["_losses"] = (first, metrics["loss"])
    return policy.eval()


def test_loss_falls_and_goal_free_sampling_gives_both_modes_not_their_mean(trained):
    first, last = trained.__dict__["_losses"]
    assert last < 0.5 * first, (first, last)
    gen = torch.Generator().manual_seed(1)
    obs = bimodal_batch(gen, 4)["obs"]  # no goal: the unconditional (null goal) policy
    for sampler, steps in (("dpm_solver_1", 3), ("euler_ancestral", 3), ("ddim", 10)):
        chunks = trained.predict_action_chunk(
            obs, num_samples=32, generator=gen, sampler=sampler, num_inference_steps=steps
        )
        assert chunks.shape == (4, 32, H, 2)
        pos, neg, zero = modes(chunks)
        assert pos > 0.25 and neg > 0.25, (sampler, pos, neg)
        assert zero < 0.1, (sampler, zero)  # a regressor would put everything at 0
        assert chunks.std(dim=2).mean() < 0.1  # each chunk (nearly) constant, as in the data


def test_a_goal_selects_its_mode_and_guidance_sharpens_it(trained):
    """Goal-free: both modes (~50 % each). With the goal: mostly its mode at w = 1 (the plain
    conditional pass), more so at w = 2 (classifier-free guidance)."""
    gen = torch.Generator().manual_seed(2)
    obs = bimodal_batch(gen, 8)["obs"]
    agree = {}
    for w in (1.0, 2.0):
        hits = []
        for sign in (1.0, -1.0):
            goal = {**obs, "goal.state": torch.full((8, 1, 2), 0.8 * sign)}
            chunks = trained.predict_action_chunk(goal, num_samples=16, generator=gen, guidance_weight=w)
            hits.append(chunks.mean(dim=(-2, -1)).sign() == sign)
        agree[w] = float(torch.cat(hits).float().mean())
    assert agree[1.0] > 0.75 and agree[2.0] > 0.85 and agree[2.0] >= agree[1.0] - 0.02, agree


@torch.no_grad()
def test_guidance_weight_one_equals_the_conditional_pass_and_zero_the_goal_free_one(trained):
    gen = torch.Generator().manual_seed(3)
    batch = bimodal_batch(gen, 3)
    obs = {**batch["obs"], "goal.state": batch["goal.state"]}
    view = trained.denoiser_view()
    x = torch.randn(3, H, 2, generator=gen)
    cond = trained._engine_encode(obs, 1.0)
    assert "uncond" not in cond  # weight 1: one pass
    d_cond = view.denoise(x, 0.3, cond)
    d_free = view.denoise(x, 0.3, trained._engine_encode(batch["obs"], 1.0))
    assert torch.equal(view.denoise(x, 0.3, trained._engine_encode(obs, 0.0)), d_free)
    guided = trained._engine_encode(obs, 2.0)  # the two-pass path, with its weight set to 1 and 0
    for w, ref in ((1.0, d_cond), (0.0, d_free)):
        forced = {**guided, "weight": torch.full((3,), w)}
        torch.testing.assert_close(view.denoise(x, 0.3, forced), ref, atol=1e-5, rtol=1e-5)
    d_guided = view.denoise(x, 0.3, guided)
    torch.testing.assert_close(d_guided, d_free + 2.0 * (d_cond - d_free), atol=1e-5, rtol=1e-5)
    out = trained.predict(
        obs, generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)], options={"guidance_weight": 2.0}
    )
    assert out.info["nfe"].tolist() == [6, 6, 6]  # 3 steps x 2 passes
    assert trained.predict(obs).info["nfe"].tolist() == [3, 3, 3]


@torch.no_grad()
def test_policy_samples_through_its_edm_view(trained):
    obs = bimodal_batch(torch.Generator().manual_seed(4), 3)["obs"]
    noise = torch.randn(3, H, 2, generator=torch.Generator().manual_seed(5))
    ref = trained.predict_action_chunk(obs, noise=noise)
    view = trained.denoiser_view()
    assert isinstance(view, EDMDenoiserView) and view.action_shape == (H, 2)
    x0 = sample_chunk(view, view.encode(obs), noise=noise, method="dpm_solver_1", steps=3).clamp(-1, 1)
    torch.testing.assert_close(view.to_action(x0), ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_rti_runs_on_beso_unchanged(trained):
    rng = torch.Generator().manual_seed(6)
    obs = bimodal_batch(rng, 2)["obs"]
    with pytest.raises(ValueError, match="no timestep grid.*sigma_start"):
        RTI(trained, RTIConfig(steps=2))
    rti = RTI(trained, RTIConfig(steps=2, sigma_start=0.1))
    first = rti.predict(obs, env_ids=[0, 1], generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    second = rti.predict(obs, env_ids=[0, 1], generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert first.info["warm"].tolist() == [False, False] and second.info["warm"].tolist() == [True, True]
    assert second.info["nfe"].tolist() == [2, 2]
    pos, neg, zero = modes(second.actions)
    assert pos + neg == 1.0 and zero == 0.0  # warm chunks stay on a mode
    # the warm chunk keeps each environment's mode (the shifted guess of a constant chunk is itself)
    assert torch.equal(first.actions.mean(dim=(1, 2)).sign(), second.actions.mean(dim=(1, 2)).sign())


def test_truncated_log_logistic_density():
    torch.manual_seed(0)
    s = sample_log_logistic(200_000, math.log(0.5), 0.5, 0.005, 1.0)
    assert float(s.min()) >= 0.005 and float(s.max()) <= 1.0
    # the median of the untruncated logistic is loc; truncation at 1.0 (= loc + 1.39 scale) moves it down a bit
    med = float(s.log().median())
    assert math.log(0.5) - 0.25 < med < math.log(0.5), med
    frac_above = float((s > 0.5).double().mean())
    cdf = lambda v: 1 / (1 + math.exp(-(math.log(v) - math.log(0.5)) / 0.5))  # noqa: E731
    expected = (cdf(1.0) - cdf(0.5)) / (cdf(1.0) - cdf(0.005))
    assert abs(frac_above - expected) < 0.01, (frac_above, expected)


def test_goal_windows_draw_a_future_frame_of_the_same_episode_for_every_key():
    obs = ObservationSpec((FieldSpec("state", (1,)), FieldSpec("eef_pos", (1,))))
    cfg = BesoConfig(
        obs_spec=obs, action_spec=ActionSpec(("a",), (-1.0,), (1.0,)), horizon=4, n_obs_steps=2, n_action_steps=2
    )
    windows = cfg.data_windows()
    assert set(windows.extras) == {"goal.state", "goal.eef_pos"} and cfg.goal_offset == 3
    ends = np.array([10, 30])
    step = np.arange(30, dtype=np.float32)[:, None]
    data = {"state": step, "eef_pos": step + 1000, "action": step}
    sampler = WindowSampler(data, windows, episode_ends=ends)
    torch.manual_seed(0)
    seen = set()
    for i in range(len(sampler)):
        for _ in range(5):
            w = sampler[i]
            e, t = (int(v) for v in sampler.windows[i])
            start, last = (0, 9) if e == 0 else (10, 29)
            g = int(w["goal.state"][0, 0])
            assert int(w["goal.eef_pos"][0, 0]) == g + 1000  # both keys from the same step
            assert min(start + t + 3, last) <= g <= last
            seen.add((i, g))
    assert len(seen) > 2 * len(sampler)  # random, not a fixed offset
    no_goal = dataclasses.replace(cfg, goal=GoalConfig(enabled=False))
    assert no_goal.data_windows().extras == {} and no_goal.goal_keys == []


def test_bad_goals_and_configs_are_clear_errors(trained):
    obs = bimodal_batch(torch.Generator().manual_seed(7), 2)["obs"]
    with pytest.raises(ValueError, match="goal: .*'state'"):
        trained.predict({**obs, "goal.state": torch.zeros(2, 2, 2)})  # two frames, not one
    with pytest.raises(ValueError, match="goal: .*non-finite"):
        trained.predict({**obs, "goal.state": torch.full((2, 1, 2), float("nan"))})
    with pytest.raises(ValueError, match="guidance_weight"):
        trained.predict(obs, options={"guidance_weight": -1.0})
    with pytest.raises(ValueError, match="sampler.*nope"):
        trained.predict(obs, options={"sampler": "nope"})
    base = BesoPolicy.tiny_configs(OBS, ACT)["default"]
    with pytest.raises(ValueError, match="gaussian"):
        dataclasses.replace(base, normalization={"action": "gaussian"})
    with pytest.raises(ValueError, match="mask_prob"):
        GoalConfig(mask_prob=1.5)
    with pytest.raises(ValueError, match="divisible"):
        ScoreNetConfig(d_model=10, n_head=4)


def test_save_load_keeps_the_chunks(trained, tmp_path):
    obs = bimodal_batch(torch.Generator().manual_seed(8), 2)["obs"]
    obs["goal.state"] = torch.full((2, 1, 2), 0.8)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    ref = trained.predict_action_chunk(obs, generator=gens(), guidance_weight=2.0)
    loaded = Policy.load(trained.save(tmp_path / "beso"))
    assert isinstance(loaded, BesoPolicy)
    assert torch.equal(loaded.predict_action_chunk(obs, generator=gens(), guidance_weight=2.0), ref)
