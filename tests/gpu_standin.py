"""A recording stand-in for the parts of TensorRT and cuda-python the TensorRT backend and the build call, for
machines without either. It stands in for the libraries only: the backend under test runs unchanged on it.

- ``StandInCuda`` is ``cuda.bindings.runtime``: device memory is simulated (bytearrays at fake addresses), pinned
  host memory is real (ctypes), copies move bytes, stream capture records the work enqueued and a graph launch
  replays it with the addresses it was captured with, as a real CUDA graph does.
- ``StandInTensorRT`` is the ``tensorrt`` module: the builder reads the ONNX graph's inputs and outputs (the
  plan it writes is a json of them and the profile); an engine computes with ONNX Runtime on CPU from the bytes
  at the addresses bound to its context, so results are real; a context refuses a capture before one plain
  enqueue after a shape change, as TensorRT documents, and scribbles over its scratch memory on every run.

Every call that creates or destroys something is appended to ``events`` (shared by both), so tests assert orders.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import json
import sys
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime

SUCCESS = 0
ONNX_TYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT64: "INT64"}


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 5
    BOOL = 4
    UINT8 = 6


NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


class CudaErrorCode(enum.Enum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureUnsupported = 900


class StandInCuda:
    """``cuda.bindings.runtime`` for one simulated GPU."""

    cudaError_t = CudaErrorCode
    cudaStreamNonBlocking = 1
    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyDefault=4)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self, events: list[tuple[Any, ...]], memory: int = 1 << 30) -> None:
        self.events = events
        self.memory = memory
        self.device: dict[int, bytearray] = {}
        self.pinned: dict[int, Any] = {}
        self.capturing: dict[int, list[Callable[[], None]]] = {}
        self.copies: list[tuple[str, int, int, int]] = []  # (direction, destination, source, bytes)
        self._addresses = itertools.count(0x10_0000_0000, 1 << 32)
        self._handles = itertools.count(0x5000)

    # -- device and host memory --------------------------------------------------------------------------------
    def cudaMalloc(self, nbytes: int) -> tuple[Any, int | None]:
        if nbytes > self.memory - sum(len(b) for b in self.device.values()):
            return CudaErrorCode.cudaErrorMemoryAllocation, None
        pointer = next(self._addresses)
        self.device[pointer] = bytearray(nbytes)
        self.events.append(("cudaMalloc", pointer, nbytes))
        return CudaErrorCode.cudaSuccess, pointer

    def cudaFree(self, pointer: int) -> tuple[Any]:
        del self.device[pointer]
        self.events.append(("cudaFree", pointer))
        return (CudaErrorCode.cudaSuccess,)

    def cudaMallocHost(self, nbytes: int) -> tuple[Any, int]:
        buffer = ctypes.create_string_buffer(nbytes)
        pointer = ctypes.addressof(buffer)
        self.pinned[pointer] = buffer
        self.events.append(("cudaMallocHost", pointer, nbytes))
        return CudaErrorCode.cudaSuccess, pointer

    def cudaFreeHost(self, pointer: int) -> tuple[Any]:
        del self.pinned[pointer]
        self.events.append(("cudaFreeHost", pointer))
        return (CudaErrorCode.cudaSuccess,)

    def cudaMemGetInfo(self) -> tuple[Any, int, int]:
        return CudaErrorCode.cudaSuccess, self.memory - sum(len(b) for b in self.device.values()), self.memory

    def on_device(self, pointer: int) -> tuple[bytearray, int] | None:
        for base, data in self.device.items():
            if base <= pointer < base + max(len(data), 1):
                return data, pointer - base
        return None

    def read(self, pointer: int, nbytes: int) -> bytes:
        found = self.on_device(pointer)
        if found is None:
            return ctypes.string_at(pointer, nbytes)
        data, offset = found
        assert offset + nbytes <= len(data), "read past the end of a device buffer"
        return bytes(data[offset : offset + nbytes])

    def write(self, pointer: int, payload: bytes) -> None:
        found = self.on_device(pointer)
        if found is None:
            ctypes.memmove(pointer, payload, len(payload))
            return
        data, offset = found
        assert offset + len(payload) <= len(data), "write past the end of a device buffer"
        data[offset : offset + len(payload)] = payload

    # -- streams, copies, graphs -------------------------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[Any, int]:
        stream = next(self._handles)
        self.events.append(("cudaStreamCreate", stream))
        return CudaErrorCode.cudaSuccess, stream

    def cudaStreamDestroy(self, stream: int) -> tuple[Any]:
        self.events.append(("cudaStreamDestroy", stream))
        return (CudaErrorCode.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[Any]:
        assert stream not in self.capturing, "synchronize while capturing"
        self.events.append(("cudaStreamSynchronize", stream))
        return (CudaErrorCode.cudaSuccess,)

    def enqueue(self, stream: int, work: Callable[[], None]) -> None:
        """Run ``work`` now, or record it while ``stream`` is capturing."""
        if stream in self.capturing:
            self.capturing[stream].append(work)
        else:
            work()

    def cudaMemcpyAsync(self, destination: int, source: int, nbytes: int, kind: int, stream: int) -> tuple[Any]:
        direction = ("D" if self.on_device(source) else "H") + "2" + ("D" if self.on_device(destination) else "H")
        self.copies.append((direction, destination, source, nbytes))
        self.enqueue(stream, lambda: self.write(destination, self.read(source, nbytes)))
        return (CudaErrorCode.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream: int, mode: int) -> tuple[Any]:
        self.capturing[stream] = []
        return (CudaErrorCode.cudaSuccess,)

    def cudaStreamEndCapture(self, stream: int) -> tuple[Any, list[Callable[[], None]]]:
        return CudaErrorCode.cudaSuccess, self.capturing.pop(stream)

    def cudaGraphInstantiate(self, graph: list[Callable[[], None]], flags: int) -> tuple[Any, Any]:
        executable = types.SimpleNamespace(work=list(graph), alive=True)
        self.events.append(("cudaGraphInstantiate", id(executable)))
        return CudaErrorCode.cudaSuccess, executable

    def cudaGraphDestroy(self, graph: Any) -> tuple[Any]:
        return (CudaErrorCode.cudaSuccess,)

    def cudaGraphLaunch(self, executable: Any, stream: int) -> tuple[Any]:
        assert executable.alive, "launch of a destroyed graph"
        self.events.append(("cudaGraphLaunch", id(executable)))
        for work in executable.work:
            work()
        return (CudaErrorCode.cudaSuccess,)

    def cudaGraphExecDestroy(self, executable: Any) -> tuple[Any]:
        executable.alive = False
        self.events.append(("cudaGraphExecDestroy", id(executable)))
        return (CudaErrorCode.cudaSuccess,)

    # -- device queries ----------------------------------------------------------------------------------------
    def cudaGetDeviceCount(self) -> tuple[Any, int]:
        return CudaErrorCode.cudaSuccess, 1

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, Any]:
        return CudaErrorCode.cudaSuccess, types.SimpleNamespace(name=b"NVIDIA Stand-in GPU", major=9, minor=0)

    def cudaDriverGetVersion(self) -> tuple[Any, int]:
        return CudaErrorCode.cudaSuccess, 13000

    def cudaRuntimeGetVersion(self) -> tuple[Any, int]:
        return CudaErrorCode.cudaSuccess, 13000

    def cudaGetErrorName(self, error: Any) -> tuple[Any, bytes]:
        return CudaErrorCode.cudaSuccess, error.name.encode()

    def cudaGetErrorString(self, error: Any) -> tuple[Any, bytes]:
        return CudaErrorCode.cudaSuccess, b"stand-in error"


@dataclass
class Knobs:
    """What the tests change in the stand-in TensorRT: per graph name."""

    #: Inputs the ONNX parser drops, as TensorRT's does with inputs nothing uses.
    dropped_inputs: dict[str, set[str]] = field(default_factory=dict)
    #: (graph, tensor) -> DataType name the engine reports instead of the graph's.
    dtypes: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (graph, tensor) of tensors the engine keeps in host memory.
    host_tensors: set[tuple[str, str]] = field(default_factory=set)
    #: (graph, output) whose shape TensorRT cannot infer before running (data-dependent).
    dynamic_outputs: set[tuple[str, str]] = field(default_factory=set)
    #: Graphs whose create_execution_context returns None.
    no_context: set[str] = field(default_factory=set)
    #: Scratch memory each engine asks for.
    scratch: dict[str, int] = field(default_factory=dict)


class StandInTensorRT(types.ModuleType):
    """The ``tensorrt`` module."""

    DataType = DataType
    TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")
    TensorLocation = enum.Enum("TensorLocation", "DEVICE HOST")
    ExecutionContextAllocationStrategy = enum.Enum("ExecutionContextAllocationStrategy", "STATIC USER_MANAGED")
    NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)

    def __init__(self, cuda: StandInCuda, events: list[tuple[Any, ...]]) -> None:
        super().__init__("tensorrt")
        self.__version__ = "10.13.0.35"
        self.cuda = cuda
        self.events = events
        self.knobs = Knobs()
        self.sessions: list[weakref.ref[Any]] = []
        #: (graph, {input: (min, opt, max)}) of every profile the builder was given.
        self.profiles: list[tuple[str, dict[str, tuple[tuple[int, ...], ...]]]] = []
        module = self

        class Logger:
            INFO, WARNING = 1, 2

            def __init__(self, severity: int) -> None:
                self.severity = severity

        class Runtime:
            def __init__(self, logger: Any) -> None:
                module.events.append(("Runtime",))

            def deserialize_cuda_engine(self, plan: bytes) -> StandInEngine:
                return StandInEngine(module, self, json.loads(plan))

            def __del__(self) -> None:
                module.events.append(("del Runtime",))

        self.Logger, self.Runtime = Logger, Runtime
        self.Dims = tuple
        self.ILogger = Logger
        self.IProgressMonitor = object

    def Builder(self, logger: Any) -> StandInBuilder:
        return StandInBuilder(self)

    def OnnxParser(self, network: StandInNetwork, logger: Any) -> Any:
        module = self

        class Parser:
            num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                model = onnx.load(path, load_external_data=False)
                graph = Path(path).stem
                dropped = module.knobs.dropped_inputs.get(graph, set())
                network.graph, network.onnx = graph, path
                dtypes = module.knobs.dtypes
                network.inputs = [_tensor(graph, v, dtypes) for v in model.graph.input if v.name not in dropped]
                network.outputs = [_tensor(graph, v, dtypes) for v in model.graph.output]
                return True

        return Parser()


def _tensor(graph: str, value: onnx.ValueInfoProto, dtypes: dict[tuple[str, str], str]) -> Any:
    dtype = dtypes.get((graph, value.name), ONNX_TYPES[value.type.tensor_type.elem_type])
    return types.SimpleNamespace(name=value.name, dtype=DataType[dtype])


@dataclass
class StandInNetwork:
    graph: str = ""
    onnx: str = ""
    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> Any:
        return self.inputs[index]

    def get_output(self, index: int) -> Any:
        return self.outputs[index]


class StandInBuilder:
    def __init__(self, module: StandInTensorRT) -> None:
        self.module = module

    def create_network(self, flags: int) -> StandInNetwork:
        return StandInNetwork()

    def create_optimization_profile(self) -> Any:
        shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        return types.SimpleNamespace(shapes=shapes, set_shape=lambda name, *ends: shapes.__setitem__(name, ends))

    def create_builder_config(self) -> Any:
        cache = types.SimpleNamespace(serialize=lambda: b"timings")
        config = types.SimpleNamespace(profiles=[], progress_monitor=None)
        config.set_memory_pool_limit = lambda pool, size: None
        config.add_optimization_profile = config.profiles.append
        config.create_timing_cache = lambda data: cache
        config.set_timing_cache = lambda cache, ignore_mismatch: True
        config.get_timing_cache = lambda: cache
        return config

    def build_serialized_network(self, network: StandInNetwork, config: Any) -> bytes:
        (profile,) = config.profiles
        self.module.profiles.append((network.graph, dict(profile.shapes)))
        plan = {
            "graph": network.graph,
            "onnx": network.onnx,
            "inputs": {t.name: t.dtype.name for t in network.inputs},
            "outputs": {t.name: t.dtype.name for t in network.outputs},
            "profile": {name: [list(s) for s in ends] for name, ends in profile.shapes.items()},
        }
        return json.dumps(plan).encode()


_SESSIONS: dict[str, onnxruntime.InferenceSession] = {}


class StandInEngine:
    """An engine that computes with ONNX Runtime CPU on the bytes at its bound addresses."""

    def __init__(self, module: StandInTensorRT, runtime: Any, plan: dict[str, Any]) -> None:
        self.module, self.runtime = module, runtime  # an engine keeps its runtime alive, as TensorRT's does
        self.name = plan["graph"]
        knobs = module.knobs
        self.inputs = {n: knobs.dtypes.get((self.name, n), t) for n, t in plan["inputs"].items()}
        self.outputs = {n: knobs.dtypes.get((self.name, n), t) for n, t in plan["outputs"].items()}
        #: What ONNX Runtime computes with: the graph's own types.
        self.onnx_types = {**plan["inputs"], **plan["outputs"]}
        self.profile = {n: [tuple(s) for s in ends] for n, ends in plan["profile"].items()}
        self.device_memory_size_v2 = knobs.scratch.get(self.name, 4096)
        if plan["onnx"] not in _SESSIONS:
            _SESSIONS[plan["onnx"]] = onnxruntime.InferenceSession(plan["onnx"], providers=["CPUExecutionProvider"])
        self.session = _SESSIONS[plan["onnx"]]
        module.events.append(("engine", self.name))

    def complete(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """ONNX Runtime still needs the inputs the parser dropped: ones shaped like the first input (the text
        encoder's attention mask, the one a test drops)."""
        first = next(iter(feeds.values()))
        missing = [i for i in self.session.get_inputs() if i.name not in feeds]
        return feeds | {i.name: np.ones(first.shape, np.int64) for i in missing}

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, index: int) -> str:
        return [*self.inputs, *self.outputs][index]

    def get_tensor_mode(self, name: str) -> Any:
        return self.module.TensorIOMode.INPUT if name in self.inputs else self.module.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[{**self.inputs, **self.outputs}[name]]

    def get_tensor_location(self, name: str) -> Any:
        host = (self.name, name) in self.module.knobs.host_tensors
        return self.module.TensorLocation.HOST if host else self.module.TensorLocation.DEVICE

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        assert profile == 0
        return self.profile[name]

    def create_execution_context(self, strategy: Any) -> StandInContext | None:
        assert strategy == self.module.ExecutionContextAllocationStrategy.USER_MANAGED
        if self.name in self.module.knobs.no_context:
            return None
        return StandInContext(self)

    def __del__(self) -> None:
        self.module.events.append(("del engine", self.name))


