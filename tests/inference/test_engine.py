"""Inference engines: every backend computes the training network's function.

The GEMM U-Net (FastUnet1D) and its FiLM-exposed core equal ConditionalUnet1D on random weights;
through a Diffusion Policy, eager / gemm / onnx give the same actions for the same generators;
engines rebuild after in-place weight changes and never touch training; config errors are clear;
the view's scalar-sigma path equals its tensor path bit for bit; DDPM step noise drawn ahead
equals the step-by-step draws; the CLI's ``bench inference`` and ``eval --engine``; CUDA graphs
(on a GPU only) and the AOTInductor backend (slow: it compiles).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from robopolicy.diffusion import NoiseScheduleConfig, VPDenoiserView, sample_chunk
from robopolicy.diffusion.samplers import chunk_sigmas, ddpm_step_noise
from robopolicy.envs.availability import sim_available
from robopolicy.inference.bench import fake_obs, preset_policy
from robopolicy.inference.engine import Backend, EngineConfig, NetworkEngine, backends_for, cpu_threads
from robopolicy.inference.engines import GemmUnetEngine, OnnxUnetEngine
from robopolicy.nn.fast_unet import FastUnet1D, UnetFilmCore
from robopolicy.nn.unet1d import ConditionalUnet1D
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.policies.diffusion.model import FlatCondUnet1D
from robopolicy.types import ActionSpec, FieldSpec, ObservationSpec
from tests.cli_subprocess import run_cli

OBS = ObservationSpec((FieldSpec("state", (3,)),))
ACT = ActionSpec(("x", "y"), (-1.0, -2.0), (1.0, 2.0))  # continuous: no gripper snap to hide differences
DA, G = 3, 10
CUDA = torch.cuda.is_available()

pytestmark = pytest.mark.usefixtures("one_thread")


def randomize(module: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Every parameter N(0, std): GroupNorm affines and biases too, so none is the identity/zero
    that would hide a dropped term (0.2 makes the output depend clearly on t and the condition)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def unet(down_dims=(16, 32), kernel_size=3, cls=ConditionalUnet1D, cond_dim=G, n_groups=8) -> ConditionalUnet1D:
    return randomize(cls(DA, cond_dim, down_dims, kernel_size, n_groups, diffusion_step_embed_dim=16)).eval()


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def tiny_policy(backbone: str = "unet", seed: int = 0) -> DiffusionPolicy:
    torch.manual_seed(seed)
    policy = DiffusionPolicy(DiffusionPolicy.tiny_configs(OBS, ACT)[backbone])
    if backbone == "unet":
        randomize(policy.model, std=0.1, seed=seed)
    rng = np.random.default_rng(seed)
    policy.fit_normalizer(
        {"state": rng.normal(size=(64, 3)), "action": np.stack([rng.uniform(-1, 1, 64), rng.uniform(-2, 2, 64)], 1)}
    )
    return policy.eval()


def obs(b: int, seed: int = 0) -> dict:
    return {"state": np.random.default_rng(seed).normal(size=(b, 2, 3)).astype(np.float32)}


def predict(policy, o, sampler: str, steps: int, num_samples: int = 2, seed: int = 1) -> torch.Tensor:
    """Actions for one generator per row, seeded ``seed, seed + 1, ...`` (the same noise for every engine)."""
    gens = [torch.Generator().manual_seed(seed + b) for b in range(len(next(iter(o.values()))))]
    options = {"sampler": sampler, "num_inference_steps": steps}
    return policy.predict(o, generator=gens, num_samples=num_samples, options=options).actions


# ---------------------------------------------------------------------- FastUnet1D
@pytest.mark.parametrize(
    "down_dims, kernel_size, horizon, batch, n_groups",
    [
        ((16, 32), 3, 8, 1, 8),
        ((16, 32), 5, 16, 5, 8),
        ((16, 32, 64), 3, 8, 5, 8),
        ((16, 32, 64), 5, 16, 1, 8),
        ((16,), 3, 4, 2, 8),  # one level: no down- or upsampling
        ((8, 16), 7, 8, 2, 4),
    ],
)
def test_fast_unet_equals_the_unet(down_dims, kernel_size, horizon, batch, n_groups):
    net = unet(down_dims, kernel_size, n_groups=n_groups)
    fast = FastUnet1D(net)
    g = torch.Generator().manual_seed(1)
    x, cond = torch.randn(batch, horizon, DA, generator=g), torch.randn(batch, G, generator=g)
    timesteps = [
        7.0,  # a float (the view's scalar path)
        12.25,  # fractional
        torch.tensor([7.0]),  # a (1,) tensor
        torch.tensor([31]),  # an integer tensor
        torch.arange(batch, dtype=torch.float32) * 9.5 + 3.0,  # (B,) of different values
    ]
    with torch.no_grad():
        for t in timesteps:
            ref = net(x, t, cond)
            close(fast(x, t, cond), ref)
        # the comparison is sensitive: the output moves clearly with t and with the condition
        assert (net(x, 3.0, cond) - net(x, 60.0, cond)).abs().max() > 1e-2
        assert (net(x, 3.0, cond) - net(x, 3.0, 0.5 * cond)).abs().max() > 1e-2


def test_fast_unet_takes_per_step_conditions_like_the_policy_backbone():
    net = unet((16, 32, 64), 5, cls=FlatCondUnet1D, cond_dim=2 * 5)  # To = 2 steps of D = 5 features
    fast = FastUnet1D(net)
    g = torch.Generator().manual_seed(2)
    x, cond = torch.randn(3, 16, DA, generator=g), torch.randn(3, 2, 5, generator=g)
    t = torch.tensor([0.0, 40.5, 99.0])
    with torch.no_grad():
        close(fast(x, t, cond), net(x, t, cond))
        close(fast(x, 17.0, cond), net(x, 17.0, cond))
        prepared = fast.prepare(cond)  # the per-chunk FiLM, reused across steps
        close(fast.core(x, fast.step_film(17.0, 3, x.device) + prepared), net(x, 17.0, cond))


def test_the_step_table_is_cached_per_step_and_keyed_by_it():
    net = unet()
    fast = FastUnet1D(net)
    g = torch.Generator().manual_seed(3)
    x, cond = torch.randn(2, 8, DA, generator=g), torch.randn(2, G, generator=g)
    with torch.no_grad():
        first = fast(x, 5.0, cond)
        assert len(fast._steps) == 1
        assert torch.equal(fast(x, 5.0, cond), first)  # from the cache: bit for bit
        assert torch.equal(fast(x, torch.tensor([5.0]), cond), first)  # a (1,) tensor shares the row
        assert len(fast._steps) == 1
        other = fast(x, 9.0, cond)  # a new step: a new row, not the cached one
        assert len(fast._steps) == 2
        close(other, net(x, 9.0, cond))
        assert (other - first).abs().max() > 1e-3
        close(fast(x, 5.0, cond), net(x, 5.0, cond))


def test_unet_film_core_equals_the_network():
    """The ONNX backend's graph: the source modules with every block's FiLM as an input."""
    net = unet((16, 32, 64), 5)
    fast, core = FastUnet1D(net), UnetFilmCore(net).eval()
    g = torch.Generator().manual_seed(4)
    x, cond = torch.randn(4, 16, DA, generator=g), torch.randn(4, G, generator=g)
    t_rows = torch.tensor([1.0, 20.0, 50.5, 99.0])
    with torch.no_grad():
        shared = fast.step_film(33.0, 4, x.device) + fast.prepare(cond)  # (B, F) from a (1, F) step row
        per_row = fast.step_film(t_rows, 4, x.device) + fast.prepare(cond)
        close(core(x, shared), net(x, 33.0, cond))
        close(core(x, per_row), net(x, t_rows, cond))
        close(fast.core(x, per_row), net(x, t_rows, cond))


# ---------------------------------------------------------------------- through a policy
@pytest.fixture(scope="module")
def small_preset() -> DiffusionPolicy:
    """configs/policies/diffusion_unet_lowdim_small.yaml with random weights, as bench builds it."""
    return preset_policy("diffusion_unet_lowdim_small")


@pytest.mark.parametrize("backend", ["gemm", "onnx"])
@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ddpm", 100)])
def test_engines_give_the_actions_of_eager_tiny(backend, sampler, steps):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    policy = tiny_policy()
    o = obs(3)
    ref = predict(policy.set_engine("eager"), o, sampler, steps)
    out = predict(policy.set_engine(backend), o, sampler, steps)
    assert type(policy.network_engine(policy.model)) is {"gemm": GemmUnetEngine, "onnx": OnnxUnetEngine}[backend]
    assert out.shape == (3, 2, 8, 2)
    close(out, ref, atol=1e-4)
    # the rows differ (per-row generators), so equal actions are not a constant
    assert (out[0, 0] - out[1, 0]).abs().max() > 1e-2 and (out[0, 0] - out[0, 1]).abs().max() > 1e-2
    # the same engine at another batch size (a new ONNX session, the same gemm tables)
    single = predict(policy, obs(1, 4), sampler, steps, num_samples=1)
    close(single, predict(policy.set_engine("eager"), obs(1, 4), sampler, steps, num_samples=1), atol=1e-4)


@pytest.mark.parametrize("backend", ["gemm", "onnx"])
@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ddpm", 20)])
def test_engines_give_the_actions_of_eager_small_preset(small_preset, backend, sampler, steps):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    policy = small_preset
    o = fake_obs(policy, 3)
    ref = predict(policy.set_engine("eager"), o, sampler, steps)
    out = predict(policy.set_engine(backend), o, sampler, steps)
    policy.set_engine(None)
    close(out, ref, atol=1e-4)


def test_auto_on_cpu_runs_the_onnx_engine():
    pytest.importorskip("onnxruntime")
    policy = tiny_policy()
    assert policy.engine_config.backend is Backend.AUTO  # the default
    for spec in (None, "auto"):
        if spec is not None:
            policy.set_engine(spec)
        predict(policy, obs(1), "ddim", 4, num_samples=1, seed=0)
        engine = policy.network_engine(policy.model)
        assert type(engine) is OnnxUnetEngine and not engine.fallback
        assert len(engine.fast._steps) == 4  # predict ran through it: one step-table row per DDIM step
        assert len(engine.sessions) == 1
    assert backends_for(policy.model) == ["eager", "gemm", "compiled", "onnx"]


def test_the_transformer_runs_onnx_under_auto_and_refuses_unet_backends():
    pytest.importorskip("onnxruntime")
    from robopolicy.inference.engines import OnnxNetworkEngine

    policy = tiny_policy("transformer")
    randomize(policy.model, std=0.1, seed=3)
    assert backends_for(policy.model) == ["eager", "onnx"]
    o = obs(2)
    ref = predict(policy.set_engine("eager"), o, "ddim", 4)
    out = predict(policy.set_engine("auto"), o, "ddim", 4)
    engine = policy.network_engine(policy.model)
    assert type(engine) is OnnxNetworkEngine and not engine.fallback and len(engine.sessions) == 1
    close(out, ref, atol=1e-4)
    assert (out - predict(policy, o, "ddim", 4, seed=7)).abs().max() > 1e-3  # the noise matters: not a constant
    for backend in ("gemm", "compiled"):
        policy.set_engine(backend)
        with pytest.raises(ValueError, match=f"TransformerForDiffusion has no '{backend}' engine"):
            predict(policy, o, "ddim", 4)


# ---------------------------------------------------------------------- staleness, training
def _sgd_step(policy: DiffusionPolicy) -> None:
    policy.train()
    opt = torch.optim.SGD(policy.model.parameters(), lr=0.5)
    rng = np.random.default_rng(5)
    batch = {"obs": obs(4, 5), "action": rng.uniform(-1, 1, (4, 8, 2))}
    loss, _ = policy.compute_loss(batch)
    loss.backward()
    opt.step()
    policy.eval()


def _no_grad_add(policy: DiffusionPolicy) -> None:
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def _load_other_weights(policy: DiffusionPolicy) -> None:
    policy.load_state_dict(tiny_policy(seed=7).state_dict())


def _replace_parameters(policy: DiffusionPolicy) -> None:
    """New Parameter objects in the modules' slots (the old ones untouched)."""
    for module in policy.model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                setattr(module, name, torch.nn.Parameter(p.detach() + 0.05 * torch.randn_like(p)))


