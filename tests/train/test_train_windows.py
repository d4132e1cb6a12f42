"""The trainer builds its data from the policy config's declared windows: a policy asking for
sequential episode streams gets them (rows follow episodes, ``episode_start`` marks switches),
and resume stays bit-exact with that sampler too. Also: an action field not named "action"."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from policy_fixture import make_store, tiny_config, train_losses

from robopolicy.data.store import EpisodeStore
from robopolicy.data.windows import DataWindows, SamplerKind
from robopolicy.policy import register_policy
from robopolicy.train.data import SequentialStreamSampler, open_store
from robopolicy.train.run import build_policy, train
from robopolicy.train.trainer import Trainer
from tests.fixture_policy import MLPConfig, MLPPolicy


@dataclasses.dataclass(frozen=True)
class StreamMLPConfig(MLPConfig):
    def data_windows(self) -> DataWindows:
        return dataclasses.replace(super().data_windows(), sampler=SamplerKind.SEQUENTIAL)


@register_policy("test_mlp_stream")
class StreamMLPPolicy(MLPPolicy):
    """The fixture MLP trained on sequential streams; records what it was fed."""

    config_class = StreamMLPConfig
    seen: list = []

    def compute_loss(self, batch):
        StreamMLPPolicy.seen.append(np.asarray(batch["episode_start"]).copy())
        return super().compute_loss(batch)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("store") / "toy.zarr", n_episodes=8, length=20)


def config(**kw):
    base = dict(policy_name="test_mlp_stream", batch_size=3, val_ratio=0.0, log_every=1, warmup_steps=2)
    return tiny_config(**{**base, **kw})


def test_a_policy_declaring_streams_trains_on_streams(store_path, tmp_path):
    StreamMLPPolicy.seen.clear()
    policy, train_set, _ = build_policy(config(num_steps=12), open_store(str(store_path)))
    trainer = Trainer(config(num_steps=12), policy, train_set, tmp_path / "run", progress=False)
    assert isinstance(trainer.sampler, SequentialStreamSampler)
    trainer.fit()
    starts = np.stack(StreamMLPPolicy.seen)  # (steps, batch)
    assert starts[0].all()  # every stream starts an episode
    # 20-step episodes, H=8, To=2, Ta=4: anchors 0..16, every 4th -> 5 chunks per episode
    assert not starts[1:5].any() and starts[5].all()


def test_resume_is_exact_with_sequential_streams(store_path, tmp_path):
    cfg = config(num_steps=10, checkpoint_every=3)
    store = open_store(str(store_path))
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(cfg, *build_policy(cfg, store)[:2], full, progress=False).fit()
    Trainer(cfg, *build_policy(cfg, store)[:2], part, progress=False).fit(stop_at=6)
    Trainer(cfg, *build_policy(cfg, store)[:2], part, progress=False).fit(resume=True)
    a, b = train_losses(full), train_losses(part)
    assert [a[s] for s in range(1, 11)] == [b[s] for s in range(1, 11)]  # bit-exact


def test_an_action_field_not_named_action_trains(tmp_path):
    src = EpisodeStore.open(make_store(tmp_path / "toy.zarr", n_episodes=3))
    dst = EpisodeStore.create(tmp_path / "renamed.zarr", action_spec=src.action_spec)
    for i in range(src.n_episodes):
        ep = src.episode(i)
        dst.add_episode({"state": ep["state"], "robot_cmd": ep["action"]})
    summary = train(
        tiny_config(num_steps=3, action_key="robot_cmd", val_ratio=0.0),
        str(tmp_path / "renamed.zarr"),
        tmp_path / "run",
        progress=False,
    )
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
