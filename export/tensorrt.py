"""``audioldm-trt build``: one TensorRT engine per graph of an export, for declared batch and duration ranges.

Networks are strongly typed: TensorRT 10 takes the STRONGLY_TYPED creation flag (its weak typing and
``BuilderFlag.FP16`` are deprecated), TensorRT 11 is always strongly typed and ignores the flag, and
EXPLICIT_BATCH is deprecated in 10 and gone in 11; so one path builds for both, in the precision each graph of
the export holds (``audioldm-trt export --precision fp16`` makes fp16 graphs).

Every graph gets one optimisation profile from ``BuildRanges.input_shapes`` (the arithmetic the runtime's
``check_workload`` uses too), set for the inputs of the network TensorRT's ONNX parser made, which are checked
against the manifest (names and dtypes; an input the parser dropped as unused gets no profile). An engine is
written atomically, then its record (``EngineRecord``: what it was built from and for); an engine whose record
matches what would be built now is kept, so rerunning the command only builds what changed (``force`` rebuilds
all). Kernel timings persist in a timing cache per TensorRT
version and GPU under ``DIR/tensorrt/``, which makes rebuilds for other ranges much faster.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.backends.cuda import Device, current_device
from ..engine.backends.profiles import BuildRanges, Range, Shape
from ..engine.backends.tensorrt import (
    ENGINE_DIRECTORY,
    EngineRecord,
    engine_paths,
    numpy_dtype,
    require_tensorrt,
    tensorrt_logger,
)
from ..engine.errors import BackendUnavailableError, EngineError
from ..engine.files import write_atomically
from ..engine.manifest import GraphSpec, Manifest
from .lint import lint_export

if TYPE_CHECKING:
    import tensorrt as trt

logger = logging.getLogger(__name__)

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class BuildError(EngineError, RuntimeError):
    """An engine could not be built: the export does not fit TensorRT, or TensorRT failed."""


def build_engines(
    directory: Path,
    batch: Range[int] | None = None,
    duration: Range[float] | None = None,
    workspace: int | None = None,
    force: bool = False,
    progress: bool = True,
    requests: int = 1,
) -> list[Path]:
    """Build the engines of the export in ``directory``; returns the paths of the engines it wrote.

    ``batch`` (waveforms per generation) and ``duration`` (seconds) default to ``BuildRanges.default``;
    ``requests`` is how many generations a server batches into one call (``serve --max-batch``): every batch
    maximum is that many times larger. ``workspace`` caps TensorRT's scratch memory in bytes (default:
    TensorRT's, the GPU's memory)."""
    manifest = Manifest.load(directory)
    manifest.verify(directory)
    ranges = _ranges(manifest, batch, duration, requests)
    problems = [f"{graph}: {problem}" for graph, found in lint_export(directory, manifest).items() for problem in found]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BuildError(f"TensorRT's ONNX parser cannot import {directory}: {problems[0]}{more}")
    try:
        device = current_device()
        version = require_tensorrt()
    except BackendUnavailableError as error:
        raise BackendUnavailableError(f"cannot build TensorRT engines here: {error}") from None
    (directory / ENGINE_DIRECTORY).mkdir(exist_ok=True)
    cache = directory / ENGINE_DIRECTORY / f"timing-{version}-sm{device.compute_capability}.cache"
    shapes = ranges.input_shapes(manifest)
    written = []
    for graph in manifest.graph_names:
        record = _record(graph, manifest, version, device, ranges, shapes[graph])
        engine, record_path = engine_paths(directory, graph)
        if not force and _up_to_date(record, engine, record_path):
            logger.info("%s is up to date for %s", engine, ranges.to_json())
            continue
        record_path.unlink(missing_ok=True)  # an engine is trusted only with its own record
        plan = _build(directory, manifest.graphs[graph], shapes[graph], workspace, cache, graph, progress)
        write_atomically(engine, plan)
        dataclasses.replace(record, engine_bytes=plan.nbytes).write(record_path)
        logger.info("built %s (%d MB)", engine, plan.nbytes >> 20)
        written.append(engine)
    return written


def parse_size(text: str) -> int:
    """Bytes from ``4G``, ``512M``, ``1.5GiB`` or a plain number of bytes."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected a size such as 4G or 512M, got {text!r}")
    number, unit = match.groups()
    size = int(float(number) * _UNITS[unit.lower()])
    if size < 1:
        raise ValueError(f"expected a positive size, got {text!r}")
    return size


