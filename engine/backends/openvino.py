"""OpenVINO on the CPU: the export's ONNX graphs in fp32, or in bf16 on CPUs that compute bf16 natively.

Precisions (``Engine.load(..., backend="openvino", precision=...)``):

- ``fp32``: the graphs as exported.
- ``bf16``: OpenVINO's CPU plugin with ``INFERENCE_PRECISION_HINT=bf16`` (convolutions and matrix products on
  AVX512_BF16 or AMX, fp32 accumulation), with fp32 kept where bf16's 8-bit mantissa breaks the numbers: the
  list of the fp16 export (export/fp16.py), in OpenVINO's op names — normalisations and their reductions,
  softmax, the UNet's timestep embedding (every node from ``timestep`` to its Sin/Cos), and the vocoder's last
  convolution and Tanh. Those nodes carry OpenVINO's "precise" runtime attribute (what
  ``ov::disable_fp16_compression`` sets), which the CPU plugin's precision enforcement skips. A Python string
  in a node's runtime info is not yet that attribute: saving the model as OpenVINO IR turns it into one, so the
  marked model is saved into the cache and compiled from there.

A CPU without native bf16 (no AVX512_BF16, no AMX) is refused with BackendUnavailableError for bf16: OpenVINO
would take the hint silently and compute fp32 there (the compiled model reports f32), so "bf16" would be fp32
at fp32's speed. Whether the CPU has it is what OpenVINO reports: ``BF16`` in the CPU
plugin's OPTIMIZATION_CAPABILITIES, and the compiled model's precision is checked again after compiling.

Compiled models are cached (OpenVINO's CACHE_DIR) under ``$XDG_CACHE_HOME/audioldm-trt/openvino`` (default
``~/.cache``), in one folder per graph named by the sha256 of its files in the manifest, so that a second load
imports the compiled graph without reading the ONNX file, and a changed graph never meets a stale one. The
folder can be deleted at any time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import tempfile
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError
from ..manifest import Manifest
from .base import Backend, Graph

logger = logging.getLogger(__name__)

#: Precisions the backend computes in (see the module docstring).
PRECISIONS = ("fp32", "bf16")
#: OpenVINO's inference precision for each.
_HINTS = {"fp32": "f32", "bf16": "bf16"}
#: OpenVINO op types that stay fp32 under bf16: the normalisations (the ONNX frontend makes MVN of
#: InstanceNormalization and LayerNormalization), the reductions of decomposed ones, and softmax.
KEEP_FP32_TYPES = frozenset(
    {"BatchNormInference", "GroupNormalization", "MVN", "NormalizeL2", "Power", "ReduceL2", "ReduceMean", "Softmax"}
)
#: The runtime-info key of OpenVINO's DisableFP16Compression attribute ("precise", version 0): conversion of the
#: node to a lower precision is disabled.
_PRECISE = "precise_0"
#: Graph inputs and shape queries end the walk back from Sin/Cos: they compute no values of the embedding.
_WALK_STOPS = frozenset({"Constant", "Parameter", "ShapeOf"})


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audioldm-trt" / "openvino"


def native_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively on this CPU (AVX512_BF16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoGraph(Graph):
    """One compiled model and a pool of its infer requests: a request serves one call at a time, so concurrent
    calls each take an idle one (or a new one) and give it back."""

    def __init__(self, name: str, compiled: Any) -> None:
        super().__init__(name)
        self.compiled = compiled
        self._outputs = [output.get_any_name() for output in compiled.outputs]
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()

    @property
    def loaded_from_cache(self) -> bool:
        return bool(self.compiled.get_property("LOADED_FROM_CACHE"))

    def run(self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()) -> dict[str, np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # share_outputs=False: the outputs are copies the caller may keep while the request is reused.
            results = request.infer(
                {name: np.ascontiguousarray(array) for name, array in feeds.items()},
                share_inputs=True,
                share_outputs=False,
            )
            return dict(zip(self._outputs, results.to_tuple(), strict=True))
        finally:
            self._idle.put(request)


class OpenVinoBackend(Backend):
    """OpenVINO's CPU plugin in ``precision``; ``threads`` caps its inference threads (default: one per core)."""

    name = "openvino"
    graphs_on_host = True

    def __init__(self, precision: str = "fp32", threads: int | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r} for openvino; choose one of {', '.join(PRECISIONS)}")
        try:
            import openvino
        except ImportError:
            raise BackendUnavailableError("openvino is not installed: pip install 'audioldm-trt[openvino]'") from None
        self._openvino = openvino
        self._core = openvino.Core()
        self.precision = precision
        self.threads = threads
        self.cache = default_cache()
        if precision == "bf16" and not native_bf16(self._core):
            capabilities = ", ".join(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            raise BackendUnavailableError(
                f"precision {precision} needs a CPU with native bf16 (AVX512_BF16 or AMX); OpenVINO reports "
                f"{self._core.get_property('CPU', 'FULL_DEVICE_NAME')} capable of {capabilities} only, and would "
                "compute fp32 under a bf16 hint: use precision fp32"
            )

    def load(self, directory: Path, manifest: Manifest, graph: str) -> Graph:
        file = manifest.graphs[graph].file
        folder = self.cache / f"{graph}-{manifest.graph_sha256(graph)[:32]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BackendUnavailableError(
                f"cannot create the OpenVINO cache {folder} ({error.strerror}): set XDG_CACHE_HOME to a writable "
                "directory"
            ) from None
        source = directory / file
        if self.precision == "bf16":
            source = save_with_fp32_nodes(self._core, source, folder)
        config: dict[str, Any] = {
            "CACHE_DIR": str(folder),
            "INFERENCE_PRECISION_HINT": _HINTS[self.precision],
            "PERFORMANCE_HINT": "LATENCY",
        }
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        compiled = self._core.compile_model(str(source), "CPU", config)
        computed = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if self.precision == "bf16" and computed != "bf16":
            raise BackendUnavailableError(f"OpenVINO compiled {graph} for {computed}, not bf16, on this CPU")
        loaded = OpenVinoGraph(graph, compiled)
        logger.info("%s: %s", graph, "imported from the cache" if loaded.loaded_from_cache else f"compiled {folder}")
        return loaded

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        return f"openvino {self._openvino.get_version().split('-')[0]} (CPU, {self.precision}{threads})"


