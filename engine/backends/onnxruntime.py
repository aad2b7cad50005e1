"""ONNX Runtime: the backend that runs everywhere (CPU provider) and on NVIDIA GPUs (CUDA provider)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError
from ..manifest import Manifest
from .base import Backend, Graph

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def available_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


class OnnxRuntimeGraph(Graph):
    def __init__(self, name: str, session: object) -> None:
        super().__init__(name)
        self._session = session
        self._outputs = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe; sessions are shared by every call of the engine.
        results = self._session.run(self._outputs, dict(feeds))  # type: ignore[attr-defined]
        return dict(zip(self._outputs, results))


class OnnxRuntimeBackend(Backend):
    """Sessions with full graph optimisation; ``providers`` in order of preference."""

    name = "onnxruntime"

    def __init__(self, providers: Sequence[str] = (CPU,), threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install 'audioldm-trt[cpu]' (or '[gpu]' for CUDA)"
            ) from None
        missing = [p for p in providers if p not in onnxruntime.get_available_providers()]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime here has no {missing[0]} (it has {', '.join(onnxruntime.get_available_providers())})"
            )
        self._ort = onnxruntime
        self.providers = list(providers)
        self.threads = threads

    def load(self, directory: Path, manifest: Manifest, graph: str) -> Graph:
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        path = directory / manifest.graphs[graph].file
        session = self._ort.InferenceSession(str(path), sess_options=options, providers=self.providers)
        used = session.get_providers()
        if self.providers[0] not in used:
            raise BackendUnavailableError(f"ONNX Runtime could not use {self.providers[0]} for {graph} (got {used})")
        return OnnxRuntimeGraph(graph, session)

    def describe(self) -> str:
        return f"onnxruntime {self._ort.__version__} ({', '.join(self.providers)})"