def _ranges(manifest: Manifest, batch: Range[int] | None, duration: Range[float] | None, requests: int) -> BuildRanges:
    default = BuildRanges.default(manifest.model)
    ranges = BuildRanges(batch or default.batch, duration or default.duration, requests)
    shortest = manifest.model.min_audio_length_in_s
    if ranges.duration.min < shortest:
        raise ValueError(f"--duration must start at {shortest:g} s or more for this model, got {ranges.duration}")
    return ranges


def _record(
    graph: str,
    manifest: Manifest,
    version: str,
    device: Device,
    ranges: BuildRanges,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
) -> EngineRecord:
    return EngineRecord(
        graph=graph,
        onnx_sha256=manifest.graph_sha256(graph),
        tensorrt=version,
        gpu=device.name,
        compute_capability=device.compute_capability,
        ranges=ranges.to_json(),
        profile={name: [list(shape) for shape in ends] for name, ends in shapes.items()},
        engine_bytes=0,
    )


def _up_to_date(wanted: EngineRecord, engine: Path, record_path: Path) -> bool:
    if not record_path.is_file():
        return False
    try:
        existing = EngineRecord.read(record_path)
    except EngineError:
        return False
    return existing.same_build(wanted) and engine.is_file() and engine.stat().st_size == existing.engine_bytes


def _build(
    directory: Path,
    spec: GraphSpec,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
    workspace: int | None,
    cache_path: Path,
    graph: str,
    progress: bool,
) -> memoryview:
    """The serialized engine of one graph, strongly typed, with one optimisation profile."""
    import tensorrt as trt

    onnx_path = directory / spec.file
    builder = trt.Builder(tensorrt_logger())
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, tensorrt_logger())
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        described = "; ".join(f"node {e.node()}: {e.desc()}" for e in errors[:3])
        raise BuildError(f"TensorRT could not parse {onnx_path}: {described}")
    config = builder.create_builder_config()
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    profile = builder.create_optimization_profile()
    for name in _network_inputs(network, spec, graph):
        low, opt, high = shapes[name]
        profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
    config.add_optimization_profile(profile)
    _attach_timing_cache(config, cache_path)
    monitor = _progress_monitor(graph) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    logger.info("building %s: this takes minutes", graph)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"TensorRT could not build {graph} (its log above says why)")
    write_atomically(cache_path, memoryview(config.get_timing_cache().serialize()))
    return memoryview(plan)


def _network_inputs(network: trt.INetworkDefinition, spec: GraphSpec, graph: str) -> list[str]:
    """The inputs of the parsed network, after checking its inputs and outputs against the manifest's: BuildError
    for a tensor the manifest does not list or of another dtype, or a missing output. An input the ONNX parser
    dropped because nothing uses it is logged and gets no profile (the runtime ignores its feed)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    declared = {**spec.inputs, **spec.outputs}
    for tensor in inputs + outputs:
        if tensor.name not in declared:
            raise BuildError(f"TensorRT's network for {graph} has a tensor {tensor.name!r} the manifest does not list")
        wanted = np.dtype(declared[tensor.name].dtype)
        if numpy_dtype(tensor.dtype) != wanted:
            raise BuildError(
                f"TensorRT's network for {graph} has {tensor.name} as {numpy_dtype(tensor.dtype)}, the manifest as"
                f" {wanted}: export the model again"
            )
    missing = [name for name in spec.outputs if name not in {t.name for t in outputs}]
    if missing:
        raise BuildError(f"TensorRT's network for {graph} has no output {missing[0]!r}")
    names = [tensor.name for tensor in inputs]
    for name in spec.inputs:
        if name not in names:
            logger.warning(
                "%s: TensorRT's ONNX parser dropped input %s (nothing uses it); it gets no profile", graph, name
            )
    return names


def _attach_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Start from the saved timings where they are this TensorRT's and GPU's, else from none."""
    saved = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(saved)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.warning("ignoring the timing cache %s: it does not match this TensorRT and GPU", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _progress_monitor(graph: str) -> trt.IProgressMonitor:
    """Progress bars for TensorRT's build phases (one per phase, nested as TensorRT nests them)."""
    import tensorrt as trt
    from tqdm import tqdm

    class Monitor(trt.IProgressMonitor):
        # TensorRT calls it from its own threads.
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._bars: dict[str, Any] = {}
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self._depth[phase_name] = depth
                self._bars[phase_name] = tqdm(
                    total=num_steps, desc=f"{graph}: {phase_name}", position=depth, leave=depth == 0, unit="step"
                )

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.n = step + 1
                    bar.refresh()
            return True

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return Monitor()
