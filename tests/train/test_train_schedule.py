"""EMA decay schedule, EMA averaging and warm-up + cosine LR."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robopolicy.train.config import EMAConfig, TrainConfig
from robopolicy.train.ema import EMA, ema_decay
from robopolicy.train.schedule import lr_factor, make_optimizer, make_scheduler


def test_ema_decay_matches_diffusion_policy_schedule():
    assert ema_decay(0) == 0.0
    assert ema_decay(1) == 0.0  # diffusion_policy: step = n - 1 <= 0 -> 0
    assert ema_decay(2) == pytest.approx(1 - 2**-0.75)
    assert ema_decay(10) == pytest.approx(1 - 10**-0.75)
    assert (
        ema_decay(10_001) == pytest.approx(1 - 10_001**-0.75) == pytest.approx(0.999, abs=1e-6)
    )  # ~0.999 at 10k steps
    assert ema_decay(10**9) == 0.9999  # clamped at max_value
    assert ema_decay(5, power=2 / 3, inv_gamma=2.0) == pytest.approx(1 - (1 + 4 / 2.0) ** (-2 / 3))


def test_ema_averages_params_and_copies_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.register_buffer("counter", torch.tensor(0, dtype=torch.int64))
    ema = EMA(model, EMAConfig())
    for p in model.parameters():
        p.data.fill_(1.0)
    model.counter.fill_(5)
    model[1].running_mean.fill_(3.0)
    ema.update(model)  # decay 0: copies
    assert torch.equal(ema.averaged[0].weight, torch.ones(2, 2))
    ema.update(model)
    w0 = ema.averaged[0].weight.clone()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[1].weight.fill_(2.0)
    d = ema.update(model)  # third update: decay 1 - 2^-0.75
    assert d == pytest.approx(1 - 2**-0.75)
    assert torch.allclose(ema.averaged[0].weight, d * w0 + (1 - d) * 2.0)
    assert torch.equal(ema.averaged[1].weight, torch.full((2,), 2.0))  # BatchNorm params: copied
    assert torch.equal(ema.averaged[1].running_mean, torch.full((2,), 3.0))  # buffers: copied
    assert int(ema.averaged.counter) == 5
    assert not any(p.requires_grad for p in ema.averaged.parameters())


def test_warmup_cosine_schedule():
    model = nn.Linear(3, 3)
    cfg = TrainConfig(policy_name="x", lr=1e-3, warmup_steps=10, num_steps=110)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg)
    lrs = []
    for _ in range(cfg.num_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0
    assert lrs[5] == pytest.approx(0.5e-3)
    assert lrs[10] == pytest.approx(1e-3)  # peak right after warm-up
    assert lrs[60] == pytest.approx(0.5e-3)  # half-way through the cosine
    assert lrs[109] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    for s in (0, 3, 10, 57, 109):
        assert lrs[s] == pytest.approx(1e-3 * lr_factor(s, 10, 110))


def test_optimizer_uses_policy_optim_groups():
    class WithGroups(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def optim_groups(self, weight_decay):
            return [
                {"params": list(self.a.parameters()), "weight_decay": weight_decay},
                {"params": list(self.b.parameters()), "weight_decay": 0.0},
            ]

    opt = make_optimizer(WithGroups(), TrainConfig(policy_name="x", weight_decay=0.1, betas=(0.9, 0.95)))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
