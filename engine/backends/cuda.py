"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python's ``cuda.bindings.runtime``.

cuda-bindings ships no type information (13.4: Cython modules, no .pyi), so this module is the typed boundary:
every call goes through ``_call``, which turns the ``(cudaError_t, *values)`` tuples into values or a
CudaError naming the call. Imported only by the TensorRT backend and the engine build, never at package import.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, EngineError

logger = logging.getLogger(__name__)

#: The pip extra that installs each CUDA major version's TensorRT, cuda-python and ONNX Runtime (pyproject.toml).
GPU_EXTRAS = {13: "gpu", 12: "gpu-cu12"}


class CudaError(EngineError, RuntimeError):
    """A CUDA runtime call failed while running."""


def _runtime() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        raise BackendUnavailableError("cuda-python is not installed: pip install 'audioldm-trt[gpu]'") from None
    return runtime


def _call(name: str, *args: Any) -> Any:
    """``cudart.<name>(*args)``: its single value, its tuple of values, or None; CudaError on failure."""
    runtime = _runtime()
    error, *values = getattr(runtime, name)(*args)
    if error != runtime.cudaError_t.cudaSuccess:
        raise CudaError(f"{name} failed: {_error_name(error)}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _error_name(error: Any) -> str:
    runtime = _runtime()
    _, name = runtime.cudaGetErrorName(error)
    _, text = runtime.cudaGetErrorString(error)
    return f"{name.decode()} ({text.decode()})"


def cuda_major(version: int) -> int:
    """The major of a CUDA version number as CUDA reports it (12080 is 12.8)."""
    return version // 1000


def runtime_cuda_major() -> int:
    """The CUDA major version cuda-python was built for (its runtime is linked in: no driver needed to ask)."""
    return cuda_major(int(_call("cudaRuntimeGetVersion")))


def install_hint(major: int) -> str:
    extra = GPU_EXTRAS.get(major)
    return f"pip install 'audioldm-trt[{extra}]'" if extra else f"a cuda-python, TensorRT and driver for CUDA {major}"


@dataclass(frozen=True)
class Device:
    """The GPU engines are built for and run on: device 0, as TensorRT and ONNX Runtime use by default."""

    name: str
    compute_capability: str

    def __str__(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability})"


def current_device() -> Device:
    """Device 0, or BackendUnavailableError saying why no GPU can be used: no driver, no device, or a driver older
    than the CUDA major version cuda-python was built for (naming both, and the extra that matches the driver)."""
    runtime = _runtime()
    error, count = runtime.cudaGetDeviceCount()
    if error != runtime.cudaError_t.cudaSuccess or count == 0:
        _, driver = runtime.cudaDriverGetVersion()
        if not driver:
            reason = "no NVIDIA driver is loaded"
        elif error == runtime.cudaError_t.cudaErrorInsufficientDriver:
            built_for, supported = runtime_cuda_major(), cuda_major(driver)
            reason = (
                f"the NVIDIA driver supports CUDA {supported}.x, but cuda-python here is built for CUDA {built_for}:"
                f" install the CUDA {supported} stack ({install_hint(supported)}) or a newer driver"
            )
        elif error != runtime.cudaError_t.cudaSuccess:
            reason = f"cudaGetDeviceCount: {_error_name(error)}"
        else:
            reason = "the driver sees no CUDA device"
        raise BackendUnavailableError(f"no usable CUDA GPU: {reason}")
    properties = _call("cudaGetDeviceProperties", 0)
    name = properties.name
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return Device(name.rstrip("\x00").strip(), f"{properties.major}.{properties.minor}")


def memory_info() -> tuple[int, int]:
    """(free, total) bytes of device memory, for the errors that say memory is short."""
    free, total = _call("cudaMemGetInfo")
    return int(free), int(total)


def describe_shortage(nbytes: int) -> str:
    """``N MiB asked, M MiB free of T MiB``: what an error about short device memory should say."""
    free, total = memory_info()
    return f"{nbytes / 2**20:.0f} MiB asked, {free / 2**20:.0f} MiB free of {total / 2**20:.0f} MiB"


class Stream:
    """A CUDA stream that does not synchronise with the legacy default stream."""

    def __init__(self) -> None:
        runtime = _runtime()
        #: The cudaStream_t for cuda-python calls; ``handle`` is the same stream as the int TensorRT takes.
        self.raw = _call("cudaStreamCreateWithFlags", runtime.cudaStreamNonBlocking)
        self.handle = int(self.raw)

    def synchronize(self) -> None:
        _call("cudaStreamSynchronize", self.raw)

    def copy(self, destination: int, source: int, nbytes: int) -> None:
        """Asynchronous copy between any two pointers (unified addressing works out the direction)."""
        _call("cudaMemcpyAsync", destination, source, nbytes, _runtime().cudaMemcpyKind.cudaMemcpyDefault, self.raw)

    def capture(self, work: Callable[[], None]) -> CudaGraph:
        """Record what ``work`` enqueues on this stream into a CUDA graph instead of running it.

        Thread-local capture mode: other threads' CUDA calls (another engine, ONNX Runtime) are not disturbed."""
        runtime = _runtime()
        _call("cudaStreamBeginCapture", self.raw, runtime.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        try:
            work()
        except BaseException:
            _, partial = runtime.cudaStreamEndCapture(self.raw)  # leave capture mode; the graph is discarded
            if partial is not None:
                runtime.cudaGraphDestroy(partial)
            raise
        graph = _call("cudaStreamEndCapture", self.raw)
        try:
            return CudaGraph(_call("cudaGraphInstantiate", graph, 0))
        finally:
            _call("cudaGraphDestroy", graph)

    def close(self) -> None:
        _call("cudaStreamDestroy", self.raw)


class CudaGraph:
    """An instantiated CUDA graph: replays the captured kernels with one launch."""

    def __init__(self, executable: Any) -> None:
        self._executable = executable

    def launch(self, stream: Stream) -> None:
        _call("cudaGraphLaunch", self._executable, stream.raw)

    def close(self) -> None:
        _call("cudaGraphExecDestroy", self._executable)


class DeviceBuffer:
    """``nbytes`` (> 0) of device memory; ``what`` names it in the error when the GPU has too little free."""

    def __init__(self, nbytes: int, what: str) -> None:
        if nbytes <= 0:
            raise EngineError(f"{what}: a device buffer needs a positive size, got {nbytes} bytes")
        self.nbytes = nbytes
        try:
            self.pointer = int(_call("cudaMalloc", nbytes))
        except CudaError as error:
            raise CudaError(f"could not allocate {what} ({describe_shortage(nbytes)}): {error}") from None

    def close(self) -> None:
        _call("cudaFree", self.pointer)


class PinnedBuffer:
    """``nbytes`` (> 0) of page-locked host memory, so that copies to and from the GPU run at full speed, async."""

    def __init__(self, nbytes: int, what: str) -> None:
        if nbytes <= 0:
            raise EngineError(f"{what}: a pinned buffer needs a positive size, got {nbytes} bytes")
        self.nbytes = nbytes
        self.pointer = int(_call("cudaMallocHost", nbytes))
        self._bytes = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(self.pointer))

    def view(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        """The first bytes of the buffer as an array of ``shape``; valid until ``close``."""
        count = int(np.prod(shape, dtype=np.int64))
        return self._bytes[: count * dtype.itemsize].view(dtype).reshape(shape)

    def close(self) -> None:
        _call("cudaFreeHost", self.pointer)
