"""The policy contract: base class, registry, typed config and save/load.

Every policy is a ``torch.nn.Module`` registered by name with ``@register_policy("name")``
and built from a frozen dataclass config (a subclass of :class:`PolicyConfig`). It provides:

* ``compute_loss(batch) -> (loss, metrics)``; ``batch = {"obs": {key: (B, To, ...)},
  "action": (B, H, Da)}`` in env units (images uint8 HWC).
* ``predict_action_chunk(obs, *, num_samples=1, generator=None)`` -> env-unit actions
  (B, H, Da), or (B, N, H, Da) when ``num_samples > 1``. ``obs = {key: (B, To, ...)}``.
  ``generator`` is one ``torch.Generator`` or a list with one per batch element (as in
  diffusers); with a list, element i's noise comes only from ``generator[i]``, so a batch of
  N equals N single calls with the same generators. Use :func:`batch_randn`.
* ``reset(env_ids=None)``: clear per-episode state.
* ``save(dir)`` / ``Policy.load(dir)``: ``config.json`` + ``model.safetensors`` +
  ``normalizer.safetensors``. No pickle; loading needs no training code nor dataset. A truncated
  or corrupt file is a ``ValueError`` naming it.

Checked at the contract, for every policy by construction: the base class wraps each subclass's
``predict_action_chunk`` (in ``__init_subclass__``, keeping its signature for introspection) in
:meth:`Policy.check_obs` before and :meth:`Policy.check_predicted_actions` after, so no policy
can skip them:

* inputs: every key ``(B, To, *shape)`` exactly (more frames than ``To`` are refused, not
  trimmed; a missing batch dim is reported with the shape as passed), ``B >= 1`` and the same
  for all keys; values finite and, after normalization, within ``max_abs_normalized_obs``
  (1e4: training data maps to about [-1, 1], so this is thousands of training ranges away --
  a unit mix-up or garbage, which the network would turn into garbage actions; it also
  refuses values that overflow float32). uint8 inputs (images) are bounded by their type and
  skip the value check. Errors name the key, the batch row and the frame.
* outputs: shape (B, H, Da) / (B, N, H, Da) and every action finite; a non-finite action is a
  :class:`NonFiniteActionError`, never returned (nor hidden by snapping a NaN gripper to a limit).

Chunk timing (H = horizon, To = n_obs_steps, Ta = n_action_steps)::

    obs steps      |o o|                       (To = 2, newest obs at index To-1)
    action chunk   |a a a a a a a a a a a a a a a a|   (H = 16)
    executed          |a a a a a a a a|               [To-1, To-1+Ta)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from robopolicy.config import apply_overrides, from_dict, load_yaml, merge_dicts, to_dict
from robopolicy.data.normalizer import ACTION_KEY, Normalizer, NormMode, normalization_modes
from robopolicy.data.windows import DataWindows
from robopolicy.inference.engine import EngineConfig, NetworkEngine, build_engine, cpu_threads
from robopolicy.inference.output import PolicyOutput
from robopolicy.nn.configs import ObsEncoderConfig
from robopolicy.types import ActionSpec, ChunkTiming, FieldKind, ObservationSpec

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NORMALIZER_FILE = "normalizer.safetensors"

_REGISTRY: dict[str, type[Policy]] = {}


class NonFiniteActionError(RuntimeError):
    """A policy produced NaN or infinite actions from valid inputs (its weights are suspect)."""


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Fields every policy has. Subclasses add their own (all with defaults)."""

    obs_spec: ObservationSpec
    action_spec: ActionSpec
    horizon: int = 16
    """H: length of the predicted action chunk."""
    n_obs_steps: int = 2
    """To: observation frames the policy conditions on (the newest is index To-1)."""
    n_action_steps: int = 8
    """Ta: actions executed per chunk, starting at index To-1."""
    normalization: dict[str, NormMode] = dataclasses.field(default_factory=dict)
    """Normalization mode per key, e.g. ``{state: gaussian, action: limits}``; a key not named
    gets the default: ``limits`` for low-dim obs and actions, ``image`` for images."""
    preset_name: ClassVar[str] = ""
    """The policy name a preset of this config may carry (``policy: <name>``)."""
    parts: ClassVar[dict[str, type]] = {}
    """The subclass's nested config parts by field name, each checked to be of its type (a
    plain dict left by a caller is refused with the part's name); an ``obs_encoder`` part is
    also checked against the observation spec."""
    discrete_action_scale: float = 1.0
    """Discrete action dims (grippers) are not fitted but multiplied by this in the normalized
    coordinate (1: left as they are; 0.1: RTI's scaled-gripper training, +-1 stored as +-0.1)."""

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        ChunkTiming(self.horizon, self.n_obs_steps, self.n_action_steps)  # validates
        normalization_modes(self.normalization, self.obs_spec)  # names a bad key or mode
        object.__setattr__(self, "normalization", {k: NormMode(m) for k, m in self.normalization.items()})
        if not (np.isfinite(self.discrete_action_scale) and self.discrete_action_scale > 0):
            raise ValueError(f"discrete_action_scale must be finite and > 0, got {self.discrete_action_scale}")
        for name, part in self.parts.items():
            if not isinstance(getattr(self, name), part):
                raise TypeError(f"{name} must be a {part.__name__}, got {getattr(self, name)!r}")
        encoder = getattr(self, "obs_encoder", None)
        if isinstance(encoder, ObsEncoderConfig):
            with config_part("obs_encoder"):
                encoder.check_images(self.obs_spec)

    @property
    def timing(self) -> ChunkTiming:
        return ChunkTiming(self.horizon, self.n_obs_steps, self.n_action_steps)

    def data_windows(self) -> DataWindows:
        """The training windows this policy needs (the trainer builds its datasets from them).

        Default: Diffusion Policy's -- ``To`` frames of every observation key ending at the
        anchor, ``H`` actions from ``To - 1`` steps before it, random windows. A policy that
        needs goal frames, strided frames or sequential episode streams overrides this.
        """
        return DataWindows.from_timing(self.obs_spec.keys, self.horizon, self.n_obs_steps, self.n_action_steps)

    def to_dict(self) -> dict:
        return {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_preset(
        cls, path: str | Path, obs_spec: ObservationSpec, action_spec: ActionSpec, overrides: Sequence[str] = ()
    ) -> PolicyConfig:
        """Build from a ``configs/policies/*.yaml`` preset plus dotted overrides. The preset's
        optional ``policy: <name>`` entry must name this config's policy (``preset_name``)."""
        data = load_yaml(path)
        name = data.pop("policy", cls.preset_name)
        if name != cls.preset_name:
            raise ValueError(f"{path} is a preset for policy {name!r}, not {cls.preset_name!r}")
        data = merge_dicts(data, apply_overrides({}, list(overrides)))
        data.update(obs_spec=obs_spec, action_spec=action_spec)
        return from_dict(cls, data)


@contextlib.contextmanager
def config_part(name: str) -> Iterator[None]:
    """Prefix a config part's ValueError with the part's name (``backbone: horizon must be ...``)."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def register_policy(name: str):
    """Class decorator: ``@register_policy("diffusion")`` on a Policy subclass."""

    def wrap(cls: type[Policy]) -> type[Policy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"policy name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"@register_policy({name!r}) must decorate a Policy subclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


# Built-in policies: name -> the module that registers it. Loading a checkpoint imports only the
# module its config.json names (or this entry), never every policy.
BUILTIN_POLICIES: dict[str, str] = {
    "diffusion": "robopolicy.policies.diffusion",
    "beso": "robopolicy.policies.beso",
    "ebt": "robopolicy.policies.ebt",
    "seed": "robopolicy.policies.seed",
}
ENTRY_POINT_GROUP = "robopolicy.policies"
"""Entry-point group through which packages outside robopolicy register policies
(``[project.entry-points."robopolicy.policies"] mypolicy = "mypkg.policy"``: the module that
registers it)."""


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def import_policy_module(name: str, module: str | None = None) -> None:
    """Import the one module that registers policy ``name``: ``module`` (from a checkpoint), a
    built-in, or an entry point of the ``robopolicy.policies`` group."""
    import importlib

    if name in _REGISTRY:
        return
    if module:
        importlib.import_module(module)
    elif name in BUILTIN_POLICIES:
        importlib.import_module(BUILTIN_POLICIES[name])
    elif name in (eps := _entry_points()):
        eps[name].load()


def registered_policies() -> dict[str, type[Policy]]:
    """Every policy: the built-ins and the entry points are imported (the contract tests run over all)."""
    for name in [*BUILTIN_POLICIES, *_entry_points()]:
        import_policy_module(name)
    return dict(_REGISTRY)


def get_policy_class(name: str, module: str | None = None) -> type[Policy]:
    """The class registered as ``name``, importing only the module that defines it."""
    try:
        import_policy_module(name, module)
    except ImportError as e:
        raise ValueError(f"policy {name!r}: cannot import its module ({e})") from None
    if name not in _REGISTRY:
        known = sorted({*_REGISTRY, *BUILTIN_POLICIES, *_entry_points()})
        raise KeyError(f"unknown policy {name!r}; known: {known}")
    return _REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Inference options of a policy that has none."""


class Policy(nn.Module):
    """Base class. Subclasses set ``config_class`` and implement the abstract methods."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    options_class: ClassVar[type] = NoOptions
    """Frozen dataclass of the policy's inference options (sampler, steps...); every field has a
    default, ``None`` meaning "the config's"."""
    observes_every_step: ClassVar[bool] = False
    """True: the runner / controller calls :meth:`observe` after every environment step."""
    max_abs_normalized_obs: ClassVar[float] = 1e4
    """Largest |observation| accepted after normalization (training data spans about [-1, 1])."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for final in ("predict", "predict_action_chunk"):
            if final in cls.__dict__:
                raise TypeError(
                    f"{cls.__qualname__} overrides {final}(): implement _predict() instead, so that the "
                    "contract's input and output checks always run"
                )

    def __init__(self, config: PolicyConfig, normalizer: Normalizer | None = None) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.normalizer = normalizer if normalizer is not None else Normalizer()

    # ------------------------------------------------------------------ contract
    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def predict(
        self,
        obs: Mapping[str, Any],
        *,
        env_ids: Sequence[int] | None = None,
        generator: Generators = None,
        num_samples: int = 1,
        options: Any = None,
    ) -> PolicyOutput:
        """Action chunks and extras for a batch of environments.

        ``obs = {key: (B, To, ...)}`` in env units; ``env_ids[b]`` is the environment of row b
        (per-episode state is keyed by it; default ``range(B)``); ``generator`` one
        ``torch.Generator`` or one per row (row b's noise from ``generator[b]`` alone);
        ``options`` the policy's typed inference options (an ``options_class`` instance or a
        dict of its fields). Returns :class:`~robopolicy.inference.output.PolicyOutput` with
        actions (B, H, Da) or (B, N, H, Da). Inputs and outputs are checked here, for every
        policy; the grad mode is the policy's own (:meth:`inference_mode`).
        """
        batch_size = self.check_obs(obs)
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        ids = list(range(batch_size)) if env_ids is None else [int(e) for e in env_ids]
        if len(ids) != batch_size or len(set(ids)) != len(ids):
            raise ValueError(f"env_ids must name {batch_size} distinct environments (one per row), got {env_ids}")
        if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}")
        opts = self.resolve_options(options)
        with self.inference_mode(), cpu_threads(self.engine_config.threads):
            out = self._predict(obs, env_ids=ids, generator=generator, num_samples=int(num_samples), options=opts)
        if not isinstance(out, PolicyOutput):
            out = PolicyOutput(out)
        self.check_predicted_actions(out.actions, batch_size, int(num_samples))
        return out

    def _predict(
        self, obs: Mapping[str, Any], *, env_ids: list[int], generator: Generators, num_samples: int, options: Any
    ) -> PolicyOutput | torch.Tensor:
        """Subclasses implement this (inputs already checked; outputs checked after)."""
        raise NotImplementedError

    def predict_action_chunk(
        self, obs: Mapping[str, Any], *, num_samples: int = 1, generator: Generators = None, **options: Any
    ) -> torch.Tensor:
        """The actions of :meth:`predict` alone (keyword options: the policy's inference options)."""
        return self.predict(obs, generator=generator, num_samples=num_samples, options=options or None).actions

    def resolve_options(self, options: Any = None) -> Any:
        """The policy's typed inference options from None, a dict of fields, or an instance."""
        cls = self.options_class
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if isinstance(options, Mapping):
            fields = {f.name for f in dataclasses.fields(cls)}
            bad = sorted(set(options) - fields)
            if bad:
                raise ValueError(f"policy {self.name!r} has no inference option {bad} (its options: {sorted(fields)})")
            return from_dict(cls, {k: v for k, v in options.items() if v is not None})
        raise TypeError(f"options must be a {cls.__name__} or a dict, got {type(options).__name__}")

    def inference_mode(self) -> Any:
        """The grad mode of inference and validation (default: no autograd). A policy that infers
        by gradient descent (EBT) returns ``torch.enable_grad()``."""
        return torch.no_grad()

    # ------------------------------------------------------------------ inference engine
    def set_engine(self, engine: EngineConfig | str | Mapping[str, Any] | None = None) -> Policy:
        """Choose how the policy's networks run at inference (:mod:`robopolicy.inference.engine`):
        a backend name (``"gemm"``, ``"compiled"``, ``"onnx"``, ``"eager"``, ``"auto"``), a dict of
        :class:`EngineConfig` fields or an instance. Moves the policy to the engine's device.
        Training (``compute_loss``) never uses the engine. Returns the policy."""
        cfg = EngineConfig.parse(engine)
        dev = cfg.resolve_device(self.device)
        cfg = cfg.on(dev)
        if dev != self.device:
            self.to(dev)
        self.__dict__["_engine_config"] = cfg
        self.__dict__.pop("_engines", None)
        self.__dict__.pop("_view", None)
        self.__dict__.pop("_graphs", None)
        return self

    @property
    def engine_config(self) -> EngineConfig:
        return self.__dict__.get("_engine_config") or EngineConfig()

    def network_engine(self, network: nn.Module) -> NetworkEngine:
        """The inference engine of one of the policy's networks: built on first use, rebuilt when
        its weights, the device or the train/eval mode change (in train mode: the network as is)."""
        engines = self.__dict__.setdefault("_engines", {})
        key = (id(network), self.training, str(self.device))
        engine = engines.get(key)
        if engine is None or engine.network is not network or engine.stale():
            cfg = EngineConfig(backend="eager") if self.training else self.engine_config
            engine = engines[key] = build_engine(network, cfg, self.device)
        return engine

    def module_engine(self, module: nn.Module) -> Any:
        """A one-input module run once per chunk (a camera's image encoder) as the engine runs it:
        in ONNX Runtime under ``auto`` / ``onnx`` / ``compiled`` on a CPU (``compiled`` is a
        denoising-network engine; the encoders' fast path is ONNX), else the module itself (and
        always the module itself in train mode). Rebuilt when the module's weights change."""
        from robopolicy.inference.engine import Backend, _has_onnxruntime

        cfg = self.engine_config
        fast = (Backend.AUTO, Backend.ONNX, Backend.COMPILED)
        if self.training or self.device.type != "cpu" or cfg.backend not in fast:
            return module
        if not _has_onnxruntime():
            return module
        from robopolicy.inference.engines import OnnxModule

        engines = self.__dict__.setdefault("_engines", {})
        key = ("module", id(module), str(self.device))
        engine = engines.get(key)
        if engine is None or engine.network is not module or engine.stale():
            engine = engines[key] = OnnxModule(module, cfg)
        return engine

    def reset(self, env_ids: Sequence[int] | None = None) -> None:
        """Clear the per-episode state of ``env_ids`` (all if None). Stateless policies do nothing."""

    def training_carry(self) -> dict[str, torch.Tensor]:
        """State a recurrent policy carries from one training batch to the next (tensors); the
        trainer saves it in every checkpoint so a resumed run continues exactly. Default: none."""
        return {}

    def load_training_carry(self, carry: Mapping[str, torch.Tensor]) -> None:
        """Restore :meth:`training_carry` (an empty mapping: start without one)."""

    def observe(self, obs: Mapping[str, Any], *, env_ids: Sequence[int]) -> None:
        """Every environment step's observation ``{key: (B, ...)}`` (only if ``observes_every_step``)."""

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def fit_normalizer(self, fields: Mapping[str, np.ndarray]) -> Normalizer:
        """Fit the normalizer on whole store arrays ``fields`` (``{key: (N, ...)}`` and ``action``).

        Modes per key from ``config.normalization`` (default: limits for low-dim obs and actions,
        image -- uint8 to [-1, 1] -- for images). Discrete action dims (grippers) are not fitted:
        they are multiplied by ``config.discrete_action_scale`` (1: left as they are)."""
        cfg = self.config
        modes = normalization_modes(cfg.normalization, cfg.obs_spec)
        norm = Normalizer()
        for f in cfg.obs_spec.fields:
            if f.kind is FieldKind.IMAGE:
                norm.set_image(f.key)
                continue
            if f.key not in fields:
                raise KeyError(f"dataset has no field {f.key!r} needed by the policy's observation spec")
            norm.fit(f.key, np.asarray(fields[f.key]).reshape(len(fields[f.key]), -1), modes[f.key])
        if ACTION_KEY not in fields:
            raise KeyError(f"dataset has no field {ACTION_KEY!r}")
        action = np.asarray(fields[ACTION_KEY])
        if action.shape[-1] != cfg.action_spec.dim:
            raise ValueError(
                f"dataset {ACTION_KEY!r} has {action.shape[-1]} dims, action spec has {cfg.action_spec.dim}"
            )
        keep = [i for i, d in enumerate(cfg.action_spec.discrete) if d]
        norm.fit(ACTION_KEY, action, modes[ACTION_KEY], keep_dims=keep, keep_scale=cfg.discrete_action_scale)
        self.normalizer = norm
        return norm

    def normalize_obs(self, obs: Mapping[str, Any], leading: int = 2) -> dict[str, torch.Tensor]:
        """Validate env-unit obs ``{key: (B, To, ...)}`` and return normalized float tensors.

        Images become float CHW in [-1, 1]: ``(B, To, C, H, W)``.
        """
        spec = self.config.obs_spec
        spec.validate(obs, leading=leading)
        out = {}
        dev = self.device
        for f in spec.fields:
            x = torch.as_tensor(np.asarray(obs[f.key]) if not isinstance(obs[f.key], torch.Tensor) else obs[f.key])
            x = x.to(dev)
            if f.kind is FieldKind.IMAGE:
                x = self.normalizer.normalize(f.key, x.float()).movedim(-1, -3).contiguous()
            else:
                lead = x.shape[: x.ndim - len(f.shape)]
                x = self.normalizer.normalize(f.key, x.float().reshape(*lead, -1))
            out[f.key] = x
        return out

    def check_obs(self, obs: Mapping[str, Any]) -> int:
        """Validate a policy input ``{key: (B, To, *shape)}`` in env units; return ``B``.

        Shapes by :meth:`ObservationSpec.validate_batch`; then every value must be finite and,
        after normalization, within ``max_abs_normalized_obs`` (keys the normalizer does not
        know: in raw units). uint8 / bool inputs skip the value check. The check runs where the
        data lives (CPU arrays stay on the CPU). Errors name the key, the batch row and the frame.
        """
        spec = self.config.obs_spec
        b = spec.validate_batch(obs, self.config.n_obs_steps)
        for f in spec.fields:
            self._check_obs_values(f.key, f.kind, obs[f.key])
        return b

    def _check_obs_values(self, key: str, kind: FieldKind, value: Any) -> None:
        x = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        if x.dtype in (torch.uint8, torch.bool):
            return
        if key in self.normalizer:
            flat = x if kind is FieldKind.IMAGE else x.reshape(*x.shape[:2], -1)
            xn = self.normalizer.normalize(key, flat).reshape(x.shape)
        else:
            xn = x.float()
        bound = self.max_abs_normalized_obs
        if float(xn.abs().amax()) <= bound:  # NaN compares False
            return
        bad = ~(xn.abs() <= bound)
        idx = tuple(int(i) for i in bad.nonzero()[0])
        row, frame, elem = idx[0], idx[1], idx[2:]
        where = f"batch row {row}, frame {frame}"
        if elem:
            where += f", dim {elem[0]}" if len(elem) == 1 else f", element {elem}"
        raw, norm = float(x[idx]), float(xn[idx])
        count = f"{int(bad.sum())} bad value(s) in all"
        if not np.isfinite(raw):
            raise ValueError(f"observation key {key!r} holds a non-finite value ({raw}) at {where}; {count}")
        unit = "after normalization" if key in self.normalizer else "in raw units (no normalizer stats)"
        raise ValueError(
            f"observation key {key!r} is {raw:.6g} at {where}: {norm:.6g} {unit}, beyond the accepted "
            f"+-{bound:g} (the training data spans about [-1, 1]: a unit mix-up or a corrupt reading?); {count}"
        )

    def check_predicted_actions(self, out: Any, batch_size: int, num_samples: int = 1) -> None:
        """The output side of the contract: actions (a tensor, or ``out.actions`` for a policy
        output object) of shape (B, H, Da) or (B, N, H, Da), all finite. Raises
        :class:`NonFiniteActionError` (with the rows and any non-finite parameters) otherwise."""
        a = out if isinstance(out, torch.Tensor) else getattr(out, "actions", None)
        if not isinstance(a, torch.Tensor):
            raise TypeError(
                f"policy {self.name!r}: predict_action_chunk must return actions as a tensor or an output "
                f"object with .actions, got {type(out).__name__}"
            )
        c = self.config
        expected = (batch_size, c.horizon, c.action_spec.dim)
        if num_samples != 1:
            expected = (batch_size, num_samples, *expected[1:])
        if tuple(a.shape) != expected:
            raise RuntimeError(f"policy {self.name!r} returned actions of shape {tuple(a.shape)}, expected {expected}")
        if bool(torch.isfinite(a).all()):
            return
        rows = sorted({int(r) for r in (~torch.isfinite(a)).nonzero()[:, 0]})
        params = [n for n, p in self.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
        cause = (
            f"non-finite parameters: {params[:5]}{' ...' if len(params) > 5 else ''} (corrupt or diverged weights)"
            if params
            else "all parameters are finite (a numerical overflow inside the network?)"
        )
        raise NonFiniteActionError(
            f"policy {self.name!r} produced non-finite actions for batch rows {rows} from finite, in-range "
            f"inputs; refusing to return them. {cause}"
        )

    def initial_noise(self, noise: Any, gens: list[torch.Generator] | None, b: int, n: int) -> torch.Tensor:
        """Standard normal starting chunks (B * N, H, Da), rows element-major: the given ``noise``
        ((B, N, H, Da), or (B, H, Da) when N = 1; checked), else row r drawn from ``gens[r]``
        alone (one generator per output row), else from torch's global generator."""
        shape = (self.config.horizon, self.config.action_spec.dim)
        if noise is not None:
            noise = torch.as_tensor(noise, dtype=torch.float32).to(self.device).clone()  # never the caller's
            if noise.ndim == 3 and n == 1:
                noise = noise[:, None]
            if tuple(noise.shape) != (b, n, *shape):
                raise ValueError(f"noise must have shape {(b, n, *shape)}, got {tuple(noise.shape)}")
            return noise.reshape(b * n, *shape)
        if gens is None:
            return torch.randn((b * n, *shape), device=self.device)
        return torch.stack([torch.randn(shape, generator=g, device=g.device) for g in gens]).to(self.device)

    def snap_discrete(self, action: torch.Tensor) -> torch.Tensor:
        """Env-unit actions (..., Da): discrete dims (grippers) snap to the nearer of low/high.

        Non-finite values stay as they are, so the output check sees them."""
        spec = self.config.action_spec
        idx = [i for i, d in enumerate(spec.discrete) if d]
        if not idx:
            return action
        out = action.clone()
        lo = torch.tensor([spec.low[i] for i in idx], dtype=action.dtype, device=action.device)
        hi = torch.tensor([spec.high[i] for i in idx], dtype=action.dtype, device=action.device)
        a = action[..., idx]
        out[..., idx] = torch.where(torch.isfinite(a), torch.where(a >= (lo + hi) / 2, hi, lo), a)
        return out

    def check_action(self, action: Any) -> torch.Tensor:
        a = torch.as_tensor(np.asarray(action) if not isinstance(action, torch.Tensor) else action)
        exp = (self.config.horizon, self.config.action_spec.dim)
        if a.ndim != 3 or tuple(a.shape[1:]) != exp:
            raise ValueError(f"batch 'action' must have shape (B, {exp[0]}, {exp[1]}), got {tuple(a.shape)}")
        return a.to(self.device).float()

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "policy": self.name,
            "module": type(self).__module__,
            "config": self.config.to_dict(),
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        _atomic(d / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"policy": self.name}))
        norm = self.normalizer
        _atomic(d / NORMALIZER_FILE, lambda p: save_file(norm.state_dict(), str(p), metadata=norm.metadata()))
        _atomic(d / CONFIG_FILE, lambda p: p.write_text(json.dumps(meta, indent=2)))
        return d

    @staticmethod
    def load(directory: str | Path, device: str | torch.device = "cpu") -> Policy:
        d = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE, NORMALIZER_FILE):
            if not (d / name).is_file():
                raise FileNotFoundError(f"not a policy checkpoint: {d / name} is missing")
        try:
            meta = json.loads((d / CONFIG_FILE).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{d / CONFIG_FILE} is not valid JSON: {e}") from None
        for key in ("policy", "config"):
            if key not in meta:
                raise KeyError(f"{d / CONFIG_FILE} has no {key!r} entry")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{d} was saved with format {meta['format_version']}, this build reads <= {FORMAT_VERSION}"
            )
        cls = get_policy_class(meta["policy"], meta.get("module"))
        config = from_dict(cls.config_class, meta["config"])
        tensors, metadata = _read_safetensors(d / NORMALIZER_FILE)
        norm = Normalizer.from_state_dict(tensors, metadata)
        policy = cls(config, normalizer=norm)
        state, _ = _read_safetensors(d / WEIGHTS_FILE)
        missing, unexpected = policy.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{d / WEIGHTS_FILE} does not match {cls.__name__}: missing {missing}, unexpected {unexpected}"
            )
        return policy.to(device).eval()


