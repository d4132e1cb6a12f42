"""RTI warm starts through the denoiser view: exact cold-start reproduction at the top of the
schedule, per-environment state and reset, gripper treatment, both DP backbones, the runner,
and the start-level estimate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from robopolicy.control.executor import ChunkExecutor
from robopolicy.inference.options import InferenceOptions
from robopolicy.inference.rti import RTI, GripperMode, RTIConfig, estimate_start_level
from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.types import ActionSpec, ChunkTiming, FieldSpec, ObservationSpec

OBS = ObservationSpec((FieldSpec("state", (3,)),))
ACT = ActionSpec(("x", "y", "g"), (-1.0, -2.0, -1.0), (1.0, 2.0, 1.0), discrete=(False, False, True))

pytestmark = pytest.mark.usefixtures("one_thread")


def make_policy(backbone: str, **overrides) -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = DiffusionPolicy.tiny_configs(OBS, ACT)[backbone]
    policy = DiffusionPolicy(dataclasses.replace(cfg, **overrides))
    rng = np.random.default_rng(0)
    action = np.concatenate(
        [rng.uniform(-1, 1, (64, 1)), rng.uniform(-2, 2, (64, 1)), rng.choice([-1.0, 1.0], (64, 1))], 1
    )
    policy.fit_normalizer({"state": rng.normal(size=(64, 3)), "action": action})
    return policy.eval()


def obs(b: int, seed: int = 0) -> dict:
    return {"state": np.random.default_rng(seed).normal(size=(b, 2, 3)).astype(np.float32)}


@pytest.mark.parametrize("backbone", ["unet", "transformer"])
def test_a_warm_start_from_the_top_of_the_schedule_is_the_cold_sampler(backbone):
    policy = make_policy(backbone)
    view = policy.denoiser_view()
    n = policy.config.inference.num_inference_steps
    top = float(view.sigmas(n)[0])
    rti = RTI(policy, RTIConfig(steps=n, sigma_start=top, shift=0, gripper=GripperMode.KEEP))
    noise = torch.randn(2, *view.action_shape, generator=torch.Generator().manual_seed(3))
    for i in range(2):  # the stored "previous chunk" is the prior's draw at the top level
        rti._guess[10 + i] = view.noise_to_x(noise[i], top)
    warm = rti.predict(obs(2), env_ids=[10, 11])
    cold = policy.predict(obs(2), options={"noise": noise, "sampler": "ddim"})
    assert bool(warm.info["warm"].all())
    assert torch.equal(warm.actions, cold.actions)


@pytest.mark.parametrize("backbone", ["unet", "transformer"])
def test_warm_starts_are_per_environment_and_reset_clears_them(backbone):
    policy = make_policy(backbone)
    rti = RTI(policy, RTIConfig(steps=2, start_t=15))
    gens = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]  # noqa: E731
    first = rti.predict(obs(2), env_ids=[4, 9], generator=gens())
    cold_nfe = policy.config.inference.num_inference_steps
    assert not first.info["warm"].any() and first.info["nfe"].tolist() == [cold_nfe, cold_nfe]
    second = rti.predict(obs(2, 1), env_ids=[4, 9], generator=gens())
    assert second.info["warm"].all() and second.info["nfe"].tolist() == [2, 2]
    rti.reset([9])
    third = rti.predict(obs(2, 2), env_ids=[9, 4], generator=gens())
    assert third.info["warm"].tolist() == [False, True]  # env 9 was reset, env 4 keeps its chunk
    rti.reset()
    assert not rti.predict(obs(1), env_ids=[4]).info["warm"].any()
    # warm chunks depend on the guess: a different previous chunk gives a different result
    a = rti.predict(obs(1, 5), env_ids=[4]).actions
    rti._guess[4] = rti._guess[4] + 0.5
    b = rti.predict(obs(1, 5), env_ids=[4]).actions
    assert not torch.equal(a, b) and torch.isfinite(b).all()


def test_shift_pads_the_end_and_resets_the_gripper():
    policy = make_policy("unet")
    rti = RTI(policy, RTIConfig(shift=3, gripper_value=0.1))
    prev = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3) - 10
    prev[:, 2] = torch.tensor([0.9, -0.2, 0.4, -0.8, -0.3, 0.7, 0.2, 0.6])
    g = rti.shifted_guess(prev)
    torch.testing.assert_close(g[:5, :2], prev[3:, :2])
    torch.testing.assert_close(g[5:, :2], prev[-1:, :2].expand(3, 2))
    expected = torch.tensor([-0.1, -0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])  # signs of prev[3:], then the last repeated
    torch.testing.assert_close(g[:, 2], expected)
    keep = RTI(policy, RTIConfig(shift=3, gripper="keep")).shifted_guess(prev)
    torch.testing.assert_close(keep[:5, 2], prev[3:, 2])
    assert RTI(policy, RTIConfig()).gripper_value == pytest.approx(0.1)  # default: small enough to flip
    scaled = make_policy("unet", discrete_action_scale=0.05)
    assert RTI(scaled, RTIConfig()).gripper_value == pytest.approx(0.05)  # or the policy's own smaller scale


def test_bad_rti_options_are_refused():
    policy = make_policy("unet")
    with pytest.raises(ValueError, match="outside the trained range"):
        RTI(policy, RTIConfig(sigma_start=1e6))
    with pytest.raises(ValueError, match="steps"):
        RTIConfig(steps=0)
    with pytest.raises(ValueError, match="unknown inference method"):
        InferenceOptions(method="magic")
    with pytest.raises(ValueError, match="no inference option"):
        InferenceOptions(method="rti", policy={"samplr": "ddim"}).build(policy)


class FakeVec:
    """obs "state" from the seed and step; episodes of 9 steps."""

    n = 2

    def __init__(self) -> None:
        self.t = {}

    def call(self, calls):
        out = []
        for w, cmd, arg in calls:
            if cmd == "reset":
                self.t[w] = (arg[0], 0)
                out.append({"state": np.full(3, arg[0] % 7 / 7, np.float32)})
                continue
            seed, t = self.t[w]
            o = []
            for _ in arg:
                t += 1
                o.append({"state": np.full(3, (seed % 7 + t) / 7, np.float32)})
                if t >= 9:
                    break
            self.t[w] = (seed, t)
            out.append({"obs": o, "success": False, "done": t >= 9, "t": t, "reward": 0.0, "video": None})
        return out


def test_the_runner_runs_rti_and_counts_network_evaluations():
    from robopolicy.eval.runner import _run_episodes

    policy = make_policy("unet")  # H 8, To 2, Ta 4: a 9-step episode takes 3 chunks
    opts = InferenceOptions(method="rti", rti=RTIConfig(steps=2, start_t=12))
    actor = opts.build(policy)
    roll = _run_episodes(actor, policy, FakeVec(), [1, 2, 3], {}, policy.resolve_options(opts.policy), None, False)
    cold = policy.config.inference.num_inference_steps
    assert [e["nfe"] for e in roll.episodes] == [cold + 2 + 2] * 3


def test_the_executor_slices_chunks_as_the_timing_says():
    ex = ChunkExecutor(ChunkTiming(8, 2, 4), ["state"])
    ex.start(5, {"state": np.zeros(3)})
    assert ex.needing_chunk() == [5] and ex.batch_obs([5])["state"].shape == (1, 2, 3)
    ex.set_chunk(5, np.arange(8 * 7, dtype=np.float32).reshape(8, 7))
    assert ex.needing_chunk() == [] and ex.take(5, 1)[0, 0] == 7  # index To-1 = 1
    assert ex.take(5).shape == (3, 7) and ex.needing_chunk() == [5]
    with pytest.raises(ValueError, match="no queued action"):
        ex.take(5)
    with pytest.raises(ValueError, match=r"shape \(8, Da\)"):
        ex.set_chunk(5, np.zeros((7, 7)))


def test_the_start_level_estimate_covers_the_chunk_to_chunk_change():
    policy = make_policy("unet")
    rng = np.random.default_rng(0)
    w0 = [{"state": rng.normal(size=(2, 3)).astype(np.float32)} for _ in range(6)]
    w1 = [{"state": w["state"] + 0.1} for w in w0]
    est = estimate_start_level(policy, w0, w1, steps=3)
    view = policy.denoiser_view()
    assert view.sigma_min <= est.sigma_start <= view.sigma_max and est.windows == 6
    assert 0 <= est.start_t <= 99 and 0 < est.shift_error_p90 and est.contraction > 0
    same = estimate_start_level(policy, w0, w0, steps=3, shift=0)  # no change between steps: a low level
    assert same.sigma_start < est.sigma_start


def test_renoised_warm_starts_draw_from_the_episode_generator():
    policy = make_policy("unet")

    def warm(init: str, seed: int) -> torch.Tensor:
        rti = RTI(policy, RTIConfig(steps=2, start_t=20, init=init))
        rti.predict(obs(1), env_ids=[0], generator=[torch.Generator().manual_seed(0)])
        return rti.predict(obs(1, 1), env_ids=[0], generator=[torch.Generator().manual_seed(seed)]).actions

    assert torch.equal(warm("renoise", 1), warm("renoise", 1))
    assert not torch.equal(warm("renoise", 1), warm("renoise", 2))
    assert torch.equal(warm("guess", 1), warm("guess", 2))  # no noise enters a plain DDIM warm start
