"""The built-in networks' inference engines (see :mod:`robopolicy.inference.engine`).

U-Net (:class:`~robopolicy.nn.unet1d.ConditionalUnet1D`, Diffusion Policy's CNN):

* ``gemm``: :class:`~robopolicy.nn.fast_unet.FastUnet1D` in eager PyTorch;
* ``compiled``: the same graph compiled by AOTInductor into a C++ package (batch dynamic),
  cached on disk by weights and shapes, so only the first load of a checkpoint pays the compile;
* ``onnx``: the network with its FiLM inputs exposed, run by ONNX Runtime (optional:
  ``pip install onnxruntime onnx``).

Each caches the condition's FiLM once per chunk (``prepare``) and the step's per distinct step.

Transformer (:class:`~robopolicy.nn.transformer.TransformerForDiffusion`): ``onnx``, the whole
network in ONNX Runtime (static shapes; no per-chunk split).
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from typing import Any

import torch
from torch import nn

from robopolicy.inference.engine import Backend, EngineConfig, NetworkEngine, cache_dir, register_engine, weights_key
from robopolicy.nn.fast_unet import FastUnet1D, UnetFilmCore
from robopolicy.nn.score_gpt import ScoreGPT
from robopolicy.nn.transformer import TransformerForDiffusion
from robopolicy.nn.unet1d import ConditionalUnet1D

log = logging.getLogger(__name__)


class GemmUnetEngine(NetworkEngine):
    backend = Backend.GEMM

    def __init__(self, network: ConditionalUnet1D, config: EngineConfig) -> None:
        super().__init__(network, config)
        self.fast = FastUnet1D(network)

    def prepare(self, cond: torch.Tensor) -> torch.Tensor:
        return self.fast.prepare(cond)

    def film(self, t: torch.Tensor | float, film_obs: torch.Tensor) -> torch.Tensor:
        return self.fast.step_film(t, film_obs.shape[0], film_obs.device) + film_obs

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.fast.min_horizon_multiple:
            raise ValueError(f"horizon must be a multiple of {self.fast.min_horizon_multiple}, got {x.shape[1]}")
        return self.fast.core(x, self.film(t, cond))


class _Core(nn.Module):
    def __init__(self, fast: FastUnet1D) -> None:
        super().__init__()
        self.fast = fast

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        return self.fast.core(x, film)


class CompiledUnetEngine(GemmUnetEngine):
    """The GEMM graph compiled ahead of time (AOTInductor) for a dynamic batch; cached on disk."""

    backend = Backend.COMPILED

    def __init__(
        self, network: ConditionalUnet1D, config: EngineConfig, example: tuple[int, int] | None = None
    ) -> None:
        super().__init__(network, config)
        self.runners: dict[tuple[int, int], Any] = {}

    def runner(self, x: torch.Tensor, film: torch.Tensor) -> Any:
        key = (x.shape[1], x.shape[2])
        run = self.runners.get(key)
        if run is None:
            run = self.runners[key] = self._load_or_compile(x.shape[1], x.shape[2], film.shape[1])
        return run

    def _load_or_compile(self, horizon: int, dim: int, n_film: int) -> Any:
        from torch._inductor import aoti_compile_and_package, aoti_load_package

        path = cache_dir(self.config) / f"unet-{weights_key(self.network, 'gemm-aoti-v1', horizon, dim)}.pt2"
        if not path.exists():
            print(
                f"compiling the inference engine for this network (once; cached in {path.parent}) ...",
                file=sys.stderr,
                flush=True,
            )
            b = torch.export.Dim("batch", min=1, max=4096)
            x = torch.zeros(2, horizon, dim)
            film = torch.zeros(2, n_film)
            with torch.no_grad():
                ep = torch.export.export(_Core(self.fast), (x, film), dynamic_shapes={"x": {0: b}, "film": {0: b}})
                tmp = path.with_suffix(f".tmp{id(self)}.pt2")
                aoti_compile_and_package(ep, package_path=str(tmp))
            tmp.replace(path)
        return aoti_load_package(str(path))

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.fast.min_horizon_multiple:
            raise ValueError(f"horizon must be a multiple of {self.fast.min_horizon_multiple}, got {x.shape[1]}")
        film = self.film(t, cond)
        if film.shape[0] != x.shape[0]:
            film = film.expand(x.shape[0], -1)
        return self.runner(x, film)(x.contiguous(), film.contiguous())


class OnnxSessions:
    """ONNX Runtime sessions of one module, one per static input shape (static shapes let ONNX
    Runtime drop every shape computation from the graph), exported on first use; shared by every
    ONNX engine. ``get`` returns None, once and for good, when the export fails under ``auto``
    (the engine then runs its fallback), and raises under an explicit ``onnx``."""

    def __init__(self, config: EngineConfig, max_sessions: int = 32) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("engine backend 'onnx' needs onnxruntime and onnx: pip install onnxruntime onnx") from e
        self.ort, self.config, self.max_sessions = ort, config, max_sessions
        self.sessions: dict[tuple, Any] = {}
        self.failed = False

    def __len__(self) -> int:
        return len(self.sessions)

    def get(self, key: tuple, module: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
        """The session for ``key``, exporting ``module(*inputs.values())`` (eval mode) if new."""
        if self.failed:
            return None
        sess = self.sessions.get(key)
        if sess is not None:
            return sess
        try:
            sess = self._build(module, inputs)
        except Exception as e:  # an exporter or runtime that cannot take this network
            name = type(module).__name__
            if self.config.backend is not Backend.AUTO:
                raise RuntimeError(f"engine 'onnx' could not export or load {name}: {e}") from e
            log.warning("engine auto: ONNX export of %s failed (%s); running the fallback", name, e)
            self.failed = True
            return None
        if len(self.sessions) >= self.max_sessions:
            self.sessions.clear()
        self.sessions[key] = sess
        return sess

    def _build(self, module: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
        buf = io.BytesIO()
        modes = [(m, m.training) for m in module.modules()]  # restored exactly (shared submodules too)
        module.eval()
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                example = tuple(torch.zeros_like(v) for v in inputs.values())
                torch.onnx.export(
                    module, example, buf, input_names=list(inputs), output_names=["y"], opset_version=17, dynamo=False
                )
        finally:
            for m, mode in modes:
                m.training = mode
        opts = self.ort.SessionOptions()
        opts.intra_op_num_threads = self.config.threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return self.ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def _run(sess: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    feeds = {k: v.detach().float().contiguous().numpy() for k, v in inputs.items()}
    return torch.from_numpy(sess.run(None, feeds)[0])


class OnnxUnetEngine(GemmUnetEngine):
    """ONNX Runtime on the U-Net with its FiLM inputs exposed (native convolutions).

    One session per (batch, horizon, action dim) (measured 1.4 ms against 2.1 ms per forward at
    batch 1 with dynamic shapes). A batch size seen for the first time costs one export (well
    under a second for the presets); a failed export under ``auto`` falls back to ``gemm``.
    """

    backend = Backend.ONNX
    auto_max_batch = 2
    """Under ``auto``, larger batches run the gemm path: measured faster from batch 4 up
    (benchmarks/results/engines.md: 6.3 vs 8.1 ms per forward at batch 4, 1 thread)."""

    def __init__(self, network: ConditionalUnet1D, config: EngineConfig) -> None:
        super().__init__(network, config)
        self.sessions = OnnxSessions(config)
        self.core = UnetFilmCore(network)

    @property
    def fallback(self) -> bool:
        return self.sessions.failed

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.fast.min_horizon_multiple:
            raise ValueError(f"horizon must be a multiple of {self.fast.min_horizon_multiple}, got {x.shape[1]}")
        if self.config.backend is Backend.AUTO and x.shape[0] > self.auto_max_batch:
            return super().__call__(x, t, cond)
        inputs = {"x": x, "film": self.film(t, cond).expand(x.shape[0], -1)}
        sess = self.sessions.get(tuple(x.shape), self.core, inputs)
        return super().__call__(x, t, cond) if sess is None else _run(sess, inputs)


@register_engine(ConditionalUnet1D, (Backend.GEMM, Backend.COMPILED, Backend.ONNX))
def _unet_engine(network: nn.Module, config: EngineConfig, backend: Backend) -> NetworkEngine:
    cls = {Backend.GEMM: GemmUnetEngine, Backend.COMPILED: CompiledUnetEngine, Backend.ONNX: OnnxUnetEngine}[backend]
    return cls(network, config)


class OnnxNetworkEngine(NetworkEngine):
    """ONNX Runtime on a whole ``network(x, t, cond)`` (t a (B,) tensor), one static-shape session
    per (x, cond) shape; under ``auto`` a failed export falls back to the network as is. Used for
    networks without a FiLM split, e.g. the diffusion transformer."""

    backend = Backend.ONNX

    def __init__(self, network: nn.Module, config: EngineConfig) -> None:
        super().__init__(network, config)
        self.sessions = OnnxSessions(config)

    @property
    def fallback(self) -> bool:
        return self.sessions.failed

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any) -> torch.Tensor:
        if not torch.is_tensor(cond):
            return super().__call__(x, t, cond)
        tt = (t if torch.is_tensor(t) else self.timestep(t, x)).float().reshape(-1).expand(x.shape[0])
        inputs = {"x": x, "t": tt, "cond": cond}
        sess = self.sessions.get((tuple(x.shape), tuple(cond.shape)), self.network, inputs)
        return super().__call__(x, t, cond) if sess is None else _run(sess, inputs)


@register_engine(ScoreGPT, (Backend.ONNX,))
@register_engine(TransformerForDiffusion, (Backend.ONNX,))
def _transformer_engine(network: nn.Module, config: EngineConfig, backend: Backend) -> NetworkEngine:
    return OnnxNetworkEngine(network, config)


class OnnxModule(NetworkEngine):
    """A one-input module (e.g. a camera's image encoder, run once per chunk) in ONNX Runtime, one
    static-shape session per input shape; under ``auto`` a failed export runs the module as is."""

    backend = Backend.ONNX

    def __init__(self, module: nn.Module, config: EngineConfig) -> None:
        super().__init__(module, config)
        self.sessions = OnnxSessions(config, max_sessions=16)

    @property
    def fallback(self) -> bool:
        return self.sessions.failed

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.network.training:
            return self.network(x)
        sess = self.sessions.get(tuple(x.shape), self.network, {"x": x})
        return self.network(x) if sess is None else _run(sess, {"x": x})