@pytest.mark.parametrize("backend", ["gemm", "onnx"])
@pytest.mark.parametrize(
    "change", [_sgd_step, _no_grad_add, _load_other_weights, _replace_parameters], ids=lambda f: f.__name__
)
def test_the_engine_rebuilds_when_weights_change_in_place(backend, change):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    policy = tiny_policy().set_engine(backend)
    o = obs(2)
    before = predict(policy, o, "ddim", 4)
    built = policy.network_engine(policy.model)
    change(policy)
    after = predict(policy, o, "ddim", 4)
    assert policy.network_engine(policy.model) is not built
    ref = predict(policy.set_engine("eager"), o, "ddim", 4)  # the new weights, as trained
    close(after, ref, atol=1e-4)
    assert (after - before).abs().max() > 1e-3


def test_the_engine_rebuilds_when_weights_are_reassigned_through_data():
    # p.data = t (vector_to_parameters does this) bumps no version counter, but moves the storage
    policy = tiny_policy().set_engine("gemm")
    o = obs(2)
    predict(policy, o, "ddim", 4)
    for p in policy.model.parameters():
        p.data = p.data + 0.05 * torch.randn_like(p)
    after = predict(policy, o, "ddim", 4)
    ref = predict(policy.set_engine("eager"), o, "ddim", 4)
    close(after, ref, atol=1e-4)


