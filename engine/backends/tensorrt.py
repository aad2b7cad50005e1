"""TensorRT: the engines ``audioldm-trt build`` wrote, run with cuda-python (no torch).

Files: ``DIR/tensorrt/<graph>.engine`` beside ``<graph>.json``, the record of what the engine was built from
and for (TensorRT version, compute capability, the declared ranges, the profile shapes, the sha256 of the ONNX
graph). Loading compares every record with this machine and the export, and refuses a mismatch with one line
saying what to rebuild.

Ownership: a backend's GPU objects belong to one ``DeviceSession`` (its CUDA stream, the ``trt.Runtime``, the
engines, their execution contexts, CUDA graphs and buffers), which frees them in one order (CUDA graphs,
contexts, engines, runtime, then buffers, scratch memory and last the stream) on ``close()``, or when the
backend and every graph it loaded are gone. Graphs keep their session alive, so a graph outlives its backend.

Memory: execution contexts are created with ``ExecutionContextAllocationStrategy.USER_MANAGED`` and all share
one scratch allocation, sized for the engine that needs most (``device_memory_size_v2``), as NVIDIA's diffusion
demo shares one; every run holds the session's lock and uses its one stream, so no two contexts use it at once.
Each engine's inputs and outputs live in device buffers allocated once for the largest shapes of its profile
(outputs sized by TensorRT's shape inference at those shapes; a dynamic output size is an error), with pinned
host buffers beside them.

CUDA graphs: TensorRT asks for one enqueue after an input shape change before a capture, and a captured graph
holds the shapes, addresses and scratch pointer of its context. So the UNet keeps one execution context per input
shape (batch, height), each with its own graph: a new shape gets a context that runs plainly once and is then
captured; later calls at that shape replay its graph, whatever ran in between. The least recently used shape
goes when more than ``cuda_graph_shapes`` are kept. The other graphs run once per generation and keep one
context, whose shapes are set per call.

``tensorrt`` and ``cuda-python`` are imported when the backend is used, never when the package is imported.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BackendUnavailableError, EngineDirectoryError, EngineError
from ..files import write_atomically
from ..manifest import GRAPH_NAMES, GraphSpec, Manifest
from .base import Backend, Chain, Graph, Link
from .profiles import BuildRanges, OutOfProfileError, Shape

if TYPE_CHECKING:
    import tensorrt as trt

    from .cuda import CudaGraph, Device, DeviceBuffer, PinnedBuffer, Stream

logger = logging.getLogger(__name__)

#: Where the engines of an export live, relative to its directory.
ENGINE_DIRECTORY = "tensorrt"
RECORD_FORMAT = 1
#: The graph whose calls are captured into CUDA graphs: the only one called once per step.
CAPTURED_GRAPH = "unet"
#: How many UNet input shapes keep their own execution context and CUDA graph by default.
CUDA_GRAPH_SHAPES = 8


@dataclass(frozen=True)
class EngineRecord:
    """What one engine was built from (the ONNX graph) and for (TensorRT, GPU, ranges); stored as json."""

    graph: str
    onnx_sha256: str
    tensorrt: str
    #: The GPU it was built on, for people: engines run on any GPU of the same compute capability.
    gpu: str
    compute_capability: str
    #: ``BuildRanges.to_json()``: the waveforms, seconds and batched requests the engine was declared for.
    ranges: dict[str, Any]
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
    """TensorRT's version, or BackendUnavailableError when it cannot be imported or was built for another CUDA
    major version than cuda-python.

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
    check_cuda_majors(tensorrt_cuda_major())
    return version


def tensorrt_cuda_major() -> int | None:
    """The CUDA major version of the installed TensorRT wheels (``tensorrt-cu12``, ``tensorrt-cu13``: the
    ``-cuNN`` of their distribution names), or None for a TensorRT installed otherwise."""
    for distribution in importlib.metadata.distributions():
        match = re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_]bindings)?", distribution.metadata["Name"] or "", re.I)
        if match:
            return int(match.group(1))
    return None


def check_cuda_majors(tensorrt_major: int | None) -> None:
    """BackendUnavailableError naming both when TensorRT and cuda-python are built for different CUDA majors."""
    from .cuda import install_hint, runtime_cuda_major

    cuda_python = runtime_cuda_major()
    if tensorrt_major is not None and tensorrt_major != cuda_python:
        raise BackendUnavailableError(
            f"TensorRT here is built for CUDA {tensorrt_major} but cuda-python for CUDA {cuda_python}: install one"
            f" matching set, {install_hint(tensorrt_major)} (or {install_hint(cuda_python)})"
        )


