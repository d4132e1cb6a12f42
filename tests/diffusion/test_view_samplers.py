"""The denoiser view and the samplers: DDIM on the view equals diffusers' DDIM."""

from __future__ import annotations

import math

import pytest
import torch

from robopolicy.diffusion import (
    EDMDenoiserView,
    NoiseScheduleConfig,
    VPDenoiserView,
    karras_sigmas,
    make_ddim,
    repeat_cond,
    sample,
    sample_chunk,
)
from robopolicy.nn import ConditionalUnet1D

H, DA, G = 8, 3, 5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net() -> ConditionalUnet1D:
    torch.manual_seed(0)
    return ConditionalUnet1D(DA, G, down_dims=(16, 32), kernel_size=3, diffusion_step_embed_dim=16).eval()


def make_view(net, prediction_type: str = "epsilon") -> VPDenoiserView:
    sched = NoiseScheduleConfig(prediction_type=prediction_type)
    return VPDenoiserView(net, lambda obs: obs, lambda x: x * 2.0, (H, DA), sched)


def diffusers_ddim(net, cond, noise, n, prediction_type="epsilon") -> torch.Tensor:
    sched = make_ddim(NoiseScheduleConfig(prediction_type=prediction_type))
    sched.set_timesteps(n)
    x = noise
    for t in sched.timesteps:
        x = sched.step(net(x, t, cond), t, x).prev_sample
    return x


@pytest.mark.parametrize(
    "n, prediction_type",
    [(1, "epsilon"), (3, "epsilon"), (10, "epsilon"), (16, "epsilon"), (100, "epsilon"), (10, "sample")],
)
@torch.no_grad()
def test_ddim_on_view_matches_diffusers(net, n, prediction_type):
    gen = torch.Generator().manual_seed(n)
    cond = torch.randn(4, G, generator=gen)
    noise = torch.randn(4, H, DA, generator=gen) * 1.5  # wide enough that x0 clipping is active
    ref = diffusers_ddim(net, cond, noise, n, prediction_type)
    view = make_view(net, prediction_type)
    sigmas = view.sigmas(n)
    x = sample(view, cond, view.noise_to_x(noise, sigmas[0]), sigmas, "ddim", x0_clip=1.0)
    torch.testing.assert_close(x, ref, atol=1e-4, rtol=1e-4)


def test_sigmas_follow_the_ddim_spacing(net):
    view = make_view(net)
    s = view.sigmas(10)
    assert s.shape == (11,) and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
    ac = make_ddim().alphas_cumprod.double()
    torch.testing.assert_close(s[0], ((1 - ac[90]) / ac[90]).sqrt())
    assert view.sigma_to_t(s[:-1]).tolist() == list(range(90, -1, -10))
    # between two training steps the timestep is fractional and monotone
    mid = (view.train_sigmas[40] * view.train_sigmas[41]).sqrt().reshape(1)
    t = float(view.sigma_to_t(mid))
    assert 40 < t < 41
    with pytest.raises(ValueError, match="101"):
        view.sigmas(101)


@torch.no_grad()
def test_view_denoise_inverts_the_forward_process(net):
    """With the true eps, x0_hat recovers x0 from x = x0 + sigma * eps, for any sigma."""
    view = make_view(net)
    x0, eps = torch.rand(2, H, DA) * 2 - 1, torch.randn(2, H, DA)
    sigma = torch.tensor([0.3, 7.0], dtype=torch.float64)
    x = x0 + sigma.float()[:, None, None] * eps
    view.model_fn = lambda x_vp, t, cond: eps  # oracle network
    torch.testing.assert_close(view.denoise(x, sigma, None), x0, atol=1e-5, rtol=1e-5)
    assert view.to_action(x0).equal(x0 * 2.0)