class StandInContext:
    def __init__(self, engine: StandInEngine) -> None:
        self.engine = engine  # a context keeps its engine alive, as TensorRT's does
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None
        #: Input shapes changed since the last plain enqueue: TensorRT then refuses to be captured.
        self.stale = True
        engine.module.events.append(("context", engine.name, id(self)))

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        low, _, high = self.engine.profile[name]
        if len(shape) != len(low) or not all(a <= b <= c for a, b, c in zip(low, shape, high, strict=True)):
            return False
        if self.shapes.get(name) != tuple(shape):
            self.shapes[name] = tuple(shape)
            self.stale = True
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.inputs:
            return self.shapes[name]
        if (self.engine.name, name) in self.engine.module.knobs.dynamic_outputs:
            return (-1,)
        feeds = {n: np.zeros(s, NUMPY[self.engine.inputs[n]]) for n, s in self.shapes.items()}
        return self.engine.session.run([name], self.engine.complete(feeds))[0].shape

    def set_tensor_address(self, name: str, pointer: int) -> bool:
        self.addresses[name] = pointer
        return True

    def set_device_memory(self, pointer: int, size: int) -> None:
        assert size >= self.engine.device_memory_size_v2, "scratch memory smaller than the engine needs"
        self.memory = (pointer, size)
        self.engine.module.events.append(("set_device_memory", self.engine.name, pointer))

    def execute_async_v3(self, stream: int) -> bool:
        cuda = self.engine.module.cuda
        assert self.memory is not None, "enqueue without device memory"
        assert set(self.addresses) == set(self.engine.inputs) | set(self.engine.outputs)
        if stream in cuda.capturing and self.stale:
            return False  # TensorRT: enqueue once after an input shape change before capturing
        if stream not in cuda.capturing:
            self.stale = False
        shapes, addresses, memory = dict(self.shapes), dict(self.addresses), self.memory
        cuda.enqueue(stream, lambda: self._compute(shapes, addresses, memory))
        return True

    def _compute(self, shapes: dict[str, Any], addresses: dict[str, int], memory: tuple[int, int]) -> None:
        cuda, engine = self.engine.module.cuda, self.engine
        feeds = {}
        for n, shape in shapes.items():
            dtype = np.dtype(NUMPY[engine.inputs[n]])
            count = int(np.prod(shape))
            feeds[n] = np.frombuffer(cuda.read(addresses[n], count * dtype.itemsize), dtype).reshape(shape)
        outputs = engine.session.run(list(engine.outputs), engine.complete(feeds))
        for n, value in zip(engine.outputs, outputs, strict=True):
            cuda.write(addresses[n], np.ascontiguousarray(value, NUMPY[engine.outputs[n]]).tobytes())
        pointer, size = memory
        if size:
            cuda.write(pointer, bytes([0xAB]) * size)  # scratch holds nothing from one run to the next

    def __del__(self) -> None:
        self.engine.module.events.append(("del context", self.engine.name, id(self)))


def install(monkeypatch: Any) -> tuple[StandInTensorRT, StandInCuda]:
    """Put the stand-ins where ``import tensorrt`` and ``from cuda.bindings import runtime`` find them; the
    sessions created on them are in ``StandInTensorRT.sessions``, for the test to close while they are there."""
    from audioldm_trt.engine.backends import tensorrt as backend

    events: list[tuple[Any, ...]] = []
    cuda = StandInCuda(events)
    trt = StandInTensorRT(cuda, events)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cuda)
    backend.tensorrt_logger.cache_clear()
    monkeypatch.setattr(backend, "tensorrt_cuda_major", lambda: 13)
    created = backend.DeviceSession.__init__

    def recorded(session: Any) -> None:
        created(session)
        trt.sessions.append(weakref.ref(session))

    monkeypatch.setattr(backend.DeviceSession, "__init__", recorded)
    return trt, cuda