def _grads(policy: DiffusionPolicy) -> dict[str, torch.Tensor | None]:
    policy.train()
    policy.zero_grad(set_to_none=True)
    torch.manual_seed(11)  # compute_loss draws its noise and timesteps from the global generator
    rng = np.random.default_rng(11)
    loss, _ = policy.compute_loss({"obs": obs(4, 11), "action": rng.uniform(-1, 1, (4, 8, 2))})
    loss.backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in policy.named_parameters()}


def test_training_never_runs_the_engine():
    plain = _grads(tiny_policy())
    policy = tiny_policy().set_engine("gemm")
    grads = _grads(policy)
    assert plain.keys() == grads.keys() and all(g is not None for g in grads.values())
    for name in plain:
        assert torch.equal(grads[name], plain[name]), name
    # in train mode the policy's engine is the network as is, whatever the config
    assert policy.training
    engine = policy.network_engine(policy.model)
    assert type(engine) is NetworkEngine and engine.network is policy.model
    policy.eval()
    assert type(policy.network_engine(policy.model)) in (GemmUnetEngine, OnnxUnetEngine)


def test_predicting_with_gemm_leaves_the_network_trainable():
    plain = _grads(tiny_policy())
    policy = tiny_policy().set_engine("gemm")
    predict(policy, obs(1), "ddim", 2, num_samples=1, seed=0)  # builds the gemm engine
    assert all(p.requires_grad for p in policy.parameters())
    grads = _grads(policy)
    for name in plain:
        assert grads[name] is not None and torch.equal(grads[name], plain[name]), name


