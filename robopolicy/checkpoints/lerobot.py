"""A lerobot 0.4 ``DiffusionPolicy`` checkpoint -> a robopolicy Diffusion Policy checkpoint.

    robopolicy import-checkpoint lerobot PATH --out DIR [--overwrite]

``PATH`` is what lerobot's ``save_pretrained`` writes for the policy and its processors::

    config.json                                   DiffusionConfig (draccus JSON, "type": "diffusion")
    model.safetensors                             the policy's state dict ("diffusion.unet.*", "diffusion.rgb_encoder.*")
    policy_preprocessor.json (+ _step_N_normalizer_processor.safetensors)     observation stats
    policy_postprocessor.json (+ _step_N_unnormalizer_processor.safetensors)  action stats

Nothing of lerobot is imported: the files are read with ``json`` and ``safetensors``. The result
is a normal :class:`~robopolicy.policies.diffusion.DiffusionPolicy` (``Policy.load(DIR)``) plus
``import.json`` recording the source, the lerobot config and the name map.

What maps onto what:

* features: ``observation.state`` -> ``state``, ``observation.environment_state`` ->
  ``environment_state``, ``observation.images.<cam>`` -> ``image.<cam>`` (uint8 HWC here, float
  CHW in [0, 1] in lerobot), ``action`` -> the action spec (``action_<i>``, limits = the action
  stats' min / max). Other input features are not read by lerobot's network and are left out.
* network: lerobot's ``DiffusionConditionalUnet1d`` is :class:`~robopolicy.nn.unet1d.ConditionalUnet1D`
  under other names; the global condition is the same per-step concatenation, except that
  robopolicy puts all low-dim fields before the cameras (lerobot: state, cameras, environment
  state), so with both cameras and an environment state the FiLM weights' columns are permuted.
  The ResNet-18 (GroupNorm) + spatial softmax + Linear of each camera maps onto
  :class:`~robopolicy.nn.obs_encoders.ImageEncoder`; one encoder shared by all cameras
  (``use_separate_rgb_encoder_per_camera: false``) is copied into each camera's encoder, which
  computes the same at inference (fine-tuning would then train the copies apart).
* noise and sampling: the DDPM betas, ``clip_sample``, ``prediction_type``; lerobot's
  ``noise_scheduler_type`` DDPM / DDIM and ``num_inference_steps`` become the default sampler
  and steps (robopolicy's DDPM and DDIM equal diffusers' schedulers for the same noise).
* normalization (lerobot's ``NormalizerProcessorStep`` formulas, exactly, as affine maps):
  ``MIN_MAX`` -> ``limits`` (``2 (x - min) / (max - min) - 1``, a zero range uses lerobot's eps),
  ``MEAN_STD`` -> ``gaussian`` (``(x - mean) / (std + eps)`` for observations, ``y * std + mean``
  for actions), ``IDENTITY`` -> ``identity``, ``QUANTILES`` / ``QUANTILE10`` -> ``limits`` on the
  quantiles. Images: lerobot's per-channel map of ``x / 255`` becomes the per-channel affine map
  of the uint8 image.

Timing: lerobot's ``predict_action_chunk`` returns ``actions[:, To-1 : To-1+Ta]``; robopolicy's
``predict`` returns the whole chunk (B, H, Da), of which that is the executed slice.

Refused, with the setting named (:class:`UnsupportedCheckpointError`), where robopolicy's network
or sampler would compute something else: FiLM without scale (``use_film_scale_modulation:
false``), ``n_groups`` other than 8 (lerobot's last conv block always has 8 groups, robopolicy's
has ``n_groups``), an even ``kernel_size``, ``clip_sample_range`` other than 1, BatchNorm
backbones (``use_group_norm: false``), backbones other than ResNet-18, ``resize_shape``, a
center crop whose offset torchvision rounds differently, the ReLU lerobot's image encoder applies
after its output Linear (robopolicy's image encoder has no activation there), PEFT adapters,
processor steps other than rename / batch / device / (un)normalize, a non-float32 device dtype,
config settings this converter does not know (a newer lerobot), observation stats that are
missing (lerobot would pass the key unnormalized), and lerobot < 0.4 checkpoints (stats inside
the model; migrate them with lerobot's ``migrate_policy_normalization`` first). Training-only
settings (``do_mask_loss_for_padding``, ``crop_is_random``, ``drop_n_last_frames``, the
optimizer) and runtime ones (``device``, ``use_amp``, ``compile_model``) do not change what the
network computes and are recorded in ``import.json`` only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from robopolicy.data.importers.lerobot import lerobot_key_to_field
from robopolicy.data.normalizer import ACTION_KEY, Normalizer, NormMode
from robopolicy.diffusion.samplers import InferenceDefaults, SamplerMethod
from robopolicy.diffusion.schedulers import BETA_SCHEDULES, NoiseScheduleConfig, PredictionType
from robopolicy.nn.configs import ObsEncoderConfig, UnetConfig
from robopolicy.outputs import discard, staging_dir, swap_in
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionPolicy
from robopolicy.policy import CONFIG_FILE, NORMALIZER_FILE, WEIGHTS_FILE
from robopolicy.types import ActionSpec, FieldKind, FieldSpec, ObservationSpec

LEROBOT_CONFIG = "config.json"
LEROBOT_WEIGHTS = "model.safetensors"
PREPROCESSOR = "policy_preprocessor.json"
POSTPROCESSOR = "policy_postprocessor.json"
IMPORT_FILE = "import.json"

OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"

# config.json settings that map onto the converted policy (all checked below)
MAPPED_SETTINGS = {
    "type", "n_obs_steps", "horizon", "n_action_steps", "input_features", "output_features",
    "vision_backbone", "resize_shape", "crop_ratio", "crop_shape", "pretrained_backbone_weights",
    "use_group_norm", "spatial_softmax_num_keypoints", "use_separate_rgb_encoder_per_camera",
    "down_dims", "kernel_size", "n_groups", "diffusion_step_embed_dim", "use_film_scale_modulation",
    "noise_scheduler_type", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
    "prediction_type", "clip_sample", "clip_sample_range", "num_inference_steps", "use_peft",
}  # fmt: skip
# settings of training, of the runtime or of the Hub: they do not change what the network computes
IGNORED_SETTINGS = {
    "device", "use_amp", "push_to_hub", "repo_id", "private", "tags", "license", "pretrained_path",
    "normalization_mapping", "drop_n_last_frames", "crop_is_random", "compile_model", "compile_mode",
    "do_mask_loss_for_padding", "gradient_checkpointing", "optimizer_lr", "optimizer_betas",
    "optimizer_eps", "optimizer_weight_decay", "scheduler_name", "scheduler_warmup_steps",
}  # fmt: skip
REQUIRED_SETTINGS = (
    "n_obs_steps", "horizon", "n_action_steps", "input_features", "output_features", "down_dims",
    "kernel_size", "n_groups", "diffusion_step_embed_dim", "use_film_scale_modulation",
    "noise_scheduler_type", "num_train_timesteps", "beta_schedule", "beta_start", "beta_end",
    "prediction_type", "clip_sample",
)  # fmt: skip
IMAGE_SETTINGS = (
    "vision_backbone", "crop_shape", "use_group_norm", "spatial_softmax_num_keypoints",
    "use_separate_rgb_encoder_per_camera",
)  # fmt: skip
KNOWN_PROCESSOR_STEPS = {"rename_observations_processor", "to_batch_processor", "device_processor"}

# The one piece of lerobot's image encoder that robopolicy's lacks: ``relu(out(x))`` after the
# spatial-softmax Linear. When ObsEncoderConfig gains this field (values "none" / "relu"),
# image checkpoints convert; until then they are refused.
IMAGE_OUTPUT_ACTIVATION_FIELD = "output_activation"
LEROBOT_GROUP_NORM_GROUPS_IN_HEAD = 8


class UnsupportedCheckpointError(ValueError):
    """The checkpoint uses something robopolicy's network or sampler cannot reproduce (named)."""