@functools.cache
def tensorrt_logger() -> trt.ILogger:
    """One logger for every builder and runtime of the process (TensorRT warns about a second one)."""
    import tensorrt as trt

    verbose = logging.getLogger("audioldm_trt").isEnabledFor(logging.DEBUG)
    return trt.Logger(trt.Logger.INFO if verbose else trt.Logger.WARNING)


def rebuild_command(directory: Path, ranges: BuildRanges) -> str:
    return f"audioldm-trt build {directory} {ranges.build_flags()}"


def check_record(
    record: EngineRecord, directory: Path, manifest: Manifest, tensorrt_version: str, device: Device
) -> None:
    """Raise EngineDirectoryError naming what differs if the engine of ``record`` cannot run here on this export.

    What an engine depends on is the TensorRT version and the GPU architecture (compute capability), not the GPU's
    name: another GPU of the same compute capability runs it (its kernels were timed on the other one)."""
    engine = engine_paths(directory, record.graph)[0]
    rebuild = rebuild_command(directory, BuildRanges.from_json(record.ranges))
    onnx = manifest.graphs[record.graph].file
    if record.onnx_sha256 != manifest.graph_sha256(record.graph):
        raise EngineDirectoryError(f"{engine} was built from another {onnx} than the export's: rebuild with {rebuild}")
    if record.tensorrt != tensorrt_version:
        raise EngineDirectoryError(
            f"{engine} was built with TensorRT {record.tensorrt}, this is TensorRT {tensorrt_version}:"
            f" rebuild with {rebuild}"
        )
    if record.compute_capability != device.compute_capability:
        raise EngineDirectoryError(
            f"{engine} was built for compute capability {record.compute_capability} ({record.gpu}), this is"
            f" {device}: rebuild with {rebuild} on this machine"
        )
    if record.gpu != device.name:
        logger.info("%s was built on %s; it runs on this %s of the same compute capability", engine, record.gpu, device)
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
    """Runs the engines of one export on GPU 0. ``cuda_graphs=False`` runs the UNet without capture;
    ``cuda_graph_shapes`` bounds how many UNet input shapes keep a context and a CUDA graph."""

    name = "tensorrt"

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        cuda_graphs: bool = True,
        cuda_graph_shapes: int = CUDA_GRAPH_SHAPES,
    ) -> None:
        if cuda_graph_shapes < 1:
            raise ValueError(f"cuda_graph_shapes must be at least 1, got {cuda_graph_shapes}")
        self.version, self.device, self.ranges = inspect_engines(directory, manifest)
        self._directory = directory
        self._model = manifest.model
        self._cuda_graphs = cuda_graphs
        self._cuda_graph_shapes = cuda_graph_shapes
        self.session = DeviceSession()

    def load(self, directory: Path, manifest: Manifest, graph: str) -> Graph:
        path = engine_paths(directory, graph)[0]
        rebuild = rebuild_command(directory, self.ranges)
        capture = self._cuda_graphs and graph == CAPTURED_GRAPH
        return TensorRTGraph(
            graph,
            self.session.deserialize(path, rebuild),
            manifest.graphs[graph],
            self.session,
            contexts=self._cuda_graph_shapes if capture else 1,
            capture=capture,
            rebuild=rebuild,
        )

    def chain(self, first: Graph, second: Graph, link: Link) -> Chain:
        if isinstance(first, TensorRTGraph) and isinstance(second, TensorRTGraph):
            return TensorRTChain(first, second, link)
        return Chain(first, second, link)

    def check_workload(self, batch: int, latent_height: int) -> None:
        self.ranges.check(self._model, batch, latent_height, self._directory)

    def max_rows(self, graph: str) -> int | None:
        return self.ranges.dimensions(self._model)[graph]["batch"].max

    def describe(self) -> str:
        if self._cuda_graphs:
            graphs = f"CUDA graphs for up to {self._cuda_graph_shapes} UNet shapes"
        else:
            graphs = "no CUDA graphs"
        return f"TensorRT {self.version} on {self.device}, {graphs}"

    def close(self) -> None:
        self.session.close()


