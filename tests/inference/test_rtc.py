"""RTC inpainting through the denoiser view: the soft mask, the guidance weight's sigma form
(exact inpainting with the exact denoiser of unit Gaussian data, on a VP and an EDM view),
zero weights = plain sampling bit for bit, the prefix respected on tiny Diffusion Policy and
BESO, grad modes, the actor (cold first call, shifted prefix, per-environment state), its
agreement with the chunk scheduler's ticks, and the inference option."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from robopolicy.control.scheduler import ChunkScheduler, SchedulerConfig
from robopolicy.diffusion.samplers import sample_chunk
from robopolicy.diffusion.schedulers import NoiseScheduleConfig
from robopolicy.diffusion.view import EDMDenoiserView, VPDenoiserView
from robopolicy.inference.engine import Backend
from robopolicy.inference.options import InferenceOptions
from robopolicy.inference.rtc import RTC, RTCConfig, guidance_scale, prefix_weights, sample_rtc
from robopolicy.policies.beso import BesoPolicy
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.types import ActionSpec, FieldSpec, ObservationSpec

OBS = ObservationSpec((FieldSpec("state", (3,)),))
ACT = ActionSpec(("x", "y", "g"), (-1.0, -2.0, -1.0), (1.0, 2.0, 1.0), discrete=(False, False, True))

pytestmark = pytest.mark.usefixtures("one_thread")

POLICIES = [pytest.param(DiffusionPolicy, "unet", id="diffusion-unet"), pytest.param(BesoPolicy, "default", id="beso")]


def make_policy(cls, variant: str, engine: str | None = "eager"):
    torch.manual_seed(0)
    policy = cls(cls.tiny_configs(OBS, ACT)[variant])
    rng = np.random.default_rng(0)
    action = np.concatenate(
        [rng.uniform(-1, 1, (64, 1)), rng.uniform(-2, 2, (64, 1)), rng.choice([-1.0, 1.0], (64, 1))], 1
    )
    policy.fit_normalizer({"state": rng.normal(size=(64, 3)), "action": action})
    if engine is not None:
        policy.set_engine(engine)
    return policy.eval()


def obs(b: int, seed: int = 0) -> dict:
    return {"state": np.random.default_rng(seed).normal(size=(b, 2, 3)).astype(np.float32)}


def noise_like(view, b: int, seed: int) -> torch.Tensor:
    return torch.randn(b, *view.action_shape, generator=torch.Generator().manual_seed(seed))


def plain_settings(policy) -> dict:
    inf = policy.config.inference
    return {"method": inf.sampler.value, "steps": inf.num_inference_steps, "x0_clip": policy.x0_clip}


# ---------------------------------------------------------------------- the mask and the weight
def test_prefix_weights_follow_the_paper():
    lin = prefix_weights(10, 2, 4, "linear")  # the reference's own example: start 2, end 6
    torch.testing.assert_close(lin, torch.tensor([1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0, 0, 0]))
    exp = prefix_weights(10, 2, 4, "exp")
    c = lin[2:6].double()
    torch.testing.assert_close(exp[2:6].double(), c * (torch.exp(c) - 1) / (math.e - 1), rtol=1e-6, atol=1e-7)
    assert exp[2] == pytest.approx(0.8 * (math.exp(0.8) - 1) / (math.e - 1))  # 0.5706
    assert torch.equal(exp[:2], torch.ones(2)) and torch.equal(exp[6:], torch.zeros(4))
    assert bool((exp[2:6] < lin[2:6]).all())  # exp decays faster than linear
    assert prefix_weights(10, 2, 4, "zeros").tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert prefix_weights(10, 2, 4, "ones").tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    assert prefix_weights(10, 0, 4, "exp")[0] > 0  # d = 0 still weights the overlap (soft masking)
    assert not prefix_weights(10, 0, 4, "zeros").any() and not prefix_weights(10, 0, 10, "exp").any()
    with pytest.raises(ValueError, match=r"H - s = 6"):
        prefix_weights(10, 7, 4)
    with pytest.raises(ValueError, match="unknown prefix schedule"):
        prefix_weights(10, 2, 4, "cosine")


def test_the_guidance_weight_is_the_papers_in_sigma():
    """tau = 1 / (1 + sigma): the paper's ((1 - tau) / tau) * min(beta, (1 - tau) / (tau r^2)) equals
    min(beta * sigma, 1 + sigma^2)."""
    for sigma in (0.01, 0.3, 1.0, 3.0, 80.0):
        tau = 1 / (1 + sigma)
        r2 = (1 - tau) ** 2 / (tau**2 + (1 - tau) ** 2)
        for beta in (1.0, 5.0, 1e6):
            paper = (1 - tau) / tau * min(beta, (1 - tau) / (tau * r2))
            assert guidance_scale(sigma, beta) == pytest.approx(paper, rel=1e-9)


# ---------------------------------------------------------------------- exact Gaussian denoisers
def gaussian_vp_view() -> VPDenoiserView:
    """The exact epsilon-predictor of unit Gaussian data, x_vp -> sqrt(1 - a(t)) x_vp (D = x / (1 + sigma^2))."""
    holder = {}

    def model_fn(x_vp, t, cond):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        sigma = holder["view"].t_to_sigma(t)
        k = (sigma / (1 + sigma**2).sqrt()).to(x_vp.dtype)
        return k.reshape(-1, *([1] * (x_vp.ndim - 1))) * x_vp

    view = VPDenoiserView(model_fn, lambda o: None, lambda x: x, (6, 2), NoiseScheduleConfig())
    holder["view"] = view
    return view


def gaussian_edm_view() -> EDMDenoiserView:
    """F chosen so that D(x; sigma) = c_skip x + c_out F = x / (1 + sigma^2)."""
    sd = 0.5

    def model_fn(x_in, c_noise, cond):
        sigma = torch.exp(4 * torch.as_tensor(c_noise, dtype=torch.float64)).reshape(-1)
        s2 = sigma**2
        c_skip, c_out, c_in = sd**2 / (s2 + sd**2), sigma * sd / (s2 + sd**2).sqrt(), (s2 + sd**2).rsqrt()
        col = lambda v: v.to(x_in.dtype).reshape(-1, *([1] * (x_in.ndim - 1)))  # noqa: E731
        x = x_in / col(c_in)
        return (x / col(1 + s2) - col(c_skip) * x) / col(c_out)

    return EDMDenoiserView(model_fn, lambda o: None, lambda x: x, (6, 2), sigma_data=sd, sigma_max=10.0)


@pytest.mark.parametrize("make_view", [gaussian_vp_view, gaussian_edm_view], ids=["vp", "edm"])
def test_with_the_exact_denoiser_of_unit_gaussian_data_rtc_inpaints_exactly(make_view):
    """PiGDM's weight (1 + sigma^2) times the Jacobian 1 / (1 + sigma^2) moves x0 exactly onto the
    prefix where W = 1; where W = 0 the (diagonal) Jacobian leaves the sample as plain sampling has it."""
    view = make_view()
    noise = noise_like(view, 3, 0)
    prefix = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(1))
    w = prefix_weights(6, 2, 2, "zeros")  # 1 on the first two positions only
    plain = sample_chunk(view, None, noise=noise, steps=8)
    out = sample_rtc(view, None, prefix, w, steps=8, max_guidance=1e9, noise=noise)
    torch.testing.assert_close(out[:, :2], prefix[:, :2], rtol=0, atol=1e-4)
    torch.testing.assert_close(out[:, 2:], plain[:, 2:], rtol=0, atol=1e-5)
    assert (plain[:, :2] - prefix[:, :2]).abs().mean() > 0.3
    # half weights: x0 moves half way at every step, so the result lies strictly between
    half = sample_rtc(view, None, prefix, 0.5 * w, steps=8, max_guidance=1e9, noise=noise)
    err = (half[:, :2] - prefix[:, :2]).abs().mean()
    assert 1e-3 < err < (plain[:, :2] - prefix[:, :2]).abs().mean()


def test_one_guided_step_by_hand():
    """DDIM from sigma to sigma' with x0_g = D + min(beta sigma, 1 + sigma^2) J^T (W (Y - D)), J = I / (1 + sigma^2)."""
    view = gaussian_edm_view()
    sig = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    noise = noise_like(view, 2, 3)
    prefix = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(4))
    w = prefix_weights(6, 1, 2, "linear")
    beta = 0.7
    out = sample_rtc(view, None, prefix, w, sigmas=sig[:2], max_guidance=beta, noise=noise)
    x = noise * 2.0
    d = x / 5.0
    x0_g = d + min(beta * 2.0, 5.0) * (w[None, :, None] * (prefix - d)) / 5.0
    torch.testing.assert_close(out, x0_g + 0.25 * (x - x0_g), rtol=1e-5, atol=1e-6)
    euler = sample_rtc(view, None, prefix, w, sigmas=sig[:2], method="euler", max_guidance=beta, noise=noise)
    torch.testing.assert_close(euler, out, rtol=1e-5, atol=1e-6)  # the same step, written as Euler


