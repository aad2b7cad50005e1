"""TensorRT: the engines ``audioldm-trt build`` wrote, run with cuda-python (no torch).

Files: ``DIR/tensorrt/<graph>.engine`` beside ``<graph>.json``, the record of what the engine was built from
and for (TensorRT version, GPU and compute capability, the declared ranges, the profile shapes, the sha256 of
the ONNX graph). Loading compares every record with this machine and the export, and refuses a mismatch with
one line saying what to rebuild.

Running: each engine is deserialized once, with one execution context whose inputs and outputs live in
device buffers allocated once for the largest profile shape and bound once (``set_tensor_address``); host
data passes through pinned buffers; all graphs share one CUDA stream and run with ``execute_async_v3``. The
UNet runs once per denoising step with the same shapes, so after one plain run at new shapes (TensorRT must
enqueue once after a shape change before a capture) its enqueue is captured into a CUDA graph per (batch,
height) and replayed on the following steps: one launch instead of one per kernel.

Thread safety: the stream and the buffers are shared, so every graph run holds the backend's lock; an Engine
called from several threads runs their graph calls one at a time.

``tensorrt`` and ``cuda-python`` are imported when the backend is used, never when the package is imported.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError, EngineDirectoryError, EngineError
from ..files import write_atomically
from ..manifest import GRAPH_NAMES, Manifest
from .base import Backend, Graph
from .profiles import BuildRanges, OutOfProfileError, Shape

if TYPE_CHECKING:
    import tensorrt as trt

    from .cuda import CudaGraph, Device, Stream

logger = logging.getLogger(__name__)

#: Where the engines of an export live, relative to its directory.
ENGINE_DIRECTORY = "tensorrt"
RECORD_FORMAT = 1
#: The graph whose calls are captured into CUDA graphs: the only one called once per step.
CAPTURED_GRAPH = "unet"


@dataclass(frozen=True)
class EngineRecord:
    """What one engine was built from (the ONNX graph) and for (TensorRT, GPU, ranges); stored as json."""

    graph: str
    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    #: ``BuildRanges.to_json()``: the waveforms and seconds the engine was declared for.
    ranges: dict[str, list[Any]]
    #: Input name -> [min, opt, max] shape of the optimisation profile.
    profile: dict[str, list[list[int]]]
    engine_bytes: int
    format_version: int = RECORD_FORMAT

    @classmethod
    def read(cls, path: Path) -> EngineRecord:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format_version") != RECORD_FORMAT:
                raise ValueError(f"format version {data.get('format_version')}, this runtime reads {RECORD_FORMAT}")
            return cls(**data)
        except (OSError, ValueError, TypeError) as error:
            raise EngineDirectoryError(f"{path} is unreadable ({error}): rebuild the engines") from None

    def write(self, path: Path) -> None:
        write_atomically(path, (json.dumps(asdict(self), indent=2) + "\n").encode())

    def same_build(self, other: EngineRecord) -> bool:
        """Built from the same graph for the same TensorRT, GPU and ranges (the engine's size aside)."""
        return asdict(self) | {"engine_bytes": 0} == asdict(other) | {"engine_bytes": 0}


def engine_paths(directory: Path, graph: str) -> tuple[Path, Path]:
    """The engine file and its record."""
    folder = directory / ENGINE_DIRECTORY
    return folder / f"{graph}.engine", folder / f"{graph}.json"


def require_tensorrt() -> str:
    """TensorRT's version, or BackendUnavailableError when it cannot be imported.

    ``tensorrt-stubs`` alone installs a ``tensorrt`` directory of .pyi files that imports as an empty namespace
    package, hence the check for a real module."""
    missing = BackendUnavailableError("TensorRT is not installed: pip install 'audioldm-trt[gpu]'")
    try:
        import tensorrt as trt
    except ImportError:
        raise missing from None
    version = getattr(trt, "__version__", None)
    if not isinstance(version, str):
        raise missing
    return version


@functools.cache
def tensorrt_logger() -> trt.ILogger:
    """One logger for every builder and runtime of the process (TensorRT warns about a second one)."""
    import tensorrt as trt

    verbose = logging.getLogger("audioldm_trt").isEnabledFor(logging.DEBUG)
    return trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)


def rebuild_command(directory: Path, ranges: BuildRanges) -> str:
    return f"audioldm-trt build {directory} --batch {ranges.batch} --duration {ranges.duration}"