# ---------------------------------------------------------------------- config
def test_engine_config_parse():
    assert EngineConfig.parse(None) == EngineConfig()
    assert EngineConfig.parse("gemm") == EngineConfig(backend=Backend.GEMM)
    cfg = EngineConfig(backend="onnx", threads=1)
    assert EngineConfig.parse(cfg) is cfg
    parsed = EngineConfig.parse({"backend": "eager", "threads": 2, "dtype": None})  # None: the default
    assert parsed == EngineConfig(backend=Backend.EAGER, threads=2, dtype="float32")
    assert isinstance(parsed.backend, Backend)
    with pytest.raises(TypeError, match="got int"):
        EngineConfig.parse(3)


def test_engine_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"unknown engine backend 'bogus'; choose from \['auto', 'eager'"):
        EngineConfig.parse("bogus")
    with pytest.raises(ValueError, match=r"unknown engine settings \['backnd'\] \(known: \['backend'"):
        EngineConfig.parse({"backnd": "gemm"})
    with pytest.raises(ValueError, match="engine dtype must be one of .*got 'float64'"):
        EngineConfig(dtype="float64")
    with pytest.raises(ValueError, match="engine threads must be >= 1, got 0"):
        EngineConfig(threads=0)


@pytest.mark.skipif(CUDA, reason="checks the refusals on a machine without CUDA")
def test_cuda_only_settings_are_refused_on_a_cpu():
    policy = tiny_policy().set_engine("gemm")
    with pytest.raises(ValueError, match="engine dtype bfloat16 runs on CUDA only"):
        policy.set_engine({"dtype": "bfloat16"})
    with pytest.raises(ValueError, match="cuda_graph needs a CUDA device"):
        policy.set_engine({"cuda_graph": True})
    with pytest.raises(RuntimeError, match="asks for CUDA, but torch sees no GPU"):
        policy.set_engine({"device": "cuda"})
    with pytest.raises(ValueError, match="unknown engine backend 'bogus'"):
        policy.set_engine("bogus")
    assert policy.engine_config == EngineConfig(backend=Backend.GEMM)  # a refused setting changes nothing
    # "auto" falls back to the CPU and drops what only CUDA can do
    policy.set_engine({"device": "auto", "dtype": "bfloat16", "cuda_graph": True, "backend": "gemm"})
    assert policy.device.type == "cpu"
    assert policy.engine_config.dtype == "float32" and not policy.engine_config.cuda_graph
    assert policy.engine_config.backend is Backend.GEMM
    out = predict(policy, obs(1), "ddim", 2, num_samples=1, seed=0)
    assert out.dtype == torch.float32 and type(policy.network_engine(policy.model)) is GemmUnetEngine


