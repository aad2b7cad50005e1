"""Backend selection: which library and device run the graphs of an engine directory."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import BackendUnavailableError
from ..manifest import Manifest
from .base import Backend, Graph
from .onnxruntime import CPU, CUDA, OnnxRuntimeBackend, available_providers

logger = logging.getLogger(__name__)

#: Names accepted by ``Engine.load(backend=...)`` and ``--backend``.
BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-cpu")


def create_backend(name: str, directory: Path, manifest: Manifest) -> Backend:
    """The backend called ``name``; ``auto`` picks TensorRT, else ONNX Runtime CUDA, else ONNX Runtime CPU."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "tensorrt":
        raise BackendUnavailableError("the TensorRT backend is not available in this build")
    if name == "onnxruntime-cpu":
        return OnnxRuntimeBackend([CPU])
    if name == "onnxruntime-cuda":
        return OnnxRuntimeBackend([CUDA, CPU])
    return OnnxRuntimeBackend([CUDA, CPU] if CUDA in available_providers() else [CPU])


__all__ = ["BACKENDS", "Backend", "Graph", "create_backend"]