# ---------------------------------------------------------------------- tiny policies
@pytest.mark.parametrize("cls,variant", POLICIES)
def test_zero_weights_are_plain_sampling_exactly(cls, variant):
    policy = make_policy(cls, variant)
    view = policy.denoiser_view()
    settings = plain_settings(policy)
    with torch.no_grad():
        cond = view.encode(obs(3))
        noise = noise_like(view, 3, 5)
        plain = sample_chunk(view, cond, noise=noise, **settings)
    prefix = torch.randn(3, *view.action_shape)
    out = sample_rtc(view, cond, prefix, torch.zeros(view.action_shape[0]), noise=noise, **settings)
    assert torch.equal(out, plain)
    gens = [torch.Generator().manual_seed(s) for s in (7, 8, 9)]
    drawn = sample_rtc(view, cond, prefix, torch.zeros(view.action_shape[0]), generator=gens, **settings)
    with torch.no_grad():
        ref = sample_chunk(
            view, cond, generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)], batch=3, **settings
        )
    assert torch.equal(drawn, ref)


@pytest.mark.parametrize("cls,variant", POLICIES)
def test_a_large_beta_keeps_the_frozen_prefix(cls, variant):
    policy = make_policy(cls, variant)
    view = policy.denoiser_view()
    settings = plain_settings(policy)
    h, d = view.action_shape[0], 3
    w = torch.cat([torch.ones(d), torch.zeros(h - d)])
    with torch.no_grad():
        cond = view.encode(obs(4, 1))
        noise = noise_like(view, 4, 6)
        plain = sample_chunk(view, cond, noise=noise, **settings)
        prefix = view.from_action(policy.predict(obs(4, 2), generator=torch.Generator().manual_seed(1)).actions)
    out = sample_rtc(view, cond, prefix, w, max_guidance=1e3, noise=noise, **settings)
    guided_err = (out[:, :d] - prefix[:, :d]).abs().mean()
    plain_err = (plain[:, :d] - prefix[:, :d]).abs().mean()
    assert plain_err > 0.2 and guided_err < 0.1 * plain_err, (float(guided_err), float(plain_err))
    weak = sample_rtc(view, cond, prefix, w, max_guidance=0.5, noise=noise, **settings)  # beta caps the pull
    assert guided_err < (weak[:, :d] - prefix[:, :d]).abs().mean() < plain_err


