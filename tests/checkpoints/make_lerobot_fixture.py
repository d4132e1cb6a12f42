"""Writes ``tests/checkpoints/lerobot_tiny/``: a tiny DiffusionPolicy saved by lerobot itself
(policy + pre/post-processors) and ``expected.json``, the chunks lerobot's
``predict_action_chunk`` gives for fixed observations and seeds. Runs in the lerobot env:

    .venv-real/bin/python tests/checkpoints/make_lerobot_fixture.py

The main-env test converts the directory (no lerobot there) and must reproduce the chunks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from robopolicy.checkpoints.lerobot_reference import LerobotRunner, make_random_checkpoint

HERE = Path(__file__).resolve().parent
OUT = HERE / "lerobot_tiny"
SAMPLERS = (("ddim", 10), ("ddpm", 100))
SEEDS = (0, 1)
CONFIG = dict(
    down_dims=(8, 16),
    kernel_size=3,
    diffusion_step_embed_dim=8,
    horizon=8,
    n_obs_steps=2,
    n_action_steps=4,
    noise_scheduler_type="DDIM",
    num_inference_steps=10,
)


def fixture_obs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261130)
    return {
        "state": rng.normal(size=(1, 2, 3)).astype(np.float32),
        "environment_state": rng.normal(size=(1, 2, 4)).astype(np.float32),
    }


def main() -> None:
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    make_random_checkpoint(OUT, state_dim=3, env_dim=4, action_dim=2, seed=7, **CONFIG)
    runner = LerobotRunner(OUT)
    obs = fixture_obs()
    lobs = runner.lerobot_obs(obs)
    chunks = {}
    for sampler, steps in SAMPLERS:
        runner.set_sampler(sampler, steps)
        chunks[f"{sampler}{steps}"] = {str(s): runner.chunk(lobs, seed=s).tolist() for s in SEEDS}
    expected = {"obs": {k: v.tolist() for k, v in obs.items()}, "chunks": chunks}
    (OUT / "expected.json").write_text(json.dumps(expected))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