@dataclasses.dataclass
class Conversion:
    """A converted policy and what the conversion recorded."""

    policy: DiffusionPolicy
    source: Path
    lerobot_config: dict[str, Any]
    keys: dict[str, str]
    """lerobot feature -> robopolicy observation key (and ``action``)."""
    notes: list[str]
    unused: list[str] = dataclasses.field(default_factory=list)
    """config.json settings of training, of the runtime or of the Hub (not used at inference)."""

    def record(self) -> dict[str, Any]:
        """What ``import.json`` holds."""
        return {
            "source": "lerobot",
            "source_path": str(self.source.resolve()),
            "policy_type": "diffusion",
            "keys": self.keys,
            "executed_slice": "lerobot's predict_action_chunk returns actions[:, To-1:To-1+Ta]; "
            "robopolicy's predict returns the whole chunk (B, H, Da)",
            "notes": self.notes,
            "unused_settings": self.unused,
            "lerobot_config": self.lerobot_config,
        }


# ---------------------------------------------------------------------------------- entry points
def import_lerobot_checkpoint(src: str | Path, out: str | Path, *, overwrite: bool = False) -> Conversion:
    """Convert ``src`` and write it to ``out`` (``Policy.save`` format + ``import.json``).

    ``out`` may be missing or an empty directory; a non-empty one is replaced only with
    ``overwrite`` and only if it is a robopolicy policy checkpoint. The checkpoint is written
    to a temporary sibling and renamed into place when complete."""
    out = check_checkpoint_out(out, overwrite=overwrite)
    conv = convert_lerobot_diffusion(src)
    staged = staging_dir(out)
    try:
        conv.policy.save(staged)
        (staged / IMPORT_FILE).write_text(json.dumps(conv.record(), indent=2))
        swap_in(staged, out)
    except BaseException:
        discard(staged)
        raise
    return conv