@pytest.mark.parametrize("cls,variant", POLICIES)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_rtc_works_under_no_grad_and_inference_mode(cls, variant, mode):
    policy = make_policy(cls, variant)
    view = policy.denoiser_view()
    settings = plain_settings(policy)
    w = prefix_weights(view.action_shape[0], 2, 2)
    prefix = torch.rand(2, *view.action_shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise = noise_like(view, 2, 1)
    with torch.no_grad():
        cond = view.encode(obs(2))
    ref = sample_rtc(view, cond, prefix, w, noise=noise, **settings)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        cond_in = view.encode(obs(2))  # an inference tensor under inference_mode
        plain = sample_chunk(view, cond_in, noise=noise, **settings)  # (fills the engine's caches in this mode)
        out = sample_rtc(view, cond_in, prefix, w, noise=noise, **settings)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert not out.requires_grad and not torch.allclose(out, plain, atol=1e-3)  # the guidance acted
    actor = RTC(policy, RTCConfig(delay=2))
    with ctx:
        actor.predict(obs(1), env_ids=[0])
        second = actor.predict(obs(1, 1), env_ids=[0])
    assert bool(second.info["guided"].all()) and torch.isfinite(second.actions).all()


def test_a_view_without_gradients_is_refused():
    policy = make_policy(DiffusionPolicy, "unet")
    view = policy.denoiser_view()

    class Detached:
        def __getattr__(self, name):
            return getattr(view, name)

        def denoise(self, x, sigma, cond):
            return view.denoise(x, sigma, cond).detach()

    with torch.no_grad():
        cond = view.encode(obs(1))
    with pytest.raises(RuntimeError, match="without autograd"):
        sample_rtc(Detached(), cond, torch.zeros(1, *view.action_shape), torch.ones(view.action_shape[0]), steps=2)
    with pytest.raises(ValueError, match="RTC steps with one of"):
        sample_rtc(view, cond, torch.zeros(1, *view.action_shape), torch.ones(8), method="heun")


# ---------------------------------------------------------------------- the actor
@pytest.mark.parametrize("cls,variant", POLICIES)
def test_the_actor_is_plain_sampling_without_a_prefix_to_keep(cls, variant):
    policy = make_policy(cls, variant, engine=None)  # the default engine: RTC switches it to eager
    rtc = RTC(policy, RTCConfig(schedule="zeros"))
    assert rtc.engine_switched and policy.engine_config.backend is Backend.EAGER
    first = rtc.predict(obs(2), env_ids=[3, 4], generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    cold = policy.predict(obs(2), generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert torch.equal(first.actions, cold.actions) and not first.info["guided"].any()
    noise = noise_like(rtc.view, 2, 9)
    second = rtc.predict(obs(2, 1), env_ids=[3, 4], delay=0, options={"noise": noise})  # hard mask, d = 0
    again = policy.predict(obs(2, 1), options={"noise": noise})
    assert not second.info["guided"].any() and second.info["rtc_delay"].tolist() == [0, 0]
    assert torch.equal(second.actions, again.actions)
    # zero delay is plain sampling with the paper's soft mask too (it would still weight the overlap)
    soft = RTC(policy, RTCConfig())
    soft.predict(obs(2), env_ids=[3, 4])
    zero = soft.predict(obs(2, 1), env_ids=[3, 4], delay=0, options={"noise": noise})
    assert torch.equal(zero.actions, again.actions) and not zero.info["guided"].any()
    third = rtc.predict(obs(2, 1), env_ids=[3, 4], delay=2, options={"noise": noise})  # d = 2: a prefix to keep
    assert not torch.equal(third.actions, again.actions)


@pytest.mark.parametrize("cls,variant", POLICIES)
def test_the_actor_guides_toward_the_shifted_previous_chunk(cls, variant):
    policy = make_policy(cls, variant)
    rtc = RTC(policy, RTCConfig(schedule="zeros", max_guidance=1e3))
    to, d, s = policy.config.n_obs_steps, 3, 2
    prev = rtc.predict(obs(3), env_ids=[0, 1, 2], generator=torch.Generator().manual_seed(0)).actions
    noise = noise_like(rtc.view, 3, 4)
    out = rtc.predict(obs(3, 1), env_ids=[0, 1, 2], delay=d, executed=s, options={"noise": noise})
    unguided = policy.predict(obs(3, 1), options={"noise": noise}).actions
    frozen = slice(to - 1, to - 1 + d)  # ticks obs .. obs + d - 1 = previous chunk indices To-1+s ...
    target = prev[:, to - 1 + s : to - 1 + s + d]
    cont = [0, 1]  # (the gripper snaps to its limits)
    guided_err = (out.actions[:, frozen, cont] - target[..., cont]).abs().mean()
    plain_err = (unguided[:, frozen, cont] - target[..., cont]).abs().mean()
    assert guided_err < 0.2 * plain_err, (float(guided_err), float(plain_err))
    assert out.info["rtc_delay"].tolist() == [d] * 3 and out.info["rtc_executed"].tolist() == [s] * 3
    # per-row delays; a delay past the overlap is clamped to it and reported
    span = policy.config.horizon - to + 1
    rows = rtc.predict(obs(3, 2), env_ids=[0, 1, 2], delay=[0, 1, 9], executed=[2, 2, span - 2])
    assert rows.info["rtc_delay"].tolist() == [0, 1, 2]


def test_the_actor_keeps_one_chunk_per_environment_and_resets():
    policy = make_policy(DiffusionPolicy, "unet")
    rtc = RTC(policy, RTCConfig(delay=2))
    assert not rtc.predict(obs(2), env_ids=[5, 6]).info["guided"].any()
    assert rtc.predict(obs(2, 1), env_ids=[6, 5]).info["guided"].all()
    rtc.reset([5])
    assert rtc.predict(obs(2, 2), env_ids=[5, 6]).info["guided"].tolist() == [False, True]
    rtc.reset()
    assert not rtc.predict(obs(1), env_ids=[6]).info["guided"].any()
    prev = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)
    shifted = rtc.prefix(prev, 3)
    torch.testing.assert_close(shifted[:5], prev[3:])
    torch.testing.assert_close(shifted[5:], prev[-1:].expand(3, 3))
    w, d, s = rtc.weights(2, 3)  # H 8, To 2: position 0 is the past, then the mask over 7 positions
    assert (d, s) == (2, 3) and w[0] == 0 and w[1:3].tolist() == [1, 1] and w[5:].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="num_samples"):
        rtc.predict(obs(1), num_samples=2)


def test_the_scheduler_frozen_actions_are_the_actors_prefix():
    """The scheduler's tick convention and the actor's shift agree: what the queue executes while
    inference runs is the prefix RTC guides toward."""
    policy = make_policy(DiffusionPolicy, "unet")
    rtc = RTC(policy, RTCConfig())
    sched = ChunkScheduler(policy.config.timing, SchedulerConfig(strategy="rtc"))
    first = rtc.predict(obs(1), env_ids=[0], generator=torch.Generator().manual_seed(0)).actions[0]
    sched.add_chunk(first.numpy(), obs_tick=10, available_tick=10)
    for t in range(10, 13):
        sched.next_action(t)
    req = sched.request(13, delay=2)
    to = policy.config.n_obs_steps
    prefix = rtc.prefix(first, req.executed)
    np.testing.assert_allclose(req.frozen, prefix[to - 1 : to - 1 + req.delay].numpy(), rtol=0, atol=1e-6)
    out = rtc.predict(obs(1, 1), env_ids=[0], delay=req.delay, executed=req.executed)
    assert out.info["rtc_executed"].tolist() == [3]
    assert sched.add_chunk(out.actions[0].numpy(), obs_tick=13, available_tick=15).takeover_tick == 15


def test_the_inference_option_builds_rtc():
    policy = make_policy(DiffusionPolicy, "unet")
    opts = InferenceOptions(method="rtc", rtc=RTCConfig(max_guidance=10.0), n_action_steps=2)
    actor = opts.build(policy)
    assert isinstance(actor, RTC) and actor.execute_horizon == 2 and actor.config.max_guidance == 10.0
    assert opts.to_dict()["rtc"]["max_guidance"] == 10.0 and opts.to_dict()["method"] == "rtc"
    assert actor.config_dict["method_resolved"] == "ddim" and actor.steps == policy.config.inference.num_inference_steps
    with pytest.raises(ValueError, match="rtc method must be one of"):
        RTCConfig(method="ddpm")
    with pytest.raises(ValueError, match="rtc delay"):
        RTCConfig(delay=-1)
    with pytest.raises(ValueError, match="unknown inference method"):
        InferenceOptions(method="rtcc")
    assert dataclasses.replace(RTCConfig(), schedule="linear").schedule.value == "linear"


def test_the_eval_command_line_builds_rtc_options():
    from robopolicy.cli import build_parser
    from robopolicy.eval.cli import inference_options

    args = build_parser().parse_args(
        [
            "eval",
            "--checkpoint",
            "x",
            "--suite",
            "s",
            "--out",
            "o",
            "--inference",
            "rtc",
            "--rtc-delay",
            "2",
            "--rtc-mode",
            "guided",
        ]
    )
    opts = inference_options(args)
    assert opts.method.value == "rtc" and opts.rtc.delay == 2 and opts.rtc.mode.value == "guided"
    actor = opts.build(make_policy(DiffusionPolicy, "unet"))
    assert isinstance(actor, RTC) and actor.config.delay == 2
    plain = inference_options(build_parser().parse_args(["eval", "--checkpoint", "x", "--suite", "s", "--out", "o"]))
    assert plain.method.value == "native" and plain.rtc.delay == 0