Generators = torch.Generator | Sequence[torch.Generator] | None


def batch_randn(
    shape: tuple[int, ...], generator: Generators, device: torch.device | str = "cpu", dtype=torch.float32
) -> torch.Tensor:
    """Standard normal noise of ``shape = (B, ...)``.

    With a list of generators, row i is drawn from ``generator[i]`` alone (so batched and
    single calls agree); with one generator or None, the whole tensor is drawn at once.
    Noise is drawn on the generator's device (CPU by default) and moved to ``device``.
    """
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.stack(rows).to(device)
    gdev = generator.device if generator is not None else "cpu"
    return torch.randn(shape, generator=generator, device=gdev, dtype=dtype).to(device)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; ValueError naming it if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as e:
        raise ValueError(f"{path} is truncated or not a safetensors file: {e}") from None


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


def row_generators(generator: Generators, b: int, n: int) -> list[torch.Generator] | None:
    """One generator per output row of a (B * N)-row batch, rows element-major (diffusers' list
    convention): a single generator serves every row, a list must hold one per batch element."""
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return [generator] * (b * n)
    gens = list(generator)
    if len(gens) != b:
        raise ValueError(f"a list of generators must have one per batch element ({b}), got {len(gens)}")
    return [g for g in gens for _ in range(n)]