def convert_lerobot_diffusion(src: str | Path) -> Conversion:
    """The robopolicy policy (eval mode, CPU) equal to the lerobot checkpoint in ``src``."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"lerobot checkpoint not found: {src}")
    if not src.is_dir():
        raise ValueError(f"{src} is a file; pass the lerobot checkpoint directory (with {LEROBOT_CONFIG})")
    cfg = _read_json(src / LEROBOT_CONFIG, "the lerobot policy config")
    if cfg.get("type") != "diffusion":
        raise UnsupportedCheckpointError(
            f"{src / LEROBOT_CONFIG}: policy type {cfg.get('type')!r}; only lerobot DiffusionPolicy ('diffusion') "
            "checkpoints convert"
        )
    weights = _read_weights(src / LEROBOT_WEIGHTS)
    if any(k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")) for k in weights):
        raise UnsupportedCheckpointError(
            f"{src} is a lerobot < 0.4 checkpoint (normalization stats inside {LEROBOT_WEIGHTS}); migrate it with "
            "lerobot's processor/migrate_policy_normalization.py, then convert the result"
        )
    feats = _features(cfg)
    _refuse_unsupported(cfg, feats)
    notes: list[str] = []
    pre = _processor(src, PREPROCESSOR, "normalizer_processor", notes)
    post = _processor(src, POSTPROCESSOR, "unnormalizer_processor", notes)
    obs_spec, action_spec = _specs(feats, post)
    norm, modes = _normalizer(feats, pre, post)
    config = _diffusion_config(cfg, feats, obs_spec, action_spec, modes)
    policy = DiffusionPolicy(config, normalizer=norm)
    state = _map_state_dict(weights, cfg, feats, policy)
    missing, unexpected = policy.load_state_dict(state, strict=False)
    if missing or unexpected:  # _map_state_dict checks names and shapes; this cannot happen silently
        raise UnsupportedCheckpointError(f"weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if feats.images and not cfg["use_separate_rgb_encoder_per_camera"] and len(feats.images) > 1:
        notes.append("one rgb encoder shared by all cameras was copied into each camera's encoder")
    unused = sorted(k for k in IGNORED_SETTINGS if k in cfg)
    return Conversion(policy.eval(), src, cfg, feats.keys, notes, unused)


def check_checkpoint_out(out: str | Path, *, overwrite: bool, flag: str = "--out") -> Path:
    """Refuse an output a checkpoint may not be written to (before any work), as
    :func:`robopolicy.outputs.check_output_dir` does for stores and runs: a file, a broken link,
    a non-empty directory without ``overwrite``, and with it anything but a policy checkpoint."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise ValueError(f"{flag} {out} is a broken symbolic link")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out} is a file; it must be a directory")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"{flag} {out}: its parent {out.parent} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{flag} {out} exists and is not empty (pass --overwrite to replace it)")
        if not is_policy_checkpoint(out):
            raise ValueError(
                f"refusing to overwrite {out}: it is not a robopolicy policy checkpoint "
                f"(its files are kept; choose another {flag} or empty it yourself)"
            )
    return out


def is_policy_checkpoint(path: Path) -> bool:
    """A directory written by ``Policy.save`` (its config.json names a policy)."""
    if not all((path / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE, NORMALIZER_FILE)):
        return False
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and "policy" in meta and "config" in meta


# ---------------------------------------------------------------------------------- reading
def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing ({what}); is {path.parent} a lerobot checkpoint directory?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (the lerobot policy weights)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is truncated or not a safetensors file: {e}") from None


@dataclasses.dataclass(frozen=True)
class _Features:
    """lerobot's inputs in the order its network concatenates them, and our keys for them."""

    state: int
    env_state: int | None
    images: tuple[str, ...]
    image_shape: tuple[int, int, int] | None  # (C, H, W) as lerobot declares it
    action: int
    keys: dict[str, str]


def _shape(feature: Any, name: str) -> tuple[int, ...]:
    if not isinstance(feature, Mapping) or "shape" not in feature or "type" not in feature:
        raise ValueError(f"config.json: feature {name!r} must have 'type' and 'shape', got {feature!r}")
    return tuple(int(s) for s in feature["shape"])