# ---------------------------------------------------------------------- the view's scalar path
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_a_float_sigma_denoises_exactly_as_a_tensor_sigma(prediction_type):
    net = unet()
    view = VPDenoiserView(net, lambda o: o, lambda x: x, (8, DA), NoiseScheduleConfig(prediction_type=prediction_type))
    g = torch.Generator().manual_seed(6)
    x, cond = torch.randn(3, 8, DA, generator=g), torch.randn(3, G, generator=g)
    fractional = float(view.sigmas(7, sigma_start=float(view.sigmas(10)[1]))[1])  # t = 66.67: between two steps
    assert float(view.sigma_to_t(torch.tensor([fractional]))) % 1 > 0.1
    sigmas = [float(s) for s in view.sigmas(10)[:-1]] + [fractional, view.sigma_min, view.sigma_max]
    with torch.no_grad():
        for s in sigmas:
            by_tensor = view.denoise(x, torch.tensor([s] * 3, dtype=torch.float64), cond)
            assert torch.equal(view.denoise(x, s, cond), by_tensor), s
            assert torch.equal(view.denoise(x, s, cond), by_tensor), s  # again, from the scalar cache
        with pytest.raises(ValueError, match="outside the trained range"):
            view.denoise(x, 2.0 * view.sigma_max, cond)
        with pytest.raises(ValueError, match="outside the trained range"):
            view.denoise(x, 0.0, cond)
    clamped = VPDenoiserView(net, lambda o: o, lambda x: x, (8, DA), out_of_range="clamp")
    with torch.no_grad():
        assert torch.equal(clamped.denoise(x, 2.0 * view.sigma_max, cond), clamped.denoise(x, view.sigma_max, cond))