class DeviceSession:
    """The one owner of a backend's GPU objects; ``close()`` frees them in order, as does the garbage collector
    once nothing refers to the session. Every graph run holds ``lock`` (one stream, one scratch allocation)."""

    def __init__(self) -> None:
        import tensorrt as trt

        from .cuda import Stream

        self.lock = threading.Lock()
        self._held = _Held(Stream())
        self._held.runtime = trt.Runtime(tensorrt_logger())
        self._finalizer = weakref.finalize(self, self._held.release)

    @property
    def stream(self) -> Stream:
        return self._held.stream

    def deserialize(self, path: Path, rebuild: str) -> _EngineObjects:
        """The engine in ``path`` with nothing created for it yet; the session owns it from now on."""
        with self.lock:
            self._check_open()
            engine = self._held.runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise EngineDirectoryError(f"TensorRT could not load {path}: rebuild with {rebuild}")
            objects = _EngineObjects(engine)
            self._held.engines.append(objects)
            self._held.scratch_bytes = max(self._held.scratch_bytes, engine.device_memory_size_v2)
            return objects

    @contextmanager
    def running(self) -> Iterator[None]:
        """Hold the lock for one run; EngineError if the session was closed."""
        with self.lock:
            self._check_open()
            yield

    def scratch(self) -> tuple[int, int]:
        """(pointer, bytes) of the scratch memory every context shares, allocated (or grown, after an engine that
        needs more was loaded) on first use, for the engine that needs most. Hold the lock."""
        held = self._held
        if held.scratch is not None and held.scratch.nbytes >= held.scratch_bytes:
            return held.scratch.pointer, held.scratch.nbytes
        if held.scratch_bytes == 0:
            return 0, 0  # TensorRT accepts no memory where none is needed
        from .cuda import DeviceBuffer

        if held.scratch is not None:
            held.stream.synchronize()  # nothing may still run on the old allocation
            held.scratch.close()
            held.scratch = None
        held.scratch = DeviceBuffer(held.scratch_bytes, "the TensorRT engines' scratch memory")
        return held.scratch.pointer, held.scratch.nbytes

    def close(self) -> None:
        """Wait for the stream, then free every GPU object of the backend; later runs raise EngineError."""
        with self.lock:
            self._finalizer()

    def _check_open(self) -> None:
        if self._held.closed:
            raise EngineError("the TensorRT engines were closed (Engine.close): load the engine again")


@dataclass
class _Held:
    """What a DeviceSession owns, apart from the session itself (so that its finalizer can free it)."""

    stream: Stream
    runtime: Any = None
    engines: list[_EngineObjects] = field(default_factory=list)
    scratch: DeviceBuffer | None = None
    #: The scratch memory the loaded engines need: the largest ``device_memory_size_v2``.
    scratch_bytes: int = 0
    closed: bool = False

    def release(self) -> None:
        """CUDA graphs and contexts, then engines, then the runtime, then the memory, then the stream. Every
        step is attempted; the first failure is raised after."""
        if self.closed:
            return
        self.closed = True
        failures: list[Exception] = []

        def attempt(step: Callable[[], None]) -> None:
            try:
                step()
            except Exception as error:
                failures.append(error)

        attempt(self.stream.synchronize)
        for engine in self.engines:
            attempt(engine.release_graphs)
        for engine in self.engines:
            attempt(engine.release_contexts)
        for engine in self.engines:
            engine.engine = None
        self.runtime = None
        for engine in self.engines:
            attempt(engine.release_buffers)
        if self.scratch is not None:
            attempt(self.scratch.close)
        attempt(self.stream.close)
        if failures:
            raise failures[0]


@dataclass
class _Context:
    """An execution context at fixed input shapes (reshaped only in graphs without capture), with what it needs
    to replay: its CUDA graph and the scratch pointer the graph was captured with."""

    context: Any
    shapes: dict[str, Shape]
    outputs: dict[str, Shape]
    graph: CudaGraph | None = None
    #: Capture failed for this shape (logged): it runs plainly.
    plain: bool = False
    scratch: int | None = None

    def release_graph(self) -> None:
        if self.graph is not None:
            self.graph.close()
            self.graph = None

    def release(self) -> None:
        self.release_graph()
        self.context = None