def _features(cfg: Mapping[str, Any]) -> _Features:
    inputs, outputs = cfg.get("input_features") or {}, cfg.get("output_features") or {}
    types = {k: v.get("type") if isinstance(v, Mapping) else None for k, v in inputs.items()}
    if types.get(OBS_STATE) != "STATE":
        raise UnsupportedCheckpointError(
            f"config.json: lerobot's DiffusionPolicy needs a STATE input named {OBS_STATE!r}; inputs are {types}"
        )
    state = _shape(inputs[OBS_STATE], OBS_STATE)
    envs = [k for k, t in types.items() if t == "ENV"]
    if envs not in ([], [OBS_ENV_STATE]):
        raise UnsupportedCheckpointError(
            f"input_features: lerobot's network reads one ENV input named {OBS_ENV_STATE!r}, got {envs}"
        )
    env = _shape(inputs[OBS_ENV_STATE], OBS_ENV_STATE) if envs else None
    images = tuple(k for k, t in types.items() if t == "VISUAL")
    shapes = {k: _shape(inputs[k], k) for k in images}
    if len(set(shapes.values())) > 1:
        raise UnsupportedCheckpointError(f"input_features: all cameras must have one shape (C, H, W), got {shapes}")
    if any(len(s) != 3 for s in shapes.values()):
        raise UnsupportedCheckpointError(f"input_features: images must be (C, H, W), got {shapes}")
    action = outputs.get(ACTION_KEY)
    if not isinstance(action, Mapping) or action.get("type") != "ACTION":
        raise UnsupportedCheckpointError(f"config.json: output_features needs an ACTION named 'action', got {outputs}")
    act = _shape(action, ACTION_KEY)
    for name, shape in (("observation.state", state), ("observation.environment_state", env), ("action", act)):
        if shape is not None and len(shape) != 1:
            raise UnsupportedCheckpointError(f"input_features: {name} must be 1-D, got shape {shape}")
    if env is None and not images:
        raise UnsupportedCheckpointError("config.json: lerobot's DiffusionPolicy needs images or an environment state")
    keys = {OBS_STATE: lerobot_key_to_field(OBS_STATE)}
    if env is not None:
        keys[OBS_ENV_STATE] = lerobot_key_to_field(OBS_ENV_STATE)
    keys.update({k: lerobot_key_to_field(k) for k in images})
    keys[ACTION_KEY] = ACTION_KEY
    return _Features(state[0], env[0] if env else None, images, next(iter(shapes.values()), None), act[0], keys)


# ---------------------------------------------------------------------------------- refusals
def _refuse_unsupported(cfg: Mapping[str, Any], feats: _Features) -> None:
    """All the settings robopolicy cannot reproduce, in one error."""
    unknown = sorted(set(cfg) - MAPPED_SETTINGS - IGNORED_SETTINGS)
    missing = [k for k in REQUIRED_SETTINGS + (IMAGE_SETTINGS if feats.images else ()) if k not in cfg]
    if missing:
        raise UnsupportedCheckpointError(f"config.json has no {missing}; is it a lerobot 0.4 DiffusionConfig?")
    bad: list[str] = []

    def refuse(setting: str, why: str, value: Any = None) -> None:
        bad.append(f"{setting}={json.dumps(cfg.get(setting) if value is None else value)}: {why}")

    if unknown:
        bad.append(f"{unknown}: settings this converter does not know (a lerobot newer than 0.4?); not guessed")
    if cfg.get("use_peft"):
        refuse("use_peft", "PEFT adapter weights are not part of the base network; merge them in lerobot first")
    if not cfg["use_film_scale_modulation"]:
        refuse("use_film_scale_modulation", "FiLM with a bias only; robopolicy's U-Net always applies scale and bias")
    if cfg["n_groups"] != LEROBOT_GROUP_NORM_GROUPS_IN_HEAD:
        refuse(
            "n_groups",
            "lerobot's final conv block always has 8 GroupNorm groups while robopolicy's head has n_groups; the "
            "networks differ unless n_groups is 8",
        )
    if int(cfg["kernel_size"]) % 2 == 0:
        refuse("kernel_size", "robopolicy's U-Net needs an odd kernel size")
    if cfg["clip_sample"] and float(cfg.get("clip_sample_range", 1.0)) != 1.0:
        refuse("clip_sample_range", "robopolicy clips each x0 estimate to [-1, 1] only")
    if cfg["beta_schedule"] not in BETA_SCHEDULES:
        refuse("beta_schedule", f"robopolicy builds {list(BETA_SCHEDULES)}")
    if cfg["prediction_type"] not in [p.value for p in PredictionType]:
        refuse("prediction_type", f"robopolicy's view takes {[p.value for p in PredictionType]}")
    if cfg["noise_scheduler_type"] not in ("DDPM", "DDIM"):
        refuse("noise_scheduler_type", "only DDPM and DDIM have a robopolicy sampler equal to lerobot's")
    steps = cfg.get("num_inference_steps")
    if steps is not None and not 1 <= int(steps) <= int(cfg["num_train_timesteps"]):
        refuse("num_inference_steps", f"must be in [1, num_train_timesteps={cfg['num_train_timesteps']}]")
    if feats.images:
        _refuse_image_settings(cfg, feats, refuse)
    if bad:
        raise UnsupportedCheckpointError(
            "this lerobot DiffusionPolicy uses what robopolicy cannot reproduce:\n  - " + "\n  - ".join(bad)
        )


