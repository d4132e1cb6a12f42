"""Inference engines: how a policy's denoising network is run at inference (never in training).

A denoising policy calls its network once per sampler step with the same observation
condition, many times per chunk, usually at batch 1. The training network is written for big
batches; at batch 1 on a CPU it spends most of its time in PyTorch's slow im2col convolution and
in per-op overhead. An engine is an inference-only copy of the network (the same function to
float tolerance) chosen per situation::

    backend     what runs                                                       build cost
    eager       the training network as is (the reference)                      none
    gemm        CPU: convolutions as single GEMMs, FiLM split into a cached      milliseconds
                per-step table and one per-chunk GEMM (robopolicy.nn.fast_unet)
    compiled    ``gemm`` compiled ahead of time by TorchInductor (AOTInductor),  ~1 min once per
                C++ wrapper, no Python per op; cached on disk by weights,        network, batch
                shapes and thread count. Batch <= 2: one package per batch,      size (<= 2) and
                frozen (weights compiled in, prepacked), every GEMM from         thread count
                Inductor's C++ micro-kernel template for its shape; larger
                batches: one dynamic-batch package
    onnx        ONNX Runtime on the network with the FiLM inputs exposed         ~1 s per build
    auto        CPU: ``onnx`` up to batch 2, ``gemm`` above (and without onnxruntime, or if
                the export fails);
                CUDA: ``eager`` (cuDNN) in the chosen dtype, optionally CUDA-graphed

Measured on a 2-core CPU (benchmarks/results/engines.md, lerobot.md), small U-Net at batch 1:
``compiled`` runs a DDIM-10 chunk 4.7x (2 threads) to 6.6x (1 thread) and a DDPM-100 chunk
6.8-7.0x faster than lerobot's DiffusionPolicy on the same weights (a forward: 0.99 ms at 2
threads, 1.9x the compute bound); ``onnx`` 2.5-3.1x, ``gemm`` about 1.5x. ``auto`` does not
pick ``compiled``: its first build of each set of weights costs about a minute, which an
evaluation during training would pay at every evaluation. Deployments, which run one checkpoint
for hours, should ask for ``compiled`` (``--engine compiled``).
``robopolicy bench inference`` measures the engines on the machine at hand.

``EngineConfig.device`` moves the policy (``auto``: CUDA when there is one), ``dtype`` runs the
network in bfloat16 / float16 under autocast on CUDA (the sampler stays float32), and
``cuda_graph`` captures the whole denoising loop of a chunk once per (batch, sampler, steps)
and replays it (:class:`GraphedSampler`). On a CPU, CUDA-only settings are refused with a clear
error unless ``device`` is ``auto``, which falls back to the CPU path.

Which backends a network has is registered by network type (:func:`register_engine`); a
network without a fast path runs ``eager`` under every backend but ``auto`` refuses nothing.
Engines snapshot the weights they were built from and rebuild themselves when those change
(an optimizer step), so a policy that keeps training never runs stale weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robopolicy.nn.embeddings import broadcast_timesteps


class Backend(str, enum.Enum):
    AUTO = "auto"
    EAGER = "eager"
    GEMM = "gemm"
    COMPILED = "compiled"
    ONNX = "onnx"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How a policy's network runs at inference (``robopolicy eval --engine gemm --device auto``)."""

    backend: Backend = Backend.AUTO
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:N``, ``auto`` (CUDA when available), or None: where the policy is."""
    dtype: str = "float32"
    """Network precision: ``float32``, or ``bfloat16`` / ``float16`` (autocast, CUDA only)."""
    threads: int | None = None
    """CPU intra-op threads while predicting (None: leave torch's setting). 1 is fastest for a
    batch-1 chunk of the small networks on a 2-core machine; see ``robopolicy bench inference``."""
    cuda_graph: bool = False
    """Capture each chunk's whole denoising loop as one CUDA graph and replay it (CUDA only)."""
    cache_dir: str | None = None
    """Where ``compiled`` keeps its packages (default ``$ROBOPOLICY_CACHE`` or ``~/.cache/robopolicy``)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "backend", Backend(self.backend))
        except ValueError:
            raise ValueError(
                f"unknown engine backend {self.backend!r}; choose from {[b.value for b in Backend]}"
            ) from None
        if self.dtype not in DTYPES:
            raise ValueError(f"engine dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"engine threads must be >= 1, got {self.threads}")

    @classmethod
    def parse(cls, spec: EngineConfig | str | Mapping[str, Any] | None) -> EngineConfig:
        """An EngineConfig from itself, None (defaults), a backend name, or a dict of fields."""
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, str):
            return cls(backend=spec)
        if isinstance(spec, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            bad = sorted(set(spec) - names)
            if bad:
                raise ValueError(f"unknown engine settings {bad} (known: {sorted(names)})")
            return cls(**{k: v for k, v in spec.items() if v is not None})
        raise TypeError(f"engine must be an EngineConfig, a backend name or a dict, got {type(spec).__name__}")

    def resolve_device(self, current: torch.device) -> torch.device:
        """The device to run on: refuses CUDA when there is none (``auto`` falls back to CPU)."""
        if self.device is None:
            dev = current
        elif self.device == "auto":
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(
                f"engine device {self.device!r} asks for CUDA, but torch sees no GPU (use 'auto' or 'cpu')"
            )
        if dev.type != "cuda" and self.device != "auto":
            if self.dtype != "float32":
                raise ValueError(f"engine dtype {self.dtype} runs on CUDA only; on {dev.type} use float32")
            if self.cuda_graph:
                raise ValueError(f"cuda_graph needs a CUDA device, the policy is on {dev.type}")
        return dev

    def on(self, device: torch.device) -> EngineConfig:
        """This config with CUDA-only settings dropped when running on a CPU (``device: auto``)."""
        if device.type == "cuda":
            return self
        return dataclasses.replace(self, dtype="float32", cuda_graph=False)


# ---------------------------------------------------------------------- network engines
class NetworkEngine:
    """One network's inference copy: ``prepare(cond) -> prepared`` once per chunk, then
    ``engine(x, t, prepared) -> out`` per step (``t`` a float or a (B,) tensor)."""

    backend: Backend = Backend.EAGER

    def __init__(self, network: nn.Module, config: EngineConfig) -> None:
        self.network, self.config = network, config
        self._slots = _parameter_slots(network)
        self.versions = _versions(self._slots)

    def stale(self) -> bool:
        """True when the source network's weights changed since this engine was built (checked
        once per chunk: the parameter slots are listed once, so no module walk per check)."""
        return _versions(self._slots) != self.versions

    def prepare(self, cond: Any) -> Any:
        return cond

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any) -> torch.Tensor:
        with self.autocast(x.device):
            out = self.network(x, t if torch.is_tensor(t) else self.timestep(t, x), cond)
        return out.float()

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if device.type == "cuda" and self.config.dtype != "float32":
            return torch.autocast("cuda", dtype=DTYPES[self.config.dtype])
        return contextlib.nullcontext()

    def timestep(self, t: float, x: torch.Tensor) -> torch.Tensor:
        """A float timestep as a (B,) tensor on x's device, made once per value (no host-to-device
        copy per step, which also keeps the loop capturable in a CUDA graph)."""
        cache = self.__dict__.setdefault("_t_cache", {})
        key = (float(t), x.shape[0], str(x.device))
        tt = cache.get(key)
        if tt is None:
            tt = broadcast_timesteps(float(t), x.shape[0], x.device).contiguous()
            if len(cache) > 4096:
                cache.clear()
            cache[key] = tt
        return tt


def _parameter_slots(network: nn.Module) -> list[tuple[dict, str]]:
    """Every parameter's slot, (its module's ``_parameters``, name): a parameter replaced in its
    module shows up in the slot, and listing the slots once spares a module walk per check."""
    return [(m._parameters, name) for m in network.modules() for name in m._parameters]


def _versions(slots: list[tuple[dict, str]]) -> tuple:
    """What changes when weights change: each parameter's identity, storage and version counter
    (an optimizer step, an in-place op, ``load_state_dict``, ``p.data = t`` or a new Parameter in
    the slot). A write through ``p.data.add_()`` bumps no counter: after one, call
    ``policy.set_engine(...)`` again."""
    out = []
    for params, name in slots:
        p = params[name]
        if p is not None:
            out.append((id(p), p.data_ptr(), p._version))
    return tuple(out)


EngineBuilder = Callable[[nn.Module, EngineConfig, Backend], NetworkEngine]
_BUILDERS: dict[type[nn.Module], EngineBuilder] = {}
_BACKENDS: dict[type[nn.Module], tuple[Backend, ...]] = {}


def register_engine(network_type: type[nn.Module], backends: tuple[Backend, ...]) -> Callable:
    """``@register_engine(MyNet, (Backend.GEMM, ...))`` on ``build(network, config, backend)``."""

    def wrap(fn: EngineBuilder) -> EngineBuilder:
        _BUILDERS[network_type] = fn
        _BACKENDS[network_type] = tuple(backends)
        return fn

    return wrap


def backends_for(network: nn.Module) -> list[str]:
    """The backends this network has (``eager`` always)."""
    _load_builtin_engines()
    for cls in type(network).__mro__:
        if cls in _BACKENDS:
            return ["eager", *[b.value for b in _BACKENDS[cls]]]
    return ["eager"]


def build_engine(network: nn.Module, config: EngineConfig, device: torch.device) -> NetworkEngine:
    """The engine ``config`` asks for, for ``network`` (already on ``device``)."""
    _load_builtin_engines()
    backend = config.backend
    if backend is Backend.AUTO:
        backend = Backend.EAGER if device.type == "cuda" else (Backend.ONNX if _has_onnxruntime() else Backend.GEMM)
    if backend is Backend.EAGER:
        return NetworkEngine(network, config)
    if device.type == "cuda":
        raise ValueError(f"engine backend {backend.value!r} is a CPU path; on CUDA use 'eager' or 'auto'")
    for cls in type(network).__mro__:
        if cls in _BUILDERS:
            if backend not in _BACKENDS[cls]:
                if config.backend is Backend.AUTO:
                    return NetworkEngine(network, config)
                raise ValueError(
                    f"{type(network).__name__} has no {backend.value!r} engine (it has {backends_for(network)})"
                )
            return _BUILDERS[cls](network, config, backend)
    if config.backend is Backend.AUTO:
        return NetworkEngine(network, config)
    raise ValueError(f"{type(network).__name__} has no {backend.value!r} engine (it has only 'eager')")


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _load_builtin_engines() -> None:
    import robopolicy.inference.engines  # noqa: F401  (registers the built-in networks' engines)


# ---------------------------------------------------------------------- threads
@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, restoring the previous setting after."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thread_settings() -> dict[str, Any]:
    """The thread settings that decide CPU latency, for benchmark reports."""
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    }


# ---------------------------------------------------------------------- disk cache
def cache_dir(config: EngineConfig) -> Path:
    root = config.cache_dir or os.environ.get("ROBOPOLICY_CACHE") or Path.home() / ".cache" / "robopolicy"
    path = Path(root) / "engines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def weights_key(network: nn.Module, *extra: Any) -> str:
    """A hash of a network's weights and buffers, torch's version and ``extra`` (shapes, backend)."""
    h = hashlib.sha256()
    h.update(torch.__version__.encode())
    for name, t in list(network.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr(extra).encode())
    return h.hexdigest()[:24]


# ---------------------------------------------------------------------- CUDA graphs
class GraphedSampler:
    """Replays a chunk's whole denoising loop as one captured CUDA graph.

    ``run(key, fn, inputs)`` calls ``fn(**inputs) -> Tensor``: the first time for a ``key``
    (batch, sampler, steps, ...) it warms ``fn`` up twice on a side stream (filling every cache
    the loop reads, e.g. the timestep tensors), captures it into a graph over static copies of
    ``inputs``, and from then on copies the new inputs into those buffers and replays. ``fn``
    must be capturable: no host synchronisation and no new host-to-device copies (the samplers
    on a view's scalar path are). Returns a fresh tensor (the graph's output is cloned).
    """

    def __init__(self, max_graphs: int = 16) -> None:
        self.max_graphs = max_graphs
        self.graphs: dict[Any, tuple[Any, dict[str, torch.Tensor], torch.Tensor]] = {}

    def run(self, key: Any, fn: Callable[..., torch.Tensor], inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        entry = self.graphs.get(key)
        if entry is None:
            static = {k: v.detach().clone() for k, v in inputs.items()}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn(**static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fn(**static)
            if len(self.graphs) >= self.max_graphs:
                self.graphs.clear()
            entry = self.graphs[key] = (graph, static, out)
        graph, static, out = entry
        for k, v in inputs.items():
            static[k].copy_(v)
        graph.replay()
        return out.clone()