# ---------------------------------------------------------------------- DDPM step noise drawn ahead
@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("warm", [False, True])
def test_ddpm_step_noise_drawn_ahead_equals_the_step_by_step_draws(per_row, warm):
    net = unet()
    view = VPDenoiserView(net, lambda o: o, lambda x: x, (8, DA))
    g = torch.Generator().manual_seed(8)
    cond, noise = torch.randn(3, G, generator=g), torch.randn(3, 8, DA, generator=g)
    steps, start = 6, float(view.sigmas(100)[60]) if warm else None

    def gens():
        return [torch.Generator().manual_seed(s) for s in (1, 2, 3)] if per_row else torch.Generator().manual_seed(1)

    kw = dict(method="ddpm", steps=steps, x0_clip=1.0)
    if warm:  # from a chunk at a middle level (RTI's warm start)
        kw.update(x_init=noise, sigma_start=start)
    else:
        kw.update(noise=noise)
    with torch.no_grad():
        ref_gens = gens()
        ref = sample_chunk(view, cond, generator=ref_gens, **kw)
        ahead_gens = gens()
        sigmas = chunk_sigmas(view, steps, start, warm=warm)
        z = ddpm_step_noise(sigmas, (3, 8, DA), ahead_gens, "cpu")
        assert z.shape == (steps - 1, 3, 8, DA)  # no noise on the last step, to sigma 0
        out = sample_chunk(view, cond, step_noise=z, **kw)
    assert torch.equal(out, ref)
    # the generators were advanced by the same amount: their next draws agree
    for a, b in zip(ref_gens if per_row else [ref_gens], ahead_gens if per_row else [ahead_gens]):
        assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))


# ---------------------------------------------------------------------- CUDA graphs
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ddpm", 10)])
def test_a_graphed_chunk_equals_the_ungraphed_one(sampler, steps):
    policy = tiny_policy().set_engine({"device": "cuda", "backend": "eager"})
    o1, o2 = obs(3, 1), obs(3, 2)
    ref1, ref2 = predict(policy, o1, sampler, steps), predict(policy, o2, sampler, steps)
    policy.set_engine({"device": "cuda", "backend": "eager", "cuda_graph": True})
    out1 = predict(policy, o1, sampler, steps)  # captured
    out2 = predict(policy, o2, sampler, steps)  # replayed with new inputs
    assert len(policy.__dict__["_graphs"].graphs) == 1
    close(out1, ref1, atol=1e-5)
    close(out2, ref2, atol=1e-5)
    assert (out1 - out2).abs().max() > 1e-3


# ---------------------------------------------------------------------- threads
def test_cpu_threads_restores_the_previous_count_also_after_an_error():
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    with cpu_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(KeyError), cpu_threads(other):
        assert torch.get_num_threads() == other
        raise KeyError("boom")
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before


def test_predict_runs_with_the_engine_threads(monkeypatch):
    policy = tiny_policy()
    before = torch.get_num_threads()
    other = 2 if before == 1 else 1
    seen = []
    inner = policy._predict

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return inner(*args, **kwargs)

    monkeypatch.setattr(policy, "_predict", spy)
    policy.set_engine({"backend": "gemm", "threads": other})
    predict(policy, obs(1), "ddim", 2, num_samples=1, seed=0)
    assert seen == [other] and torch.get_num_threads() == before