def save_with_fp32_nodes(core: Any, source: Path, folder: Path) -> Path:
    """The graph at ``source`` as OpenVINO IR with the fp32 nodes marked, saved in ``folder`` once (named by this
    module's code, which decides the marks); the path of its .xml."""
    import openvino

    target = folder / f"fp32-nodes-{_code_digest()[:16]}" / "model.xml"
    if target.is_file():
        return target
    model = core.read_model(str(source))
    marked = mark_fp32_nodes(model)
    logger.info("%s: %d nodes kept fp32 under bf16", source.name, len(marked))
    # Saved in a temporary folder renamed into place: a reader sees the whole IR or none.
    temporary = Path(tempfile.mkdtemp(prefix=".fp32-nodes-", dir=folder))
    try:
        openvino.save_model(model, str(temporary / target.name), compress_to_fp16=False)
        temporary.rename(target.parent)
    except OSError:
        if not target.is_file():  # unless another process renamed the same IR into place first
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


def mark_fp32_nodes(model: Any) -> list[str]:
    """Mark the nodes of an OpenVINO model that stay fp32 under bf16 (see the module docstring); their names."""
    operations = list(model.get_ordered_ops())
    marked = {op.get_friendly_name(): op for op in operations if op.get_type_name() in KEEP_FP32_TYPES}
    marked.update(_timestep_embedding(operations))
    marked.update(_waveform_output(operations))
    for op in marked.values():
        op.get_rt_info()[_PRECISE] = ""
    return sorted(marked)


def _timestep_embedding(operations: Iterable[Any]) -> dict[str, Any]:
    """Sin and Cos, and every node that computes their inputs back to the graph inputs."""
    pending = [op for op in operations if op.get_type_name() in ("Sin", "Cos")]
    found: dict[str, Any] = {}
    while pending:
        op = pending.pop()
        if op.get_type_name() in _WALK_STOPS or op.get_friendly_name() in found:
            continue
        found[op.get_friendly_name()] = op
        pending.extend(value.get_node() for value in op.input_values())
    return found


def _waveform_output(operations: Iterable[Any]) -> dict[str, Any]:
    """Each Tanh, and the convolution feeding it with its bias addition."""
    found: dict[str, Any] = {}
    for op in operations:
        if op.get_type_name() != "Tanh":
            continue
        found[op.get_friendly_name()] = op
        source = op.input_value(0).get_node()
        if source.get_type_name() == "Add":
            found[source.get_friendly_name()] = source
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Convolution":
            found[source.get_friendly_name()] = source
    return found


def _code_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
