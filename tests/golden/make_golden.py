"""Writes the golden Diffusion Policy checkpoint and the chunks it must produce.

    .venv/bin/python tests/golden/make_golden.py     # only when a format or numerics change is intended

A tiny U-Net policy with a seeded init and a normalizer fitted on fixed data is saved to
``tests/golden/dp_unet_tiny/``; ``expected.json`` holds fixed observations and noise and the
chunks (DDIM and DDPM, env units) that the checkpoint gives for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from robopolicy.policies.diffusion import DiffusionPolicy
from robopolicy.types import ActionSpec, FieldSpec, ObservationSpec

HERE = Path(__file__).resolve().parent
OBS = ObservationSpec((FieldSpec("state", (4,)),))
ACT = ActionSpec(("x", "y", "g"), (-1.0, -1.0, -1.0), (1.0, 1.0, 1.0), discrete=(False, False, True))


def golden_inputs() -> tuple[dict, torch.Tensor]:
    rng = np.random.default_rng(20261130)
    obs = {"state": rng.normal(size=(2, 2, 4)).astype(np.float32)}
    noise = torch.from_numpy(rng.normal(size=(2, 8, 3)).astype(np.float32))
    return obs, noise


def chunks(policy: DiffusionPolicy) -> dict[str, list]:
    obs, noise = golden_inputs()
    out = {}
    for sampler in ("ddim", "ddpm"):
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        a = policy.predict(obs, generator=gens, options={"noise": noise, "sampler": sampler})
        out[sampler] = a.actions.tolist()
    return out


def main() -> None:
    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicy.tiny_configs(OBS, ACT)["unet"])
    rng = np.random.default_rng(0)
    action = np.concatenate([rng.uniform(-1, 1, (50, 2)), rng.choice([-1.0, 1.0], (50, 1))], axis=1)
    policy.fit_normalizer({"state": rng.normal(size=(50, 4)), "action": action})
    policy.eval().save(HERE / "dp_unet_tiny")
    obs, noise = golden_inputs()
    expected = {"obs": obs["state"].tolist(), "noise": noise.tolist(), "chunks": chunks(policy)}
    (HERE / "expected.json").write_text(json.dumps(expected))
    print(f"wrote {HERE / 'dp_unet_tiny'} and expected.json")


if __name__ == "__main__":
    main()