# ---------------------------------------------------------------------- command line
def test_bench_inference_cli(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--preset", "diffusion_unet_lowdim_small", "--batch", "1", "--samplers", "ddim:2"]
    r = run_cli(
        "bench", "inference", *args, "--runs", "1", "--warmup", "0", "--engines", "eager,gemm", "--json", str(out)
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(row["engine"], row["sampler"], row["steps"], row["batch"]) for row in rows] == [
        ("eager", "ddim", 2, 1),
        ("gemm", "ddim", 2, 1),
    ]
    assert rows[0]["max_abs_diff_vs_eager"] == 0.0
    assert rows[1]["max_abs_diff_vs_eager"] < 1e-4
    assert all(row["p50_ms"] > 0 for row in rows)


def test_bench_inference_refuses_bad_samplers(capsys):
    from robopolicy.cli import main

    base = ["bench", "inference", "--preset", "diffusion_unet_lowdim_small", "--batch", "1", "--runs", "1"]
    for bad in ("ddim", "ddim:x", "ddim:10,ddpm"):
        with pytest.raises(SystemExit) as e:
            main([*base, "--samplers", bad])
        assert "--samplers items are sampler:steps" in str(e.value.code)
    assert main([*base, "--samplers", "bogus:2", "--warmup", "0"]) == 2
    assert "'bogus' is not one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--samplers", "ddim:2", "--engines", "eager,bogus"])
    assert "unknown engine(s) ['bogus']" in str(e.value.code)


