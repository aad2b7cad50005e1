"""Backend selection: which library and device run the graphs of an engine directory."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import EngineError
from ..manifest import Manifest
from .base import Backend, Graph
from .onnxruntime import CPU, CUDA, OnnxRuntimeBackend, available_providers
from .openvino import OpenVinoBackend
from .tensorrt import ENGINE_DIRECTORY, TensorRTBackend, inspect_engines

logger = logging.getLogger(__name__)

#: Names accepted by ``Engine.load(backend=...)`` and ``--backend``.
BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-cpu", "openvino")
#: The backends whose graphs compute in host memory (``Backend.graphs_on_host``).
HOST_BACKENDS = ("onnxruntime-cpu", "openvino")


def resolve_backend(name: str, directory: Path, manifest: Manifest) -> str:
    """The backend ``name`` stands for: ``auto`` is ``choose_backend``'s pick, logged with its reason, and
    ``onnxruntime`` its CUDA provider where there is one; known before anything loads, so that a request can
    be checked against what will run it."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name, reason = choose_backend(directory, manifest)
        # Engines that were built but cannot run here deserve a warning: the user expects TensorRT.
        level = logging.WARNING if name != "tensorrt" and (directory / ENGINE_DIRECTORY).is_dir() else logging.INFO
        logger.log(level, "backend auto: %s (%s)", name, reason)
    if name == "onnxruntime":
        return "onnxruntime-cuda" if CUDA in available_providers() else "onnxruntime-cpu"
    return name


def create_backend(
    name: str, directory: Path, manifest: Manifest, threads: int | None = None, precision: str | None = None
) -> Backend:
    """The backend called ``name`` (see ``resolve_backend``). ``threads`` caps ONNX Runtime's intra-op threads
    or OpenVINO's inference threads (default: one per core). ``precision`` is OpenVINO's (fp32 by default, or
    bf16); the other backends run the graphs as exported, so for them it can only name the export's precision."""
    name = resolve_backend(name, directory, manifest)
    if name == "openvino":
        return OpenVinoBackend(precision or "fp32", threads)
    if precision is not None and precision != manifest.precision:
        raise ValueError(
            f"precision {precision} needs backend openvino: {name} runs the export's {manifest.precision} graphs"
            " as they are"
        )
    if name == "tensorrt":
        return TensorRTBackend(directory, manifest)
    return OnnxRuntimeBackend([CPU] if name == "onnxruntime-cpu" else [CUDA, CPU], threads)


def choose_backend(directory: Path, manifest: Manifest) -> tuple[str, str]:
    """TensorRT where its engines can run here, else ONNX Runtime's CUDA provider, else its CPU provider; with
    the reason, which names what ruled out the faster ones."""
    tensorrt = tensorrt_unusable(directory, manifest)
    if tensorrt is None:
        return "tensorrt", f"the engines in {directory / ENGINE_DIRECTORY} match this GPU and TensorRT"
    if CUDA in available_providers():
        return "onnxruntime-cuda", f"not TensorRT: {tensorrt}"
    return "onnxruntime-cpu", f"not TensorRT: {tensorrt}; not ONNX Runtime CUDA: it has no {CUDA} here"


def tensorrt_unusable(directory: Path, manifest: Manifest) -> str | None:
    """Why the TensorRT engines of ``directory`` cannot run here (TensorRT, GPU or engines missing, engines
    built for something else), or None when they can."""
    try:
        inspect_engines(directory, manifest)
    except EngineError as error:
        return str(error)
    return None


__all__ = ["BACKENDS", "HOST_BACKENDS", "Backend", "Graph", "choose_backend", "create_backend", "resolve_backend"]