def check_record(
    record: EngineRecord, directory: Path, manifest: Manifest, tensorrt_version: str, device: Device
) -> None:
    """Raise EngineDirectoryError naming what differs if the engine of ``record`` cannot run here on this export."""
    engine = engine_paths(directory, record.graph)[0]
    rebuild = rebuild_command(directory, BuildRanges.from_json(record.ranges))
    onnx = manifest.graphs[record.graph].file
    if record.onnx_sha256 != manifest.files[onnx].sha256:
        raise EngineDirectoryError(f"{engine} was built from another {onnx} than the export's: rebuild with {rebuild}")
    if record.tensorrt != tensorrt_version:
        raise EngineDirectoryError(
            f"{engine} was built with TensorRT {record.tensorrt}, this is TensorRT {tensorrt_version}:"
            f" rebuild with {rebuild}"
        )
    if (record.gpu, record.compute_capability) != (device.name, device.compute_capability):
        raise EngineDirectoryError(
            f"{engine} was built for {record.gpu} (compute capability {record.compute_capability}), this is"
            f" {device}: rebuild with {rebuild} on this machine"
        )
    if not engine.is_file() or engine.stat().st_size != record.engine_bytes:
        raise EngineDirectoryError(f"{engine} is missing or not the size its record says: rebuild with {rebuild}")


def inspect_engines(directory: Path, manifest: Manifest) -> tuple[str, Device, BuildRanges]:
    """TensorRT's version, the GPU and the engines' ranges, after checking that every engine can run here.

    BackendUnavailableError when TensorRT, a GPU or the engines are absent; EngineDirectoryError when the
    engines are incomplete or were built for something else."""
    from .cuda import current_device

    version = require_tensorrt()
    device = current_device()
    records = {graph: engine_paths(directory, graph)[1] for graph in GRAPH_NAMES}
    missing = [graph for graph, path in records.items() if not path.is_file()]
    if len(missing) == len(records):
        raise BackendUnavailableError(
            f"no TensorRT engines in {directory / ENGINE_DIRECTORY}: build them with audioldm-trt build {directory}"
        )
    if missing:
        raise EngineDirectoryError(
            f"{directory / ENGINE_DIRECTORY} has no {missing[0]} engine: build them with audioldm-trt build {directory}"
        )
    read = {graph: EngineRecord.read(path) for graph, path in records.items()}
    for record in read.values():
        check_record(record, directory, manifest, version, device)
    ranges = {json.dumps(record.ranges, sort_keys=True) for record in read.values()}
    if len(ranges) > 1:
        raise EngineDirectoryError(
            f"the engines in {directory / ENGINE_DIRECTORY} were built for different ranges: rebuild them all"
        )
    return version, device, BuildRanges.from_json(read[GRAPH_NAMES[0]].ranges)


class TensorRTBackend(Backend):
    """Runs the engines of one export on GPU 0; ``cuda_graphs=False`` runs the UNet without capture."""

    name = "tensorrt"

    def __init__(self, directory: Path, manifest: Manifest, cuda_graphs: bool = True) -> None:
        self.version, self.device, self.ranges = inspect_engines(directory, manifest)
        import tensorrt as trt

        from .cuda import Stream

        self._directory = directory
        self._model = manifest.model
        self._cuda_graphs = cuda_graphs
        self._lock = threading.Lock()
        self._stream = Stream()
        weakref.finalize(self, self._stream.close)
        self._runtime = trt.Runtime(tensorrt_logger())

    def load(self, directory: Path, manifest: Manifest, graph: str) -> Graph:
        path = engine_paths(directory, graph)[0]
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineDirectoryError(
                f"TensorRT could not load {path}: rebuild with {rebuild_command(directory, self.ranges)}"
            )
        capture = self._cuda_graphs and graph == CAPTURED_GRAPH
        return TensorRTGraph(graph, engine, self._stream, self._lock, capture)

    def check_workload(self, batch: int, latent_height: int) -> None:
        self.ranges.check(self._model, batch, latent_height, self._directory)

    def describe(self) -> str:
        graphs = "CUDA graphs for the UNet" if self._cuda_graphs else "no CUDA graphs"
        return f"TensorRT {self.version} on {self.device}, {graphs}"


