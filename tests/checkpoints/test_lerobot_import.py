"""lerobot DiffusionPolicy checkpoints -> robopolicy policies, in the main env (no lerobot here).

* ``lerobot_tiny/`` was written by lerobot 0.4 itself (``make_lerobot_fixture.py``) with the
  chunks its ``predict_action_chunk`` gave: the converted policy must give them too.
* Hand-built lerobot-format directories (our U-Net's weights under lerobot's names, processor
  files in lerobot 0.4's layout, its stats) check the network, each normalization mode against
  lerobot's formulas, and each refusal.
* The CLI: help, a missing path, an --out that may not be written, a converted directory that
  ``Policy.load`` reads.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.checkpoints.lerobot import (
    IMAGE_OUTPUT_ACTIVATION_FIELD,
    IMPORT_FILE,
    UnsupportedCheckpointError,
    convert_lerobot_diffusion,
    import_lerobot_checkpoint,
    rgb_encoder_name,
    unet_name,
)
from robopolicy.cli import main as cli_main
from robopolicy.data.normalizer import NormMode
from robopolicy.nn.configs import ObsEncoderConfig, UnetConfig
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionPolicy
from robopolicy.policy import Policy
from robopolicy.types import ActionSpec, FieldSpec, ObservationSpec

FIXTURE = Path(__file__).resolve().parent / "lerobot_tiny"
STATE, ENV, ACT = 3, 4, 2

pytestmark = pytest.mark.usefixtures("one_thread")

# our U-Net names (after "model.") -> lerobot's (after "diffusion.unet."), written out from
# lerobot's modeling_diffusion.py module names; checked against the fixture's real names below
TO_LEROBOT = (
    (r"^step_encoder\.", "diffusion_step_encoder."),
    (r"^down\.", "down_modules."),
    (r"^mid\.", "mid_modules."),
    (r"^up\.", "up_modules."),
    (r"\.block1\.", ".conv1.block."),
    (r"\.block2\.", ".conv2.block."),
    (r"\.film\.", ".cond_encoder."),
    (r"\.skip\.", ".residual_conv."),
    (r"^head\.0\.", "final_conv.0.block."),
    (r"^head\.1\.", "final_conv.1."),
)


def lerobot_weights(policy: DiffusionPolicy) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in policy.state_dict().items():
        assert name.startswith("model."), name  # low-dim only: no image encoder
        rest = name[len("model.") :]
        for pattern, repl in TO_LEROBOT:
            rest = re.sub(pattern, repl, rest)
        out["diffusion.unet." + rest] = t.clone()
    return out


def source_policy(down_dims=(8, 16), kernel_size=3, dsed=8, seed=0) -> DiffusionPolicy:
    obs = ObservationSpec((FieldSpec("state", (STATE,)), FieldSpec("environment_state", (ENV,))))
    act = ActionSpec(("a", "b"), (-1.0, -1.0), (1.0, 1.0))
    cfg = DiffusionConfig(
        obs_spec=obs,
        action_spec=act,
        horizon=8,
        n_obs_steps=2,
        n_action_steps=4,
        backbone=UnetConfig(down_dims=down_dims, kernel_size=kernel_size, diffusion_step_embed_dim=dsed),
    )
    torch.manual_seed(seed)
    return DiffusionPolicy(cfg).eval()


def stats(rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
    lo = rng.uniform(-3, 0, n)
    hi = lo + rng.uniform(0.5, 4, n)
    return {
        "min": torch.tensor(lo, dtype=torch.float32),
        "max": torch.tensor(hi, dtype=torch.float32),
        "mean": torch.tensor((lo + hi) / 2 + 0.1, dtype=torch.float32),
        "std": torch.tensor((hi - lo) / 4, dtype=torch.float32),
        "q01": torch.tensor(lo + 0.05, dtype=torch.float32),
        "q99": torch.tensor(hi - 0.05, dtype=torch.float32),
    }


def write_processors(d: Path, norm_map: dict, all_stats: dict, features: dict, pre_steps=None) -> None:
    """Processor files in lerobot 0.4's layout, from the fixture's (lerobot-written) ones."""
    for name, reg, keys in (
        ("policy_preprocessor", "normalizer_processor", list(features)),
        ("policy_postprocessor", "unnormalizer_processor", ["action"]),
    ):
        doc = json.loads((FIXTURE / f"{name}.json").read_text())
        if pre_steps is not None and name == "policy_preprocessor":
            doc["steps"] = pre_steps(doc["steps"])
        for step in doc["steps"]:
            if step.get("registry_name") == reg:
                step["config"]["features"] = {k: features[k] for k in keys}
                step["config"]["norm_map"] = norm_map
                flat = {f"{k}.{s}": v for k in keys if k in all_stats for s, v in all_stats[k].items()}
                save_file(flat, str(d / step["state_file"]))
        (d / f"{name}.json").write_text(json.dumps(doc, indent=2))


def write_lerobot_dir(
    d: Path,
    policy: DiffusionPolicy | None = None,
    config: dict | None = None,
    norm_map: dict | None = None,
    drop_stats: tuple[str, ...] = (),
    extra_inputs: dict | None = None,
    weights: dict | None = None,
    pre_steps=None,
) -> DiffusionPolicy:
    """A lerobot DiffusionPolicy checkpoint made by hand from our network's weights."""
    policy = policy or source_policy()
    d.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((FIXTURE / "config.json").read_text())
    b = policy.config.backbone
    cfg.update(
        down_dims=list(b.down_dims),
        kernel_size=b.kernel_size,
        diffusion_step_embed_dim=b.diffusion_step_embed_dim,
        noise_scheduler_type="DDPM",
        num_inference_steps=None,
    )
    cfg.update(config or {})
    cfg["input_features"].update(extra_inputs or {})
    (d / "config.json").write_text(json.dumps(cfg, indent=4))
    save_file(weights if weights is not None else lerobot_weights(policy), str(d / "model.safetensors"))
    rng = np.random.default_rng(1)
    all_stats = {
        "observation.state": stats(rng, STATE),
        "observation.environment_state": stats(rng, ENV),
        "action": stats(rng, ACT),
    }
    for k in drop_stats:
        all_stats.pop(k)
    nm = norm_map or {"VISUAL": "MEAN_STD", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"}
    write_processors(d, nm, all_stats, {**cfg["input_features"], **cfg["output_features"]}, pre_steps)
    return policy


# ---------------------------------------------------------------------------------- lerobot's own files
def test_a_checkpoint_written_by_lerobot_gives_lerobots_chunks():
    expected = json.loads((FIXTURE / "expected.json").read_text())
    policy = convert_lerobot_diffusion(FIXTURE).policy
    obs = {k: np.asarray(v, dtype=np.float32) for k, v in expected["obs"].items()}
    cfg = policy.config
    assert (cfg.inference.sampler.value, cfg.inference.num_inference_steps) == ("ddim", 10)  # from its config
    executed = cfg.timing.executed
    for name, by_seed in expected["chunks"].items():
        sampler, steps = re.fullmatch(r"([a-z]+)(\d+)", name).groups()
        for seed, chunk in by_seed.items():
            gen = torch.Generator().manual_seed(int(seed))
            opts = {"sampler": sampler, "num_inference_steps": int(steps)}
            got = policy.predict(obs, generator=gen, options=opts).actions[:, executed]
            torch.testing.assert_close(got, torch.tensor(chunk), atol=2e-5, rtol=1e-5)


def test_the_hand_built_names_are_lerobots_own():
    real = set(load_file(str(FIXTURE / "model.safetensors")))
    ours = source_policy()  # the fixture's sizes: state 3, env 4, action 2, down_dims (8, 16), dsed 8, kernel 3
    assert set(lerobot_weights(ours)) == real


def test_name_maps():
    assert unet_name("up_modules.0.1.conv2.block.1.weight") == "up.0.1.block2.1.weight"
    assert unet_name("final_conv.0.block.0.bias") == "head.0.0.bias"
    assert unet_name("down_modules.1.0.residual_conv.weight") == "down.1.0.skip.weight"
    assert rgb_encoder_name("backbone.0.weight") == "trunk.stem.0.weight"
    assert rgb_encoder_name("backbone.5.0.downsample.1.weight") == "trunk.stages.2.down.1.weight"
    assert rgb_encoder_name("backbone.7.1.bn2.bias") == "trunk.stages.7.norm2.bias"
    assert rgb_encoder_name("pool.nets.weight") == "pool.kp.weight"
    assert rgb_encoder_name("out.bias") == "proj.bias"
    assert rgb_encoder_name("pool.pos_grid") is None


# ---------------------------------------------------------------------------------- network and normalization
def test_the_converted_network_is_the_source_network(tmp_path):
    src = write_lerobot_dir(tmp_path / "lr", source_policy(down_dims=(16, 32, 64), kernel_size=5, dsed=16))
    conv = convert_lerobot_diffusion(tmp_path / "lr")
    got = conv.policy
    assert got.config.backbone == src.config.backbone
    assert got.config.inference.sampler.value == "ddpm" and got.config.inference.num_inference_steps == 100
    for k, v in src.state_dict().items():
        assert torch.equal(got.state_dict()[k], v), k
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(3, 8, ACT, generator=g), torch.randn(3, 2, STATE + ENV, generator=g)
    t = torch.tensor([0.0, 17.0, 99.0])
    assert torch.equal(got.model(x, t, cond), src.model(x, t, cond))
    assert conv.keys == {
        "observation.state": "state",
        "observation.environment_state": "environment_state",
        "action": "action",
    }


def lerobot_normalize(mode: str, x: torch.Tensor, st: dict, eps: float = 1e-8) -> torch.Tensor:
    """lerobot 0.4's NormalizerProcessorStep, written out."""
    if mode == "MIN_MAX":
        return 2 * (x - st["min"]) / (st["max"] - st["min"]) - 1
    if mode == "MEAN_STD":
        return (x - st["mean"]) / (st["std"] + eps)
    if mode == "QUANTILES":
        return 2 * (x - st["q01"]) / (st["q99"] - st["q01"]) - 1
    return x


def lerobot_unnormalize(mode: str, y: torch.Tensor, st: dict) -> torch.Tensor:
    if mode == "MIN_MAX":
        return (y + 1) / 2 * (st["max"] - st["min"]) + st["min"]
    if mode == "MEAN_STD":
        return y * st["std"] + st["mean"]
    return y


@pytest.mark.parametrize(
    "norm_map, ours",
    [
        ({"STATE": "MIN_MAX", "ACTION": "MIN_MAX"}, ("limits", "identity", "limits")),
        ({"STATE": "MEAN_STD", "ENV": "MEAN_STD", "ACTION": "MEAN_STD"}, ("gaussian", "gaussian", "gaussian")),
        ({"STATE": "QUANTILES", "ENV": "MIN_MAX", "ACTION": "MIN_MAX"}, ("limits", "limits", "limits")),
        ({"STATE": "IDENTITY", "ACTION": "MIN_MAX"}, ("identity", "identity", "limits")),
    ],
)
def test_normalization_is_lerobots(tmp_path, norm_map, ours):
    clip = norm_map["ACTION"] != "MEAN_STD"  # our config refuses z-scored actions with clipping
    write_lerobot_dir(tmp_path / "lr", config={"clip_sample": clip}, norm_map=norm_map)
    policy = convert_lerobot_diffusion(tmp_path / "lr").policy
    pre = load_file(str(tmp_path / "lr" / "policy_preprocessor_step_3_normalizer_processor.safetensors"))
    post = load_file(str(tmp_path / "lr" / "policy_postprocessor_step_0_unnormalizer_processor.safetensors"))

    def st(flat: dict, key: str) -> dict:
        return {k.rsplit(".", 1)[1]: v for k, v in flat.items() if k.rsplit(".", 1)[0] == key}

    g = torch.Generator().manual_seed(0)
    norm = policy.normalizer
    for lr_key, key, n in (
        ("observation.state", "state", STATE),
        ("observation.environment_state", "environment_state", ENV),
    ):
        mode = norm_map.get("STATE" if key == "state" else "ENV", "IDENTITY")
        x = torch.randn(5, n, generator=g) * 3
        torch.testing.assert_close(norm.normalize(key, x), lerobot_normalize(mode, x, st(pre, lr_key)))
    y = torch.randn(5, ACT, generator=g)
    torch.testing.assert_close(
        norm.unnormalize("action", y), lerobot_unnormalize(norm_map["ACTION"], y, st(post, "action"))
    )
    assert tuple(policy.config.normalization[k].value for k in ("state", "environment_state", "action")) == ours
    spec = policy.config.action_spec
    assert spec.low == pytest.approx(st(post, "action")["min"].tolist())
    assert spec.high == pytest.approx(st(post, "action")["max"].tolist())


# ---------------------------------------------------------------------------------- refusals
IMAGE = {"observation.images.top": {"type": "VISUAL", "shape": [3, 84, 84]}}


@pytest.mark.parametrize(
    "config, extra_inputs, match",
    [
        ({"use_film_scale_modulation": False}, None, "use_film_scale_modulation=false: FiLM with a bias only"),
        ({"n_groups": 4}, None, "n_groups=4: lerobot's final conv block always has 8"),
        ({"kernel_size": 4}, None, "kernel_size=4"),
        ({"clip_sample_range": 2.0}, None, "clip_sample_range=2.0"),
        ({"noise_scheduler_type": "DPMSolver"}, None, "noise_scheduler_type"),
        ({"beta_schedule": "sigmoid"}, None, "beta_schedule"),
        ({"num_inference_steps": 500}, None, "num_inference_steps=500"),
        ({"use_peft": True}, None, "use_peft=true"),
        ({"a_new_setting": 1}, None, r"\['a_new_setting'\]: settings this converter does not know"),
        ({"type": "act"}, None, "policy type 'act'"),
        ({"vision_backbone": "resnet34"}, IMAGE, 'vision_backbone="resnet34"'),
        ({"use_group_norm": False}, IMAGE, "use_group_norm=false: a BatchNorm ResNet"),
        ({"resize_shape": [96, 96]}, IMAGE, "resize_shape"),
        ({"crop_shape": [77, 77]}, IMAGE, "one pixel later in torchvision"),
        ({"crop_shape": [90, 90]}, IMAGE, "larger than the images"),
        ({}, {"observation.environment_state_2": {"type": "ENV", "shape": [2]}}, "one ENV input"),
    ],
)
def test_what_ours_lacks_is_refused_by_name(tmp_path, config, extra_inputs, match):
    write_lerobot_dir(tmp_path / "lr", config=config, extra_inputs=extra_inputs)
    with pytest.raises(UnsupportedCheckpointError, match=match):
        convert_lerobot_diffusion(tmp_path / "lr")


@pytest.mark.skipif(
    IMAGE_OUTPUT_ACTIVATION_FIELD in {f.name for f in dataclasses.fields(ObsEncoderConfig)},
    reason="robopolicy's image encoder has an output activation: image checkpoints convert (tests/real)",
)
def test_image_checkpoints_are_refused_while_our_encoder_lacks_the_relu(tmp_path):
    write_lerobot_dir(tmp_path / "lr", extra_inputs=IMAGE)
    with pytest.raises(UnsupportedCheckpointError, match="ReLU after its output Linear"):
        convert_lerobot_diffusion(tmp_path / "lr")


def test_every_refused_setting_is_listed_at_once(tmp_path):
    write_lerobot_dir(tmp_path / "lr", config={"use_film_scale_modulation": False, "n_groups": 4, "kernel_size": 4})
    with pytest.raises(UnsupportedCheckpointError) as e:
        convert_lerobot_diffusion(tmp_path / "lr")
    assert all(s in str(e.value) for s in ("use_film_scale_modulation", "n_groups", "kernel_size"))


def test_stats_and_processors_ours_cannot_follow_are_refused(tmp_path):
    write_lerobot_dir(tmp_path / "a", drop_stats=("observation.state",))
    with pytest.raises(UnsupportedCheckpointError, match="no stats for 'observation.state'.*MIN_MAX"):
        convert_lerobot_diffusion(tmp_path / "a")

    def with_step(steps):
        return [*steps, {"registry_name": "image_crop_processor", "config": {}}]

    write_lerobot_dir(tmp_path / "b", pre_steps=with_step)
    with pytest.raises(UnsupportedCheckpointError, match="image_crop_processor"):
        convert_lerobot_diffusion(tmp_path / "b")

    def bf16(steps):
        steps = copy.deepcopy(steps)
        for s in steps:
            if s["registry_name"] == "device_processor":
                s["config"]["float_dtype"] = "bfloat16"
        return steps

    write_lerobot_dir(tmp_path / "c", pre_steps=bf16)
    with pytest.raises(UnsupportedCheckpointError, match="float_dtype='bfloat16'"):
        convert_lerobot_diffusion(tmp_path / "c")

    write_lerobot_dir(tmp_path / "d", config={"clip_sample": True}, norm_map={"STATE": "MIN_MAX", "ACTION": "MEAN_STD"})
    with pytest.raises(UnsupportedCheckpointError, match="MEAN_STD with clip_sample=true"):
        convert_lerobot_diffusion(tmp_path / "d")

    (tmp_path / "e").mkdir()
    for f in FIXTURE.iterdir():
        if not f.name.startswith("policy_"):
            (tmp_path / "e" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match="policy_preprocessor.json is missing"):
        convert_lerobot_diffusion(tmp_path / "e")


def test_weights_that_do_not_fit_are_refused(tmp_path):
    src = source_policy()
    old = {**lerobot_weights(src), "normalize_inputs.buffer_observation_state.min": torch.zeros(3)}
    write_lerobot_dir(tmp_path / "old", src, weights=old)
    with pytest.raises(UnsupportedCheckpointError, match="lerobot < 0.4 checkpoint"):
        convert_lerobot_diffusion(tmp_path / "old")

    extra = {**lerobot_weights(src), "diffusion.unet.mystery.weight": torch.zeros(3)}
    write_lerobot_dir(tmp_path / "extra", src, weights=extra)
    with pytest.raises(UnsupportedCheckpointError, match="mystery"):
        convert_lerobot_diffusion(tmp_path / "extra")

    short = lerobot_weights(src)
    short.pop("diffusion.unet.final_conv.1.bias")
    write_lerobot_dir(tmp_path / "short", src, weights=short)
    with pytest.raises(UnsupportedCheckpointError, match=r"left empty \['model.head.1.bias'\]"):
        convert_lerobot_diffusion(tmp_path / "short")

    wide = source_policy(down_dims=(16, 32))  # our config says (8, 16): shapes differ
    write_lerobot_dir(tmp_path / "shape", wide, weights=lerobot_weights(wide), config={"down_dims": [8, 16]})
    with pytest.raises(UnsupportedCheckpointError, match="does not fit"):
        convert_lerobot_diffusion(tmp_path / "shape")


# ---------------------------------------------------------------------------------- files and CLI
def test_cli_converts_and_the_result_loads(tmp_path, capsys):
    out = tmp_path / "ours"
    assert cli_main(["import-checkpoint", "lerobot", str(FIXTURE), "--out", str(out)]) == 0
    assert "converted lerobot DiffusionPolicy" in capsys.readouterr().out
    policy = Policy.load(out)
    assert policy.config.obs_spec.keys == ["state", "environment_state"]
    assert policy.config.normalization["environment_state"] is NormMode.IDENTITY  # ENV has no norm_map entry
    record = json.loads((out / IMPORT_FILE).read_text())
    assert record["source"] == "lerobot" and record["lerobot_config"]["type"] == "diffusion"
    ref = convert_lerobot_diffusion(FIXTURE).policy
    for k, v in ref.state_dict().items():
        assert torch.equal(policy.state_dict()[k], v), k


def test_cli_refuses_bad_paths_and_outputs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["import-checkpoint", "--help"])
    assert e.value.code == 0
    assert "lerobot" in capsys.readouterr().out

    assert cli_main(["import-checkpoint", "lerobot", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "lerobot checkpoint not found" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli_main(["import-checkpoint", "lerobot", str(tmp_path / "file"), "--out", str(tmp_path / "o")]) == 2
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["import-checkpoint", "lerobot", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert cli_main(["import-checkpoint", "lerobot", str(FIXTURE), "--out", str(busy)]) == 2
    assert "not empty (pass --overwrite" in capsys.readouterr().err
    assert cli_main(["import-checkpoint", "lerobot", str(FIXTURE), "--out", str(busy), "--overwrite"]) == 2
    assert "not a robopolicy policy checkpoint" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "keep me"

    empty_out = tmp_path / "empty_out"
    empty_out.mkdir()
    assert cli_main(["import-checkpoint", "lerobot", str(FIXTURE), "--out", str(empty_out)]) == 0
    assert cli_main(["import-checkpoint", "lerobot", str(FIXTURE), "--out", str(empty_out), "--overwrite"]) == 0
    capsys.readouterr()


def test_a_refused_conversion_writes_nothing(tmp_path):
    write_lerobot_dir(tmp_path / "lr", config={"n_groups": 4})
    with pytest.raises(UnsupportedCheckpointError):
        import_lerobot_checkpoint(tmp_path / "lr", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir())
