"""ONNX Runtime: the backend that runs everywhere (CPU provider) and on NVIDIA GPUs (CUDA provider).

Every run goes through an I/O binding: inputs are bound from the caller's host arrays, outputs to the memory
of the session's device, and ``copy_outputs_to_cpu`` brings each output to the host once. With the CUDA
provider the round trips that remain are the ones the pipeline needs: inputs go to the GPU and outputs come
back once per call, because the scheduler loop runs in numpy on the host (the noise prediction must be there
every step) and the graphs exchange host arrays (the VAE's mel is sliced before the vocoder). Nothing is
copied twice, and no output is staged through a host buffer ONNX Runtime allocates.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailableError
from ..manifest import GRAPH_NAMES, Manifest
from .base import Backend, Graph

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
#: The CUDA provider computes fp32 in fp32: its default rounds the inputs of fp32 convolutions and matrix
#: products to TF32 (10 bits of mantissa), which would make an fp32 export no more exact than fp16 and leave a
#: GPU run without an fp32 reference; the fp32 nodes an fp16 graph keeps are the precision-critical ones.
CUDA_OPTIONS = {"use_tf32": "0"}


def available_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


class OnnxRuntimeGraph(Graph):
    """One session; ``device`` ("cpu" or "cuda") is where its outputs are bound."""

    def __init__(self, name: str, session: object, run_options: object, device: str = "cpu") -> None:
        super().__init__(name)
        self._session = session
        self._run_options = run_options
        self._device = device
        self._outputs = [o.name for o in session.get_outputs()]  # type: ignore[attr-defined]
        #: Inputs kept on a GPU while they are unchanged (``run``'s ``reuse``): name -> (host copy, device value).
        self._resident: dict[str, tuple[np.ndarray, object]] = {}
        self._resident_lock = threading.Lock()

    def run(self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()) -> dict[str, np.ndarray]:
        # Sessions are shared by every call of the engine and are thread-safe; a binding belongs to one call.
        binding = self._session.io_binding()  # type: ignore[attr-defined]
        for name, array in feeds.items():
            array = np.ascontiguousarray(array)
            if name in reuse and self._device != "cpu":
                binding.bind_ortvalue_input(name, self._on_device(name, array))
            else:
                binding.bind_cpu_input(name, array)
        for name in self._outputs:
            binding.bind_output(name, self._device)
        self._session.run_with_iobinding(binding, self._run_options)  # type: ignore[attr-defined]
        return dict(zip(self._outputs, binding.copy_outputs_to_cpu(), strict=True))

    def _on_device(self, name: str, array: np.ndarray) -> object:
        """``array`` as a value on the session's device: the one uploaded before while the values are equal."""
        from onnxruntime import OrtValue

        with self._resident_lock:
            held = self._resident.get(name)
            if held is not None and held[0].dtype == array.dtype and np.array_equal(held[0], array):
                return held[1]
            copy = array.copy()
            value = OrtValue.ortvalue_from_numpy(copy, self._device, 0)
            self._resident[name] = (copy, value)
            return value


class OnnxRuntimeBackend(Backend):
    """Sessions with full graph optimisation; ``providers`` in order of preference."""

    name = "onnxruntime"

    def __init__(self, providers: Sequence[str] = (CPU,), threads: int | None = None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise BackendUnavailableError(
                "onnxruntime is not installed: pip install 'audioldm-trt[cpu]' (or '[gpu-ort]' for CUDA)"
            ) from None
        missing = [p for p in providers if p not in onnxruntime.get_available_providers()]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime here has no {missing[0]} (it has {', '.join(onnxruntime.get_available_providers())})"
            )
        if CUDA in providers and hasattr(onnxruntime, "preload_dlls"):
            # The CUDA and cuDNN libraries of pip's nvidia-* packages (onnxruntime-gpu[cuda,cudnn], or torch's)
            # are not on the loader's path; ONNX Runtime's own helper loads them (a no-op where already loaded).
            onnxruntime.preload_dlls()
        self._ort = onnxruntime
        self.providers = list(providers)
        self.threads = threads
        self.graphs_on_host = self.providers[0] == CPU
        # Each session's CPU memory arena reuses memory within a run (without it, the VAE decoder's peak is twice
        # as high), but would keep its largest run's memory, so the sessions' peaks would add up (the UNet's
        # still held while the VAE decoder runs, both while the vocoder runs). Shrinking the arena at the end of
        # each run hands the activations back: the peak is the largest stage's.
        self._run_options = onnxruntime.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def load(self, directory: Path, manifest: Manifest, graph: str) -> Graph:
        options = self._ort.SessionOptions()
        options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = self.threads
        path = directory / manifest.graphs[graph].onnxruntime_file
        providers = [(p, CUDA_OPTIONS) if p == CUDA else (p, {}) for p in self.providers]
        session = self._ort.InferenceSession(str(path), sess_options=options, providers=providers)
        used = session.get_providers()
        if self.providers[0] not in used:
            raise BackendUnavailableError(f"ONNX Runtime could not use {self.providers[0]} for {graph} (got {used})")
        return OnnxRuntimeGraph(graph, session, self._run_options, "cuda" if self.providers[0] == CUDA else "cpu")

    def load_graphs(self, directory: Path, manifest: Manifest) -> dict[str, Graph]:
        """On CPU the sessions are created concurrently, the largest graph first, one per core (or per
        ``threads``): creating a session is mostly single-threaded work (parsing, graph optimisation, packing
        the weights) that releases the GIL."""
        workers = min(len(GRAPH_NAMES), self.threads or os.cpu_count() or 1)
        if self.providers[0] != CPU or workers == 1:
            return super().load_graphs(directory, manifest)
        largest_first = sorted(GRAPH_NAMES, key=manifest.graph_bytes, reverse=True)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="session") as pool:
            sessions = {name: pool.submit(self.load, directory, manifest, name) for name in largest_first}
        return {name: sessions[name].result() for name in GRAPH_NAMES}

    def describe(self) -> str:
        return f"onnxruntime {self._ort.__version__} ({', '.join(self.providers)})"