@pytest.fixture
def eval_args(tmp_path):
    if not sim_available():
        pytest.skip("robopolicy eval needs the simulator")
    ckpt = tiny_policy().save(tmp_path / "ckpt")
    return ["eval", "--checkpoint", str(ckpt), "--suite", "sim/lift_lowdim.yaml", "--out", str(tmp_path / "rep")]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--engine", "bogus"], "unknown engine backend 'bogus'"),
        (["--engine", "gemm", "--dtype", "float64"], "engine dtype must be one of"),
        (["--threads", "0"], "engine threads must be >= 1"),
    ],
)
def test_eval_refuses_a_bad_engine_before_any_rollout(eval_args, flags, message, monkeypatch, capsys, tmp_path):
    import robopolicy.eval.cli as eval_cli
    from robopolicy.cli import main

    def no_rollout(*args, **kwargs):
        raise AssertionError("the evaluation started before the engine settings were checked")

    monkeypatch.setattr(eval_cli, "_evaluate", no_rollout)
    assert main([*eval_args, *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


@pytest.mark.skipif(CUDA, reason="checks the refusal on a machine without CUDA")
def test_eval_refuses_cuda_settings_on_a_cpu_before_any_simulator_starts(eval_args, monkeypatch, capsys, tmp_path):
    import robopolicy.eval.runner as runner
    from robopolicy.cli import main

    def no_envs(*args, **kwargs):
        raise AssertionError("simulators were started before the engine settings were checked")

    monkeypatch.setattr(runner, "SubprocVecEnv", no_envs)
    assert main([*eval_args, "--engine", "gemm", "--dtype", "bfloat16", "--device", "cpu"]) == 2
    assert "engine dtype bfloat16 runs on CUDA only" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


# ---------------------------------------------------------------------- compiled (AOTInductor)
@pytest.mark.slow
def test_the_compiled_engine_equals_eager_and_loads_from_its_disk_cache(tmp_path, monkeypatch):
    import torch._inductor

    policy = tiny_policy()
    o3, o1 = obs(3), obs(1)
    ref3 = predict(policy.set_engine("eager"), o3, "ddim", 4)
    ref1 = predict(policy, o1, "ddim", 4, num_samples=1, seed=1)
    config = EngineConfig(backend="compiled", cache_dir=str(tmp_path))
    out3 = predict(policy.set_engine(config), o3, "ddim", 4)  # batch 3: the dynamic-batch package
    close(out3, ref3, atol=1e-4)
    assert len(list((tmp_path / "engines").glob("*.pt2"))) == 1
    out1 = predict(policy, o1, "ddim", 4, num_samples=1, seed=1)  # batch 1: a frozen package of its own
    close(out1, ref1, atol=1e-4)
    packages = sorted((tmp_path / "engines").glob("*.pt2"))
    assert len(packages) == 2

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again although the package for these weights is on disk")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compile)
    policy.set_engine(dataclasses.replace(config))  # drops the built engine: a fresh one loads the packages
    close(predict(policy, o3, "ddim", 4), out3, atol=1e-6)
    close(predict(policy, o1, "ddim", 4, num_samples=1, seed=1), out1, atol=1e-6)
    assert sorted((tmp_path / "engines").glob("*.pt2")) == packages


def test_auto_falls_back_to_gemm_when_the_onnx_export_fails(monkeypatch):
    pytest.importorskip("onnxruntime")
    import robopolicy.inference.engines as engines_mod

    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(engines_mod.torch.onnx, "export", broken_export)
    policy = tiny_policy()
    ref = predict(tiny_policy().set_engine("eager"), obs(1), "ddim", 4, num_samples=1, seed=0)
    out = predict(policy, obs(1), "ddim", 4, num_samples=1, seed=0)
    close(out, ref, atol=1e-4)
    assert policy.network_engine(policy.model).fallback
    with pytest.raises(RuntimeError, match="engine 'onnx' could not export"):
        predict(tiny_policy().set_engine("onnx"), obs(1), "ddim", 4, num_samples=1, seed=0)


def test_auto_runs_larger_batches_on_the_gemm_path():
    pytest.importorskip("onnxruntime")
    policy = tiny_policy()
    ref = predict(tiny_policy().set_engine("eager"), obs(4), "ddim", 4, num_samples=1)
    out = predict(policy, obs(4), "ddim", 4, num_samples=1)
    engine = policy.network_engine(policy.model)
    assert type(engine) is OnnxUnetEngine and not engine.sessions  # batch 4: no ONNX session was built
    close(out, ref, atol=1e-4)
    predict(policy, obs(2), "ddim", 4, num_samples=1)
    assert len(engine.sessions) == 1


def test_image_encoders_run_in_onnx_at_inference_only():
    pytest.importorskip("onnxruntime")
    from robopolicy.inference.engines import OnnxModule
    from robopolicy.types import FieldKind, FieldSpec, ObservationSpec

    spec = ObservationSpec((FieldSpec("state", (3,)), FieldSpec("image.cam", (24, 24, 3), FieldKind.IMAGE)))
    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicy.tiny_configs(spec, ACT)["unet"])
    rng = np.random.default_rng(0)
    policy.fit_normalizer({"state": rng.normal(size=(64, 3)), "action": rng.uniform(-1, 1, (64, 2))})
    policy.eval()
    o = {
        "state": rng.normal(size=(2, 2, 3)).astype(np.float32),
        "image.cam": rng.integers(0, 256, (2, 2, 24, 24, 3), dtype=np.uint8),
    }
    ref = predict(copy.deepcopy(policy).set_engine("eager"), o, "ddim", 3, num_samples=1)
    out = predict(policy, o, "ddim", 3, num_samples=1)
    close(out, ref, atol=1e-4)
    cam = policy.obs_encoder.cameras["image_cam"]
    runner = policy.module_engine(cam)
    assert type(runner) is OnnxModule and len(runner.sessions) == 1
    assert type(policy.set_engine("compiled").module_engine(cam)) is OnnxModule  # U-Net compiled, cameras ONNX
    assert policy.set_engine("gemm").module_engine(cam) is cam
    # the loss never goes through it: gradients reach the encoder
    policy.train()
    assert policy.module_engine(cam) is cam
    loss, _ = policy.compute_loss({"obs": o, "action": rng.uniform(-1, 1, (2, 8, 2))})
    loss.backward()
    assert cam.proj.weight.grad is not None