def _refuse_image_settings(cfg: Mapping[str, Any], feats: _Features, refuse) -> None:
    if cfg["vision_backbone"] != "resnet18":
        refuse("vision_backbone", "robopolicy's image encoder is a ResNet-18")
    if not cfg["use_group_norm"]:
        refuse(
            "use_group_norm",
            "a BatchNorm ResNet (lerobot's setting with pretrained_backbone_weights); robopolicy's ResNet-18 has "
            "GroupNorm (channels // 16 groups) only",
        )
    if cfg.get("resize_shape") is not None:
        refuse("resize_shape", "robopolicy's image encoder has no resize step")
    crop = cfg.get("crop_shape")
    if crop is not None:
        _, h, w = feats.image_shape
        ch, cw = (int(c) for c in crop)
        if ch > h or cw > w:
            refuse("crop_shape", f"larger than the images ({h}, {w})")
        elif any(int(round((n - c) / 2.0)) != (n - c) // 2 for n, c in ((h, ch), (w, cw))):
            refuse(
                "crop_shape",
                f"the center crop of ({h}, {w}) to {crop} starts one pixel later in torchvision (rounded offset) "
                "than in robopolicy (floored offset)",
            )
    if IMAGE_OUTPUT_ACTIVATION_FIELD not in {f.name for f in dataclasses.fields(ObsEncoderConfig)}:
        refuse(
            "input_features (cameras)",
            value=list(feats.images),
            why="lerobot's DiffusionRgbEncoder applies a ReLU after its output Linear (rgb_encoder.out); robopolicy's "
            "ImageEncoder has no activation there (ObsEncoderConfig has no output_activation), so image "
            "checkpoints cannot be converted yet",
        )


# ---------------------------------------------------------------------------------- processors
@dataclasses.dataclass(frozen=True)
class _Stats:
    """One (un)normalizer step: each feature's type, the mode of each type, eps and the stats."""

    path: Path
    types: dict[str, str]
    modes: dict[str, str]
    eps: float
    stats: dict[str, dict[str, torch.Tensor]]
    keys: frozenset[str] | None  # normalize_observation_keys (None: all)

    def mode(self, key: str) -> str:
        if self.keys is not None and key not in self.keys and self.types.get(key) != "ACTION":
            return "IDENTITY"
        return self.modes.get(self.types.get(key, ""), "IDENTITY")


def _processor(src: Path, name: str, registry: str, notes: list[str]) -> _Stats:
    path = src / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: lerobot >= 0.4 saves normalization in the processor files beside the policy "
            "(save the pre- and post-processor with save_pretrained into the same directory)"
        )
    doc = _read_json(path, "a lerobot processor pipeline")
    chosen = None
    for i, step in enumerate(doc.get("steps") or []):
        reg = step.get("registry_name")
        conf = step.get("config") or {}
        if reg == registry and chosen is None:
            chosen = step
        elif reg == "device_processor" and conf.get("float_dtype") not in (None, "float32"):
            raise UnsupportedCheckpointError(
                f"{path} step {i} (device_processor): float_dtype={conf['float_dtype']!r}; robopolicy runs float32"
            )
        elif reg == "rename_observations_processor" and conf.get("rename_map"):
            notes.append(f"{name}: inputs renamed by {conf['rename_map']} in lerobot; pass the policy's own keys here")
        elif reg not in KNOWN_PROCESSOR_STEPS:
            raise UnsupportedCheckpointError(
                f"{path} step {i} ({reg or step.get('class')!r}) transforms data in a way this converter does not "
                f"reproduce (it knows {sorted(KNOWN_PROCESSOR_STEPS | {registry})})"
            )
    if chosen is None:
        raise UnsupportedCheckpointError(f"{path} has no {registry!r} step")
    conf = chosen.get("config") or {}
    if "state_file" not in chosen:
        raise UnsupportedCheckpointError(f"{path}: the {registry} step has no state_file (no stats saved)")
    flat = _read_weights(src / chosen["state_file"])
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for flat_key, tensor in flat.items():
        key, stat = flat_key.rsplit(".", 1)
        stats.setdefault(key, {})[stat] = tensor.double()
    types = {k: v.get("type") for k, v in (conf.get("features") or {}).items()}
    keys = conf.get("normalize_observation_keys")
    return _Stats(
        path,
        types,
        dict(conf.get("norm_map") or {}),
        float(conf.get("eps", 1e-8)),
        stats,
        frozenset(keys) if keys else None,
    )


# ---------------------------------------------------------------------------------- specs and stats
def _specs(feats: _Features, post: _Stats) -> tuple[ObservationSpec, ActionSpec]:
    fields = [FieldSpec(feats.keys[OBS_STATE], (feats.state,))]
    if feats.env_state is not None:
        fields.append(FieldSpec(feats.keys[OBS_ENV_STATE], (feats.env_state,)))
    for k in feats.images:
        c, h, w = feats.image_shape
        fields.append(FieldSpec(feats.keys[k], (h, w, c), FieldKind.IMAGE))
    st = post.stats.get(ACTION_KEY, {})
    if "min" not in st or "max" not in st:
        raise UnsupportedCheckpointError(
            f"{post.path}: the action stats have no min / max (have {sorted(st)}); robopolicy's action spec needs "
            "the limits"
        )
    lo, hi = _vector(st["min"], feats.action, "action min"), _vector(st["max"], feats.action, "action max")
    pad = 1e-6 * torch.clamp(lo.abs(), min=1.0)  # a dimension constant in the data still needs low < high
    const = hi <= lo
    hi = torch.where(const, lo + pad, hi)
    lo = torch.where(const, lo - pad, lo)
    names = tuple(f"action_{i}" for i in range(feats.action))
    return ObservationSpec(tuple(fields)), ActionSpec(names, tuple(lo.tolist()), tuple(hi.tolist()))