class TensorRTGraph(Graph):
    """One engine with its context, buffers and captured CUDA graphs."""

    def __init__(self, name: str, engine: trt.ICudaEngine, stream: Stream, lock: threading.Lock, capture: bool) -> None:
        import tensorrt as trt

        from .cuda import DeviceBuffer, PinnedBuffer

        super().__init__(name)
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = stream
        self._lock = lock
        self._capture = capture
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: _numpy_dtype(engine.get_tensor_dtype(n)) for n in names}
        self._profiles = {n: [_shape(s) for s in engine.get_tensor_profile_shape(n, 0)] for n in self._inputs}
        # The largest shapes: every input at its profile's maximum, and the outputs that follow from them.
        for n in self._inputs:
            self._set_shape(n, self._profiles[n][2])
        largest = {n: _shape(self._context.get_tensor_shape(n)) for n in names}
        self._device = {n: DeviceBuffer(_nbytes(largest[n], self._dtypes[n])) for n in names}
        self._host = {n: PinnedBuffer(_nbytes(largest[n], self._dtypes[n])) for n in names}
        for n in names:
            if not self._context.set_tensor_address(n, self._device[n].pointer):
                raise EngineError(f"TensorRT refused the buffer of {name} tensor {n}")
        self._shapes = {n: self._profiles[n][2] for n in self._inputs}
        #: Input shapes -> their captured CUDA graph, or None where capture failed (then runs are plain).
        self._graphs: dict[tuple[Shape, ...], CudaGraph | None] = {}
        weakref.finalize(self, _close_all, self._graphs, [*self._device.values(), *self._host.values()])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise ValueError(f"{self.name} needs input {missing[0]!r}")
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self._inputs}
        with self._lock:
            changed = False
            for n, array in arrays.items():
                if self._shapes[n] != array.shape:
                    self._set_shape(n, array.shape)
                    self._shapes[n] = array.shape
                    changed = True
                np.copyto(self._host[n].view(array.dtype, array.shape), array)
                self._stream.copy(self._device[n].pointer, self._host[n].pointer, array.nbytes)
            self._execute(tuple(self._shapes[n] for n in self._inputs), changed)
            shapes = {n: _shape(self._context.get_tensor_shape(n)) for n in self._outputs}
            for n, shape in shapes.items():
                self._stream.copy(self._host[n].pointer, self._device[n].pointer, _nbytes(shape, self._dtypes[n]))
            self._stream.synchronize()
            return {n: self._host[n].view(self._dtypes[n], shape).copy() for n, shape in shapes.items()}

    @property
    def captured_shapes(self) -> list[tuple[Shape, ...]]:
        """The input shapes that have a CUDA graph (for logs and tests)."""
        return [key for key, graph in self._graphs.items() if graph is not None]

    def _execute(self, key: tuple[Shape, ...], shapes_changed: bool) -> None:
        """Replay the CUDA graph of these shapes; else run plainly, and capture one for the next calls.

        A replay only follows a run at the same shapes: the first enqueue after a shape change may update
        state on the device that a graph captured earlier would not redo."""
        graph = self._graphs.get(key)
        if graph is not None and not shapes_changed:
            graph.launch(self._stream)
            return
        self._enqueue()
        if self._capture and key not in self._graphs:
            self._graphs[key] = self._captured()

    def _captured(self) -> CudaGraph | None:
        try:
            return self._stream.capture(self._enqueue)
        except EngineError as error:  # a CudaError, or TensorRT refusing to enqueue while capturing
            logger.warning("%s runs without a CUDA graph: capturing it failed (%s)", self.name, error)
            return None

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.handle):
            raise EngineError(f"TensorRT could not enqueue {self.name} (see its log above)")

    def _set_shape(self, name: str, shape: Shape) -> None:
        if not self._context.set_input_shape(name, shape):
            low, _, high = self._profiles[name]
            raise OutOfProfileError(
                f"{self.name} input {name} has shape {shape}, outside the engine's profile {low} to {high}"
            )


def _close_all(graphs: dict[Any, CudaGraph | None], buffers: Iterable[Any]) -> None:
    for graph in graphs.values():
        if graph is not None:
            graph.close()
    for buffer in buffers:
        buffer.close()


def _shape(dims: trt.Dims) -> Shape:
    return tuple(dims[i] for i in range(len(dims)))


def _nbytes(shape: Shape, dtype: np.dtype[Any]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _numpy_dtype(dtype: trt.DataType) -> np.dtype[Any]:
    import tensorrt as trt

    types = {
        trt.DataType.FLOAT: np.float32,
        trt.DataType.HALF: np.float16,
        trt.DataType.INT32: np.int32,
        trt.DataType.INT64: np.int64,
        trt.DataType.BOOL: np.bool_,
    }
    if dtype not in types:
        raise EngineError(f"engine input/output type {dtype} is not one this runtime feeds")
    return np.dtype(types[dtype])