@pytest.mark.parametrize("method", ["euler", "heun", "dpmpp_2m", "ddim", "dpm_solver_1", "euler_ancestral"])
@torch.no_grad()
def test_samplers_are_exact_on_a_point_mass(method):
    """A denoiser that always predicts the same x0 is reached by every sampler."""
    target = torch.linspace(-0.5, 0.5, H * DA).reshape(1, H, DA)

    class Oracle:
        action_shape, sigma_max, sigma_min = (H, DA), 80.0, 0.01

        def denoise(self, x, sigma, cond):
            return target.expand_as(x)

    sigmas = karras_sigmas(6, 0.01, 80.0)
    x = sample(Oracle(), None, torch.randn(3, H, DA) * 80, sigmas, method)
    torch.testing.assert_close(x, target.expand(3, H, DA), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_higher_order_samplers_converge_on_a_gaussian():
    """Data N(m, s^2): the exact x0_hat is known; Heun / DPM++ are far closer than Euler."""
    m, s0 = 0.3, 0.5

    class Gaussian:
        action_shape, sigma_max, sigma_min = (1, 1), 20.0, 0.002

        def denoise(self, x, sigma, cond):
            return m + (x - m) * s0**2 / (s0**2 + sigma**2)

    noise = torch.randn(64, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = m + noise * s0  # the probability-flow ODE maps m + z * sqrt(s0^2 + smax^2) to m + z * s0
    x_init = m + noise * (s0**2 + 20.0**2) ** 0.5
    errs = {}
    for method in ["euler", "heun", "dpmpp_2m"]:
        out = sample(Gaussian(), None, x_init, karras_sigmas(20, 0.002, 20.0), method)
        errs[method] = float((out - exact).abs().max())
    assert errs["heun"] < errs["euler"] / 3 and errs["dpmpp_2m"] < errs["euler"] / 3, errs


def test_sample_rejects_bad_inputs():
    with pytest.raises(ValueError, match="nope"):
        sample(None, None, torch.zeros(1, H, DA), torch.tensor([1.0, 0.0]), "nope")
    with pytest.raises(ValueError, match="descending"):
        sample(None, None, torch.zeros(1, H, DA), torch.tensor([1.0, 2.0, 0.0]), "euler")


def test_repeat_cond_orders_samples_within_each_element():
    c = torch.arange(2)[:, None].float()
    assert repeat_cond(c, 3)[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    d = repeat_cond({"a": c, "b": (c,)}, 2)
    assert d["a"].shape == (4, 1) and d["b"][0].shape == (4, 1)


# ---------------------------------------------------------------------- view v2: DDPM, v, partial schedules
def diffusers_ddpm(net, cond, noise, n, seeds, prediction_type="epsilon") -> torch.Tensor:
    from robopolicy.diffusion import make_ddpm

    sched = make_ddpm(NoiseScheduleConfig(prediction_type=prediction_type))
    sched.set_timesteps(n)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = noise
    for t in sched.timesteps:
        x = sched.step(net(x, t, cond), t, x, generator=gens).prev_sample
    return x


@pytest.mark.parametrize(
    "n, prediction_type", [(100, "epsilon"), (10, "epsilon"), (100, "v_prediction"), (7, "sample")]
)
@torch.no_grad()
def test_ddpm_on_view_matches_diffusers_for_the_same_noise(net, n, prediction_type):
    gen = torch.Generator().manual_seed(100 + n)
    cond = torch.randn(3, G, generator=gen)
    noise = torch.randn(3, H, DA, generator=gen)
    seeds = [11, 12, 13]
    ref = diffusers_ddpm(net, cond, noise, n, seeds, prediction_type)
    view = make_view(net, prediction_type)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = sample_chunk(view, cond, noise=noise, method="ddpm", steps=n, generator=gens, x0_clip=1.0)
    torch.testing.assert_close(x, ref, atol=2e-4, rtol=2e-4)
    # the noise matters: other seeds give another chunk
    other = sample_chunk(view, cond, noise=noise, method="ddpm", steps=n, generator=torch.Generator(), x0_clip=1.0)
    assert not torch.allclose(other, ref, atol=1e-3)


@pytest.mark.parametrize("n", [1, 4, 10])
@torch.no_grad()
def test_ddim_with_v_prediction_matches_diffusers(net, n):
    gen = torch.Generator().manual_seed(n)
    cond, noise = torch.randn(2, G, generator=gen), torch.randn(2, H, DA, generator=gen)
    ref = diffusers_ddim(net, cond, noise, n, "v_prediction")
    x = sample_chunk(make_view(net, "v_prediction"), cond, noise=noise, method="ddim", steps=n, x0_clip=1.0)
    torch.testing.assert_close(x, ref, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_v_prediction_denoise_inverts_the_forward_process(net):
    view = make_view(net, "v_prediction")
    x0, eps = torch.rand(2, H, DA) * 2 - 1, torch.randn(2, H, DA)
    sigma = torch.tensor([0.2, 5.0], dtype=torch.float64)
    a = 1 / (1 + sigma**2)
    v = (a.sqrt().float()[:, None, None] * eps) - ((1 - a).sqrt().float()[:, None, None] * x0)
    view.model_fn = lambda x_vp, t, cond: v  # oracle v
    x = x0 + sigma.float()[:, None, None] * eps
    torch.testing.assert_close(view.denoise(x, sigma, None), x0, atol=1e-5, rtol=1e-5)


def test_partial_schedules_and_the_top_of_the_cold_schedule(net):
    view = make_view(net)
    for n in (1, 3, 10, 16, 100):
        full = view.sigmas(n)
        torch.testing.assert_close(view.sigmas(n, float(full[0])), full, atol=0, rtol=1e-12)
    s = view.sigmas(3, float(view.train_sigmas[20]))
    assert view.sigma_to_t(s[:-1]).tolist() == [20, 10, 0] and s[-1] == 0
    frac = view.sigmas(2, float((view.train_sigmas[20] * view.train_sigmas[21]).sqrt()))
    assert 20 < float(view.sigma_to_t(frac[:1])) < 21


@torch.no_grad()
def test_warm_start_from_the_top_equals_the_cold_start(net):
    view = make_view(net)
    cond, noise = torch.randn(2, G), torch.randn(2, H, DA)
    for method in ("ddim", "euler", "dpmpp_2m"):
        cold = sample_chunk(view, cond, noise=noise, method=method, steps=10, x0_clip=1.0)
        top = float(view.sigmas(10)[0])
        warm = sample_chunk(view, cond, x_init=view.noise_to_x(noise, top), sigma_start=top, method=method, steps=10)
        warm_clip = sample_chunk(
            view, cond, x_init=view.noise_to_x(noise, top), sigma_start=top, method=method, steps=10, x0_clip=1.0
        )
        assert torch.equal(warm_clip, cold), method
        assert not torch.equal(warm, cold)  # clipping is active with this net


def test_sigmas_outside_the_trained_range_are_refused_or_clamped_explicitly(net):
    view = make_view(net)
    x = torch.zeros(1, H, DA)
    with pytest.raises(ValueError, match="outside the trained range"):
        view.denoise(x, view.sigma_max * 2, torch.zeros(1, G))
    with pytest.raises(ValueError, match="outside the trained range"):
        view.sigmas(3, view.sigma_min / 10)
    clamped = VPDenoiserView(net, lambda o: o, lambda x: x, (H, DA), out_of_range="clamp")
    with torch.no_grad():
        a = clamped.denoise(x, clamped.sigma_max * 2, torch.zeros(1, G))
        b = clamped.denoise(x, clamped.sigma_max, torch.zeros(1, G))
    assert torch.equal(a, b)


@torch.no_grad()
def test_view_takes_any_rank_and_maps_actions_affinely():
    """x of shape (B, ...) of any rank; from_action / to_action are inverse and never snap."""
    calls = []

    def model_fn(x_vp, t, cond):
        calls.append(tuple(x_vp.shape))
        return torch.zeros_like(x_vp)

    view = VPDenoiserView(
        model_fn,
        lambda o: o,
        lambda x: x * 2.0 + 1.0,
        (4, 5, 6),
        from_action_fn=lambda a: (a - 1.0) / 2.0,
        snap_fn=lambda a: a.sign(),
    )
    x = torch.randn(2, 4, 5, 6)
    out = view.denoise(x, torch.tensor([0.5, 2.0]), None)
    assert out.shape == x.shape and calls == [(2, 4, 5, 6)]
    torch.testing.assert_close(out, x)  # eps = 0: x0_hat = x
    chunk = sample_chunk(view, None, batch=3, steps=4, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, 4, 5, 6)
    a = torch.randn(2, 4, 5, 6)
    torch.testing.assert_close(view.to_action(view.from_action(a)), a)
    assert torch.equal(view.to_action(torch.full((1, 4, 5, 6), 0.1)), torch.full((1, 4, 5, 6), 1.2))
    assert torch.equal(view.to_action(torch.full((1, 4, 5, 6), -0.9), snap=True), torch.full((1, 4, 5, 6), -1.0))


def test_a_batch_equals_single_calls_with_per_row_generators(net):
    view = make_view(net)
    cond = torch.randn(3, G)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6, 7)]  # noqa: E731
    with torch.no_grad():
        batch = sample_chunk(view, cond, batch=3, method="ddpm", steps=10, generator=gens(), x0_clip=1.0)
        rows = [
            sample_chunk(view, cond[i : i + 1], batch=1, method="ddpm", steps=10, generator=[g], x0_clip=1.0)
            for i, g in enumerate(gens())
        ]
    torch.testing.assert_close(batch, torch.cat(rows), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- the native EDM view (BESO)
class _F(torch.nn.Module):
    """A small preconditioned network F(x_in, c_noise, cond) for the EDM view."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(DA + 1 + G, DA)

    def forward(self, x, c_noise, cond):
        c = torch.as_tensor(c_noise, dtype=x.dtype).reshape(-1, 1, 1).expand(x.shape[0], x.shape[1], 1)
        return self.lin(torch.cat([x, c, cond[:, None].expand(-1, x.shape[1], -1)], -1))


def make_edm(schedule="exponential", **kw) -> EDMDenoiserView:
    return EDMDenoiserView(
        _F().eval(), lambda o: o, lambda x: x * 2.0, (H, DA), sigma_min=0.005, sigma_max=1.0, schedule=schedule, **kw
    )


def test_edm_schedules_are_besos():
    """BESO's 3-step exponential schedule on the kitchen range is [1, 0.0707, 0.005, 0]."""
    torch.testing.assert_close(
        make_edm().sigmas(3), torch.tensor([1.0, 0.005**0.5, 0.005, 0.0], dtype=torch.float64), rtol=1e-9, atol=0
    )
    lin = make_edm("linear").sigmas(3)
    torch.testing.assert_close(lin, torch.tensor([1.0, 0.5025, 0.005, 0.0], dtype=torch.float64))
    k = make_edm("karras").sigmas(5)
    torch.testing.assert_close(k, karras_sigmas(5, 0.005, 1.0), rtol=1e-9, atol=1e-12)
    for view in (make_edm(), make_edm("linear"), make_edm("karras")):
        for n in (1, 3, 10):
            torch.testing.assert_close(view.sigmas(n, 1.0), view.sigmas(n), rtol=1e-12, atol=0)
        warm = view.sigmas(3, 0.2)
        assert warm[0] == 0.2 and warm[-1] == 0 and bool((warm[:-1] >= 0.005 - 1e-12).all())


@torch.no_grad()
def test_edm_denoise_is_the_preconditioned_network():
    view, cond = make_edm(), torch.randn(2, G)
    x = torch.randn(2, H, DA)
    for sigma in (0.005, 0.3, 1.0):
        sd = 0.5
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2) ** 0.5
        c_in = 1 / (sigma**2 + sd**2) ** 0.5
        ref = c_skip * x + c_out * view.model_fn(x * c_in, torch.tensor(math.log(sigma) / 4), cond)
        torch.testing.assert_close(view.denoise(x, sigma, cond), ref, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(view.denoise(x, torch.full((2,), sigma), cond), ref, atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_edm_view_samplers_warm_starts_and_per_row_generators():
    view, cond = make_edm(), torch.randn(3, G)
    noise = torch.randn(3, H, DA, generator=torch.Generator().manual_seed(0))
    ddim = sample_chunk(view, cond, noise=noise, method="ddim", steps=3)
    assert torch.equal(sample_chunk(view, cond, noise=noise, method="dpm_solver_1", steps=3), ddim)
    # BESO's DPM-Solver-1 by hand: x' = (s'/s) x + (1 - s'/s) D(x; s), the last step returns D
    s = view.sigmas(3).tolist()
    x = noise * s[0]
    for a, b in zip(s[:-1], s[1:]):
        x = (b / a) * x + (1 - b / a) * view.denoise(x, a, cond)
    torch.testing.assert_close(ddim, x, atol=1e-6, rtol=1e-6)
    for method in ("ddim", "euler", "heun", "dpmpp_2m"):  # warm from the top == cold
        cold = sample_chunk(view, cond, noise=noise, method=method, steps=4)
        warm = sample_chunk(view, cond, x_init=view.noise_to_x(noise, 1.0), sigma_start=1.0, method=method, steps=4)
        assert torch.equal(warm, cold), method
    gens = lambda: [torch.Generator().manual_seed(k) for k in (5, 6, 7)]  # noqa: E731
    batch = sample_chunk(view, cond, batch=3, method="euler_ancestral", steps=4, generator=gens())
    rows = [
        sample_chunk(view, cond[i : i + 1], batch=1, method="euler_ancestral", steps=4, generator=[g])
        for i, g in enumerate(gens())
    ]
    torch.testing.assert_close(batch, torch.cat(rows), atol=1e-5, rtol=1e-5)
    assert not torch.equal(batch, sample_chunk(view, cond, batch=3, method="ddim", steps=4, generator=gens()))


def test_edm_view_refuses_or_clamps_out_of_range_sigmas_and_bad_settings():
    view, x = make_edm(), torch.zeros(1, H, DA)
    with pytest.raises(ValueError, match="outside the trained range"):
        view.denoise(x, 2.0, torch.zeros(1, G))
    with pytest.raises(ValueError, match="outside the trained range"):
        view.sigmas(3, 0.001)
    clamped = make_edm(out_of_range="clamp")
    with torch.no_grad():
        assert torch.equal(clamped.denoise(x, 2.0, torch.zeros(1, G)), clamped.denoise(x, 1.0, torch.zeros(1, G)))
    with pytest.raises(ValueError, match="schedule"):
        make_edm("cosine")
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDMDenoiserView(_F(), lambda o: o, lambda x: x, (H, DA), sigma_min=1.0, sigma_max=0.5)
    assert not hasattr(view, "t_to_sigma")  # no timestep grid: warm starts name a sigma


@torch.no_grad()
def test_edm_view_takes_any_rank():
    view = EDMDenoiserView(lambda x, c, cond: torch.zeros_like(x), lambda o: o, lambda x: x, (4, 5, 6))
    x = torch.randn(2, 4, 5, 6)
    out = view.denoise(x, torch.tensor([0.5, 1.0]), None)
    torch.testing.assert_close(out, x * torch.tensor([0.5, 0.2]).reshape(2, 1, 1, 1))  # c_skip x
    assert sample_chunk(view, None, batch=3, steps=3, generator=torch.Generator().manual_seed(0)).shape == (3, 4, 5, 6)