def _vector(t: torch.Tensor, n: int, what: str) -> torch.Tensor:
    """A per-dimension stat as (n,) float64; a (n, 1, 1) image stat or a broadcast (1, ...) one too."""
    t = t.double()
    if t.numel() == 1:
        return t.reshape(1).expand(n).clone()
    if t.numel() == n and (t.ndim == 1 or t.shape[0] == n):
        return t.reshape(n)
    raise UnsupportedCheckpointError(f"{what}: stats of shape {tuple(t.shape)} are not one value per dimension ({n})")


_OUR_MODE = {"MIN_MAX": NormMode.LIMITS, "QUANTILES": NormMode.LIMITS, "QUANTILE10": NormMode.LIMITS}
_OUR_MODE.update({"MEAN_STD": NormMode.GAUSSIAN, "IDENTITY": NormMode.IDENTITY})
_RANGE_STATS = {"MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}


def _affine(mode: str, st: Mapping[str, torch.Tensor], n: int, eps: float, key: str, *, inverse_only: bool):
    """lerobot's map of ``key`` as ``x * scale + offset`` on (n,) dims (float64).

    ``inverse_only``: the map is used only to unnormalize (actions): MEAN_STD then inverts
    lerobot's ``y * std + mean``, which has no eps."""
    if mode == "IDENTITY":
        return torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    if mode in _RANGE_STATS:
        lo_name, hi_name = _RANGE_STATS[mode]
        lo, hi = (_vector(_stat(st, s, key, mode), n, f"{key}.{s}") for s in (lo_name, hi_name))
        denom = torch.where(hi - lo == 0, torch.full_like(lo, eps), hi - lo)
        return 2.0 / denom, -1.0 - 2.0 * lo / denom
    if mode == "MEAN_STD":
        mean, std = (_vector(_stat(st, s, key, mode), n, f"{key}.{s}") for s in ("mean", "std"))
        if inverse_only:
            if bool((std <= 0).any()):
                raise UnsupportedCheckpointError(f"{key}: MEAN_STD with a zero std cannot be written as an affine map")
            return 1.0 / std, -mean / std
        denom = std + eps
        return 1.0 / denom, -mean / denom
    raise UnsupportedCheckpointError(f"{key}: normalization mode {mode!r} is not one of {sorted(_OUR_MODE)}")


def _stat(st: Mapping[str, torch.Tensor], name: str, key: str, mode: str) -> torch.Tensor:
    if name not in st:
        raise UnsupportedCheckpointError(f"{key}: {mode} normalization needs the stat {name!r} (have {sorted(st)})")
    return st[name]


def _info(st: Mapping[str, torch.Tensor], n: int, key: str, unit: float = 1.0) -> dict[str, torch.Tensor]:
    """The informational stats our normalizer file holds (NaN where lerobot has none)."""
    out = {}
    for s in ("min", "max", "mean", "std"):
        out[s] = _vector(st[s], n, f"{key}.{s}") * unit if s in st else torch.full((n,), math.nan, dtype=torch.float64)
    return out


def _normalizer(feats: _Features, pre: _Stats, post: _Stats) -> tuple[Normalizer, dict[str, NormMode]]:
    norm, modes = Normalizer(), {}
    sizes = {OBS_STATE: feats.state, OBS_ENV_STATE: feats.env_state}
    for lr_key, key in feats.keys.items():
        steps = post if lr_key == ACTION_KEY else pre
        mode = steps.mode(lr_key)
        if mode != "IDENTITY" and lr_key not in steps.stats:
            raise UnsupportedCheckpointError(
                f"{steps.path}: no stats for {lr_key!r} although its mode is {mode} (lerobot would pass it "
                "unnormalized); refusing rather than guessing"
            )
        st = steps.stats.get(lr_key, {})
        if lr_key in feats.images:
            c = feats.image_shape[0]
            scale, offset = _affine(mode, st, c, steps.eps, lr_key, inverse_only=False)
            stats = {"scale": scale / 255.0, "offset": offset, **_info(st, c, lr_key, 255.0)}
            modes[key] = NormMode.IMAGE  # lerobot's images are x / 255: the map of the uint8 image
        else:
            n = feats.action if lr_key == ACTION_KEY else sizes[lr_key]
            scale, offset = _affine(mode, st, n, steps.eps, lr_key, inverse_only=lr_key == ACTION_KEY)
            stats = {"scale": scale, "offset": offset, **_info(st, n, lr_key)}
            modes[key] = _OUR_MODE[mode]
        norm.modes[key] = modes[key]
        norm.stats[key] = {k: v.float() for k, v in stats.items()}
    return norm, modes


# ---------------------------------------------------------------------------------- config
def _diffusion_config(
    cfg: Mapping[str, Any],
    feats: _Features,
    obs_spec: ObservationSpec,
    action_spec: ActionSpec,
    modes: dict[str, NormMode],
) -> DiffusionConfig:
    if modes[ACTION_KEY] is NormMode.GAUSSIAN and cfg["clip_sample"]:
        raise UnsupportedCheckpointError(
            "ACTION normalization MEAN_STD with clip_sample=true: robopolicy refuses this pair (x0 clipped to "
            "[-1, 1] cuts z-scored actions); the lerobot policy clips them the same way, so check it was intended"
        )
    encoder = ObsEncoderConfig()
    if feats.images:
        kp = int(cfg["spatial_softmax_num_keypoints"])
        crop = tuple(int(c) for c in cfg["crop_shape"]) if cfg.get("crop_shape") is not None else None
        extra = {IMAGE_OUTPUT_ACTIVATION_FIELD: "relu"}
        encoder = ObsEncoderConfig(image_width=64, image_feature_dim=2 * kp, num_kp=kp, crop_shape=crop, **extra)
    sampler = SamplerMethod.DDPM if cfg["noise_scheduler_type"] == "DDPM" else SamplerMethod.DDIM
    steps = cfg.get("num_inference_steps") or cfg["num_train_timesteps"]
    try:
        return DiffusionConfig(
            obs_spec=obs_spec,
            action_spec=action_spec,
            horizon=int(cfg["horizon"]),
            n_obs_steps=int(cfg["n_obs_steps"]),
            n_action_steps=int(cfg["n_action_steps"]),
            normalization=modes,
            backbone=UnetConfig(
                down_dims=tuple(int(d) for d in cfg["down_dims"]),
                kernel_size=int(cfg["kernel_size"]),
                n_groups=int(cfg["n_groups"]),
                diffusion_step_embed_dim=int(cfg["diffusion_step_embed_dim"]),
            ),
            obs_encoder=encoder,
            noise=NoiseScheduleConfig(
                num_train_timesteps=int(cfg["num_train_timesteps"]),
                beta_start=float(cfg["beta_start"]),
                beta_end=float(cfg["beta_end"]),
                beta_schedule=cfg["beta_schedule"],
                clip_sample=bool(cfg["clip_sample"]),
                prediction_type=cfg["prediction_type"],
            ),
            inference=InferenceDefaults(sampler, int(steps)),
        )
    except ValueError as e:
        raise UnsupportedCheckpointError(f"the lerobot settings give no valid robopolicy config: {e}") from None


# ---------------------------------------------------------------------------------- weights
_UNET_RENAMES = (
    (r"^diffusion_step_encoder\.", "step_encoder."),
    (r"^down_modules\.", "down."),
    (r"^mid_modules\.", "mid."),
    (r"^up_modules\.", "up."),
    (r"\.conv1\.block\.", ".block1."),
    (r"\.conv2\.block\.", ".block2."),
    (r"\.cond_encoder\.", ".film."),
    (r"\.residual_conv\.", ".skip."),
    (r"^final_conv\.0\.block\.", "head.0."),
    (r"^final_conv\.1\.", "head.1."),
)
_RESNET_STAGE = re.compile(r"^backbone\.([4-7])\.([01])\.(conv1|bn1|conv2|bn2|downsample\.[01])\.(weight|bias)$")
_RESNET_STEM = re.compile(r"^backbone\.([01])\.(weight|bias)$")
_BLOCK_PARTS = {"conv1": "conv1", "bn1": "norm1", "conv2": "conv2", "bn2": "norm2"}
_FILM_WEIGHT = re.compile(r"^model\.(down|mid|up)\.\d+(\.\d+)?\.film\.1\.weight$")


def unet_name(name: str) -> str:
    """A lerobot U-Net parameter name (after ``diffusion.unet.``) -> robopolicy's (after ``model.``)."""
    for pattern, repl in _UNET_RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def rgb_encoder_name(name: str) -> str | None:
    """A lerobot rgb-encoder parameter name (after ``rgb_encoder.[i.]``) -> robopolicy's ImageEncoder
    name; None for ``pool.pos_grid`` (a constant robopolicy computes)."""
    if name == "pool.pos_grid":
        return None
    if m := _RESNET_STEM.match(name):
        return f"trunk.stem.{m[1]}.{m[2]}"
    if m := _RESNET_STAGE.match(name):
        stage = 2 * (int(m[1]) - 4) + int(m[2])
        part = m[3].replace("downsample.", "down.") if m[3].startswith("downsample") else _BLOCK_PARTS[m[3]]
        return f"trunk.stages.{stage}.{part}.{m[4]}"
    if name.startswith("pool.nets."):
        return "pool.kp." + name[len("pool.nets.") :]
    if name.startswith("out."):
        return "proj." + name[len("out.") :]
    return name  # unknown: left as is, so the name check below reports it


def _map_state_dict(
    weights: Mapping[str, torch.Tensor], cfg: Mapping[str, Any], feats: _Features, policy: DiffusionPolicy
) -> dict[str, torch.Tensor]:
    """lerobot's state dict under robopolicy's names, checked name by name and shape by shape."""
    ours = policy.state_dict()
    cams = [feats.keys[k].replace(".", "_") for k in feats.images]
    separate = bool(cfg.get("use_separate_rgb_encoder_per_camera"))
    out: dict[str, torch.Tensor] = {}
    unknown, grids = [], []
    for name, t in weights.items():
        if name.startswith("diffusion.unet."):
            targets = ["model." + unet_name(name[len("diffusion.unet.") :])]
        elif name.startswith("diffusion.rgb_encoder.") and cams:
            rest = name[len("diffusion.rgb_encoder.") :]
            owners = cams
            if separate:
                idx, _, rest = rest.partition(".")
                owners = [cams[int(idx)]] if idx.isdigit() and int(idx) < len(cams) else []
            mapped = rgb_encoder_name(rest)
            if mapped is None:
                grids.append((name, t))
                continue
            targets = [f"obs_encoder.cameras.{cam}.{mapped}" for cam in owners]
        else:
            targets = []
        if not targets or any(k not in ours for k in targets):
            unknown.append(name)
            continue
        for k in targets:
            if tuple(ours[k].shape) != tuple(t.shape):
                raise UnsupportedCheckpointError(
                    f"{name}: shape {tuple(t.shape)} does not fit {k} {tuple(ours[k].shape)} (another architecture?)"
                )
            out[k] = t.to(ours[k].dtype).clone()
    left = sorted(set(ours) - set(out))
    if unknown or left:
        raise UnsupportedCheckpointError(
            f"{LEROBOT_WEIGHTS} does not map onto robopolicy's network: lerobot names without a place "
            f"{unknown[:6]}{' ...' if len(unknown) > 6 else ''}, robopolicy names left empty {left[:6]}"
            f"{' ...' if len(left) > 6 else ''}"
        )
    for name, grid in grids:
        _check_pos_grid(name, grid, feats, cfg)
    _permute_cond_columns(out, feats, cfg, policy)
    return out


def _feature_map_size(n: int) -> int:
    """ResNet-18's output size along one axis of n pixels (stride-2 conv 7, max pool, three stride-2 stages)."""
    n = (n + 2 * 3 - 7) // 2 + 1
    for _ in range(4):
        n = (n + 2 - 3) // 2 + 1
    return n


def _check_pos_grid(name: str, grid: torch.Tensor, feats: _Features, cfg: Mapping[str, Any]) -> None:
    """lerobot stores the spatial softmax's coordinate grid; robopolicy computes the same one."""
    _, h, w = feats.image_shape
    if cfg.get("crop_shape") is not None:
        h, w = (int(c) for c in cfg["crop_shape"])
    fh, fw = _feature_map_size(h), _feature_map_size(w)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, fh), torch.linspace(-1, 1, fw), indexing="ij")
    expected = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)
    if tuple(grid.shape) != tuple(expected.shape) or not torch.allclose(grid.float(), expected, atol=1e-6):
        raise UnsupportedCheckpointError(
            f"{name}: a keypoint grid of shape {tuple(grid.shape)} is not the [-1, 1] grid of the {fh}x{fw} "
            "feature map robopolicy's spatial softmax uses"
        )