@dataclass
class _EngineObjects:
    """One engine with its execution contexts (by input shapes, least recently used first) and I/O buffers."""

    engine: Any
    contexts: OrderedDict[tuple[Shape, ...], _Context] = field(default_factory=OrderedDict)
    device: dict[str, DeviceBuffer] = field(default_factory=dict)
    host: dict[str, PinnedBuffer] = field(default_factory=dict)

    def release_graphs(self) -> None:
        for context in self.contexts.values():
            context.release_graph()

    def release_contexts(self) -> None:
        while self.contexts:
            self.contexts.popitem()[1].release()

    def release_buffers(self) -> None:
        buffers: list[DeviceBuffer | PinnedBuffer] = [*self.device.values(), *self.host.values()]
        self.device.clear()
        self.host.clear()
        for buffer in buffers:
            buffer.close()


class TensorRTGraph(Graph):
    """One engine run through its session: checked against the manifest at load, run with contexts by shape."""

    def __init__(
        self,
        name: str,
        objects: _EngineObjects,
        spec: GraphSpec,
        session: DeviceSession,
        contexts: int,
        capture: bool,
        rebuild: str,
    ) -> None:
        import tensorrt as trt

        from .cuda import DeviceBuffer, PinnedBuffer

        super().__init__(name)
        self._objects = objects
        self._session = session
        self._max_contexts = contexts
        self._capture = capture
        engine = objects.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: numpy_dtype(engine.get_tensor_dtype(n)) for n in names}
        check_against_manifest(name, self._inputs, self._outputs, self._dtypes, spec, rebuild)
        for n in names:
            if engine.get_tensor_location(n) != trt.TensorLocation.DEVICE:
                raise EngineDirectoryError(
                    f"{name} tensor {n} lives in host memory in the engine; this runtime binds device buffers only:"
                    f" rebuild with {rebuild}"
                )
        #: Inputs the manifest lists that TensorRT's ONNX parser dropped as unused: fed, and ignored.
        self._unused = set(spec.inputs) - set(self._inputs)
        #: Inputs whose device buffer holds the same bytes as their pinned buffer: every upload copies the
        #: bytes it staged, so what the pinned buffer holds of an input is on the device too.
        self._uploaded: set[str] = set()
        self._profiles = {n: [_shape(s) for s in engine.get_tensor_profile_shape(n, 0)] for n in self._inputs}
        # The largest shapes: every input at its profile's maximum, and the outputs TensorRT infers from them.
        with session.running():
            largest = self._new_context({n: self._profiles[n][2] for n in self._inputs})
            sizes = {n: _nbytes(largest.shapes.get(n) or largest.outputs[n], self._dtypes[n]) for n in names}
            for n in names:
                what = f"the {name} engine's {n} buffer"
                objects.device[n] = DeviceBuffer(sizes[n], what)
                objects.host[n] = PinnedBuffer(sizes[n], what)
            self._bind(largest)
            objects.contexts[self._key(largest.shapes)] = largest

    def run(self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()) -> dict[str, np.ndarray]:
        arrays = self._check_feeds(feeds)
        with self._session.running():
            context = self._upload(arrays, reuse)
            self._execute(context)
            return self._download(context)

    @property
    def captured_shapes(self) -> list[tuple[Shape, ...]]:
        """The input shapes that have a CUDA graph, least recently used first (for logs and tests)."""
        return [key for key, context in self._objects.contexts.items() if context.graph is not None]

    def _check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The engine's inputs from ``feeds``: ValueError for a missing or unknown input, another dtype, or a shape
        of another rank; OutOfProfileError for a shape outside the engine's profile."""
        unknown = [n for n in feeds if n not in self._inputs and n not in self._unused]
        if unknown:
            raise ValueError(f"{self.name} has no input {unknown[0]!r}")
        arrays = {}
        for n in self._inputs:
            if n not in feeds:
                raise ValueError(f"{self.name} needs input {n!r}")
            array = np.asarray(feeds[n])
            if array.dtype != self._dtypes[n]:
                raise ValueError(f"{self.name} input {n} must be {self._dtypes[n]}, got {array.dtype}")
            low, _, high = self._profiles[n]
            if array.ndim != len(low):
                raise ValueError(f"{self.name} input {n} must have {len(low)} dimensions, got shape {array.shape}")
            if not all(a <= b <= c for a, b, c in zip(low, array.shape, high, strict=True)):
                raise OutOfProfileError(
                    f"{self.name} input {n} has shape {array.shape}, outside the engine's profile {low} to {high}"
                )
            arrays[n] = array
        return arrays

    def _upload(self, arrays: Mapping[str, np.ndarray], reuse: Collection[str]) -> _Context:
        """The context for these shapes, after enqueueing the copies of the inputs (those in ``reuse`` only
        where they differ from what the device holds). Hold the lock."""
        context = self._context({n: array.shape for n, array in arrays.items()})
        stream, objects = self._session.stream, self._objects
        for n, array in arrays.items():
            staged = objects.host[n].view(array.dtype, array.shape)
            if n in reuse and n in self._uploaded and np.array_equal(staged, array):
                continue
            np.copyto(staged, array)
            stream.copy(objects.device[n].pointer, objects.host[n].pointer, array.nbytes)
            self._uploaded.add(n)
        return context

    def _download(self, context: _Context) -> dict[str, np.ndarray]:
        """Copy the outputs to the host, wait, and return copies the caller may keep. Hold the lock."""
        stream, objects = self._session.stream, self._objects
        for n in self._outputs:
            stream.copy(
                objects.host[n].pointer, objects.device[n].pointer, _nbytes(context.outputs[n], self._dtypes[n])
            )
        stream.synchronize()
        return {n: objects.host[n].view(self._dtypes[n], context.outputs[n]).copy() for n in self._outputs}

    def _execute(self, context: _Context) -> None:
        """Replay the context's CUDA graph; else enqueue plainly, then (UNet) capture a graph for the next calls.

        A context's shapes do not change once it is captured, so the enqueue TensorRT asks for after a shape
        change is this plain one, and the graph stays valid as long as the scratch pointer it holds."""
        pointer, size = self._session.scratch()
        if context.scratch != pointer:
            context.context.set_device_memory(pointer, size)
            context.scratch = pointer
            context.release_graph()  # it holds the old pointer
        if context.graph is not None:
            context.graph.launch(self._session.stream)
            return
        self._enqueue(context)
        if self._capture and not context.plain:
            context.graph = self._captured(context)
            context.plain = context.graph is None

    def _captured(self, context: _Context) -> CudaGraph | None:
        try:
            return self._session.stream.capture(lambda: self._enqueue(context))
        except EngineError as error:  # a CudaError, or TensorRT refusing to enqueue while capturing
            logger.warning(
                "%s runs without a CUDA graph at %s: capturing it failed (%s)", self.name, context.shapes, error
            )
            return None

    def _enqueue(self, context: _Context) -> None:
        if not context.context.execute_async_v3(self._session.stream.handle):
            raise EngineError(f"TensorRT could not enqueue {self.name} (see its log above)")

    def _context(self, shapes: dict[str, Shape]) -> _Context:
        """The context for input ``shapes``: the one kept for them, else (capturing) a new one, dropping the least
        recently used beyond the bound, else the one context set to these shapes. Hold the lock."""
        contexts = self._objects.contexts
        key = self._key(shapes)
        found = contexts.get(key)
        if found is not None:
            contexts.move_to_end(key)
            return found
        if not self._capture:
            (old_key, context), *_ = contexts.items()
            del contexts[old_key]
            for n, shape in shapes.items():
                self._set_shape(context.context, n, shape)
            context.shapes, context.outputs = dict(shapes), self._output_shapes(context.context)
        else:
            context = self._new_context(shapes)
            self._bind(context)
        contexts[key] = context
        if len(contexts) > self._max_contexts:
            self._session.stream.synchronize()  # the context that goes may still run
            while len(contexts) > self._max_contexts:
                contexts.popitem(last=False)[1].release()
        return context

    def _new_context(self, shapes: dict[str, Shape]) -> _Context:
        import tensorrt as trt

        engine = self._objects.engine
        context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if context is None:
            from .cuda import describe_shortage

            raise EngineError(
                f"TensorRT could not create an execution context for {self.name}"
                f" ({describe_shortage(engine.device_memory_size_v2)} for its scratch memory): the GPU's memory is"
                " short; free some, or build engines for a smaller --batch or --duration"
            )
        for n, shape in shapes.items():
            self._set_shape(context, n, shape)
        return _Context(context, dict(shapes), self._output_shapes(context))

    def _bind(self, context: _Context) -> None:
        for n, buffer in self._objects.device.items():
            if not context.context.set_tensor_address(n, buffer.pointer):
                raise EngineError(f"TensorRT refused the buffer of {self.name} tensor {n}")

    def _output_shapes(self, context: Any) -> dict[str, Shape]:
        """TensorRT's output shapes for the context's input shapes; EngineError for a size known only after a run
        (none of AudioLDM's graphs has one) or larger than the buffer allocated for the largest inputs."""
        shapes = {n: _shape(context.get_tensor_shape(n)) for n in self._outputs}
        for n, shape in shapes.items():
            if any(d < 0 for d in shape):
                raise EngineError(
                    f"{self.name} output {n} has shape {shape}: its size depends on the data, which this runtime"
                    " does not support"
                )
            buffer = self._objects.device.get(n)
            if buffer is not None and _nbytes(shape, self._dtypes[n]) > buffer.nbytes:
                raise EngineError(
                    f"{self.name} output {n} of shape {shape} exceeds its buffer of {buffer.nbytes} bytes"
                )
        return shapes

    def _set_shape(self, context: Any, name: str, shape: Shape) -> None:
        if not context.set_input_shape(name, shape):
            low, _, high = self._profiles[name]
            raise OutOfProfileError(
                f"{self.name} input {name} has shape {shape}, outside the engine's profile {low} to {high}"
            )

    def _key(self, shapes: Mapping[str, Shape]) -> tuple[Shape, ...]:
        return tuple(shapes[n] for n in self._inputs)