def _permute_cond_columns(
    out: dict[str, torch.Tensor], feats: _Features, cfg: Mapping[str, Any], policy: DiffusionPolicy
) -> None:
    """lerobot concatenates [state, cameras, env state] per obs step, robopolicy [state, env state,
    cameras]: reorder the global-cond columns of every FiLM Linear (after the step embedding)."""
    img = 2 * int(cfg.get("spatial_softmax_num_keypoints", 0)) if feats.images else 0
    theirs = [("state", feats.state)] + [(k, img) for k in feats.images]
    if feats.env_state is not None:
        theirs.append(("env", feats.env_state))
    ours = [s for s in theirs if s[0] in ("state", "env")] + [s for s in theirs if s[0] not in ("state", "env")]
    if ours == theirs:
        return
    start, offsets = 0, {}
    for name, size in theirs:
        offsets[name] = start
        start += size
    perm = torch.cat([torch.arange(offsets[name], offsets[name] + size) for name, size in ours])
    d, to = len(perm), policy.config.n_obs_steps
    cols = torch.cat([t * d + perm for t in range(to)])
    dsed = policy.config.backbone.diffusion_step_embed_dim
    for k in [k for k in out if _FILM_WEIGHT.match(k)]:
        w = out[k]
        out[k] = torch.cat([w[:, :dsed], w[:, dsed:][:, cols]], dim=1)