class TensorRTChain(Chain):
    """Two engines of one session run as one call: the first's output is copied on the device into the second's
    input (``Link``: same bytes, the squeezed shape), never through the host. Timing the two waits for the stream
    between them (no copy)."""

    def __init__(self, first: TensorRTGraph, second: TensorRTGraph, link: Link) -> None:
        if first._session is not second._session:
            raise ValueError("a TensorRT chain needs two graphs of one backend")
        if second._inputs != [link.input] or link.output not in first._outputs:
            raise ValueError(f"cannot chain {first.name}.{link.output} into {second.name} (inputs {second._inputs})")
        super().__init__(first, second, link)
        self.first: TensorRTGraph = first
        self.second: TensorRTGraph = second

    def run_timed(
        self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        first, second, link = self.first, self.second, self.link
        arrays = first._check_feeds(feeds)
        with first._session.running():
            started = time.perf_counter()
            produced = first._upload(arrays, reuse)
            first._execute(produced)
            first._session.stream.synchronize()
            handed = time.perf_counter()
            shape = link.shape(produced.outputs[link.output])
            high = second._profiles[link.input][2]
            if not all(a <= b for a, b in zip(shape, high, strict=True)):
                raise OutOfProfileError(
                    f"{second.name} input {link.input} of shape {shape} exceeds its profile's {high}"
                )
            consumer = second._context({link.input: shape})
            nbytes = _nbytes(shape, second._dtypes[link.input])
            source, target = first._objects.device[link.output], second._objects.device[link.input]
            first._session.stream.copy(target.pointer, source.pointer, nbytes)
            second._uploaded.discard(link.input)  # its pinned buffer no longer holds what the device does
            second._execute(consumer)
            outputs = second._download(consumer)
            return outputs, {first.name: handed - started, second.name: time.perf_counter() - handed}


def check_against_manifest(
    graph: str,
    inputs: list[str],
    outputs: list[str],
    dtypes: Mapping[str, np.dtype[Any]],
    spec: GraphSpec,
    rebuild: str,
) -> None:
    """EngineDirectoryError unless the engine's inputs are the manifest's (less any its ONNX parser dropped as
    unused), its outputs the manifest's, each of the manifest's dtype."""
    extra = [n for n in inputs if n not in spec.inputs] + [n for n in outputs if n not in spec.outputs]
    if extra:
        raise EngineDirectoryError(
            f"the {graph} engine has a tensor {extra[0]!r} the manifest does not list: rebuild with {rebuild}"
        )
    missing = [n for n in spec.outputs if n not in outputs]
    if missing:
        raise EngineDirectoryError(f"the {graph} engine has no output {missing[0]!r}: rebuild with {rebuild}")
    declared = {**spec.inputs, **spec.outputs}
    for n, dtype in dtypes.items():
        if np.dtype(declared[n].dtype) != dtype:
            raise EngineDirectoryError(
                f"the {graph} engine's {n} is {dtype}, the manifest's is {declared[n].dtype}: rebuild with {rebuild}"
            )


def _shape(dims: trt.Dims) -> Shape:
    return tuple(dims[i] for i in range(len(dims)))


def _nbytes(shape: Shape, dtype: np.dtype[Any]) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def numpy_dtype(dtype: trt.DataType) -> np.dtype[Any]:
    """The numpy dtype of a TensorRT tensor type; EngineError for a type this runtime does not feed."""
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
