"""``audioldm-trt bench``: this runtime against diffusers' AudioLDMPipeline, side by side, on the same work.

A figure counts only when it is measured beside what a user would otherwise run, in the same run on the same
machine and the same work, with the outputs checked to match. So each contender (diffusers, and the engine on
each backend) runs in a worker process of its own (``workers.py``); the parent draws the initial latents once
and hands every worker the same prompts, latents, steps, guidance and length; each worker loads and warms up
in turn, then the timed runs are interleaved (run i of every contender before run i + 1 of any), so that a
drift of the machine (another process, the clock, the temperature) falls on every contender alike.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .. import export as export_package
from ..engine import manifest as manifest_module
from ..engine.errors import BackendUnavailableError
from ..engine.files import write_atomically
from ..engine.manifest import Manifest
from ..export.exporter import export_models
from ..export.onnx import relative_max_difference
from ..export.random_models import PRESETS, write_random_model
from . import machine, report
from .quality import audio_distance
from .workers import ENGINE_CONTENDERS, ContenderSpec, Loaded, Sample, Work, serve

logger = logging.getLogger(__name__)

#: Batch n uses the first n prompts (cycled beyond four).
PROMPTS = (
    "Techno music with a strong, upbeat tempo and high melodic riffs",
    "A dog barking in the distance while rain falls on a tin roof",
    "A hammer is hitting a wooden surface",
    "Birds singing in a forest at dawn, with a stream nearby",
)
#: Seed of the initial latents; every contender gets the same array.
LATENT_SEED = 0


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audioldm-trt" / "bench"


@dataclass(frozen=True)
class Settings:
    """The work and the contenders. Without ``model`` and ``engine`` the random-weight ``preset`` is written
    and exported into ``cache``; with ``engine`` that export is used, and diffusers loads ``model`` or else
    the checkpoint the export was made from."""

    model: str | None = None
    preset: str = "s-full-v2"
    engine: Path | None = None
    duration: float = 5.0
    steps: int = 10
    guidance: float = 2.5
    batch: int = 1
    runs: int = 5
    warmup: int = 1
    #: Engine backends to compare; None: those of this machine (GPU backends on a GPU host, else CPU).
    backends: tuple[str, ...] | None = None
    #: Also run diffusers with a torch.compile'd UNet.
    compile: bool = False
    #: Also run diffusers on the CPU under torch.autocast("cpu", dtype=torch.bfloat16).
    diffusers_bf16: bool = False
    #: Where checkpoints and exports are kept between runs; None: ``default_cache()``.
    cache: Path | None = None


class BenchmarkError(RuntimeError):
    """A contender failed or no backend could run."""


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Run the benchmark and return its record (see ``build_record``). A contender that cannot run here, or
    fails, is recorded in the notes with its one-line reason and the others go on."""
    if settings.model is None and settings.engine is None and settings.preset not in PRESETS:
        raise ValueError(f"unknown preset {settings.preset!r}; choose one of {', '.join(PRESETS)}")
    backends = settings.backends or default_backends()
    settings = replace(settings, backends=backends)
    checkpoint, engines = prepare_models(settings, export_precisions(backends))
    work = make_work(settings, Manifest.load(next(iter(engines.values()))))

    contenders: list[Contender] = []
    notes: list[str] = []
    try:
        for contender in backends:
            device, backend, precision, export_precision = ENGINE_CONTENDERS[contender]
            engine = engines[export_precision]
            if backend == "tensorrt" and settings.engine is None and not build_tensorrt_engines(engine, work, notes):
                continue
            spec = ContenderSpec("engine", device, str(engine), backend=backend, precision=precision)
            if (started := Contender.start(spec, work, settings.warmup, notes)) is not None:
                contenders.append(started)
        if not contenders:
            raise BenchmarkError(f"no backend could run here: {'; '.join(notes)}")
        for device in sorted({c.spec.device for c in contenders}):
            specs = [ContenderSpec("diffusers", device, checkpoint, compile=compiled) for compiled in (False, True)]
            specs = specs[: 2 if settings.compile else 1]
            if settings.diffusers_bf16 and device == "cpu":
                specs.append(ContenderSpec("diffusers", device, checkpoint, precision="bf16"))
            for spec in specs:
                if (started := Contender.start(spec, work, settings.warmup, notes)) is not None:
                    contenders.append(started)
        # The table's order: per device, diffusers first (eager, then compiled), then the engine backends.
        contenders.sort(key=lambda c: (c.spec.device, c.spec.kind == "engine"))
        for run in range(settings.runs):
            for contender in contenders:
                if contender.failure is None:
                    contender.run_timed(work, notes)
            totals = ", ".join(
                f"{c.spec.name} {c.samples[-1].timings['total']:.2f} s" for c in contenders if c.failure is None
            )
            logger.info("run %d/%d: %s", run + 1, settings.runs, totals)
        for contender in contenders:
            if contender.failure is None:
                contender.finish()
    finally:
        for contender in contenders:
            contender.close()
    finished = [c for c in contenders if c.failure is None]
    if not any(c.spec.kind == "engine" for c in finished):
        raise BenchmarkError(f"no engine contender finished: {'; '.join(notes)}")
    return build_record(settings, checkpoint, engines, work, finished, notes)


def export_precisions(backends: Sequence[str]) -> list[str]:
    """The export precisions the engine contenders of ``backends`` load, each once."""
    return list(dict.fromkeys(ENGINE_CONTENDERS[b].export_precision for b in backends))


def default_backends() -> tuple[str, ...]:
    """The GPU backends on a GPU host (skipped with a note where their libraries are missing), else ONNX
    Runtime CPU: the GPU protocol compares fp16 on the GPU, not the CPU path of a GPU host."""
    return ("onnxruntime-cuda", "tensorrt") if machine.gpu_query("name") else ("onnxruntime-cpu",)


def prepare_models(settings: Settings, precisions: list[str]) -> tuple[str, dict[str, Path]]:
    """The checkpoint diffusers loads and the engine directory for each export precision, exporting into the
    cache what is not there yet, every missing precision from one export of the networks (``--engine``: that
    export for every contender)."""
    if settings.engine is not None:
        checkpoint = settings.model or Manifest.load(settings.engine).source
        return checkpoint, dict.fromkeys(precisions, settings.engine)
    cache = settings.cache or default_cache()
    if settings.model is None:
        directory = cache / "checkpoints" / settings.preset
        if not _is_current(directory):
            logger.info("writing %s", directory)
            write_random_model(settings.preset, directory, force=True)
            _stamp(directory)
        checkpoint, key = str(directory), settings.preset
    else:
        checkpoint, key = settings.model, re.sub(r"[^A-Za-z0-9._-]+", "_", settings.model)
    engines = {precision: cache / "exports" / f"{key}-{precision}" for precision in dict.fromkeys(precisions)}
    stale = {precision: engine for precision, engine in engines.items() if not _is_current(engine)}
    if stale:
        logger.info("exporting %s (a few minutes for the full-size model)", ", ".join(map(str, stale.values())))
        export_models(checkpoint, stale, force=True)
        for engine in stale.values():
            _stamp(engine)
    return checkpoint, engines


def _sources_digest() -> str:
    """The digest of the sources of ``audioldm_trt.export`` and the manifest: a cached directory made by other
    exporter code is made anew."""
    sources = sorted(Path(export_package.__file__).parent.glob("*.py"))
    digest = hashlib.sha256()
    for source in [*sources, Path(manifest_module.__file__)]:
        digest.update(source.read_bytes())
    return digest.hexdigest()


def _stamp_path(directory: Path) -> Path:
    return directory.with_name(f"{directory.name}.digest")


def _is_current(directory: Path) -> bool:
    stamp = _stamp_path(directory)
    current = directory.is_dir() and stamp.is_file() and stamp.read_text() == _sources_digest()
    if current:
        logger.info("reusing %s", directory)
    return current


def _stamp(directory: Path) -> None:
    write_atomically(_stamp_path(directory), _sources_digest().encode())


def build_tensorrt_engines(engine: Path, work: Work, notes: list[str]) -> bool:
    """TensorRT runs engines built for declared shapes: build them into the bench's export for exactly the
    benchmarked batch and duration, as for a fixed workload (a rerun keeps engines that are up to date).
    False, with a note, where they cannot be built here (no TensorRT, no GPU)."""
    from ..engine.backends.cuda import current_device
    from ..engine.backends.profiles import Range
    from ..engine.backends.tensorrt import require_tensorrt
    from ..export.tensorrt import BuildError, build_engines

    batch, duration = len(work.prompts), work.audio_length_in_s
    try:
        current_device()
        require_tensorrt()  # before the ONNX parser's lint, which needs neither
        logger.info(
            "building TensorRT engines in %s for batch %d, %g s (minutes the first time)", engine, batch, duration
        )
        build_engines(
            engine,
            batch=Range(batch, batch, batch),
            duration=Range(duration, duration, duration),
            progress=logger.isEnabledFor(logging.INFO),
        )
    except (BackendUnavailableError, BuildError) as error:
        notes.append(f"audioldm-trt tensorrt skipped: {error}")
        logger.warning("%s", notes[-1])
        return False
    return True


def make_work(settings: Settings, manifest: Manifest) -> Work:
    model = manifest.model
    if settings.duration < model.min_audio_length_in_s:
        raise ValueError(f"--duration must be at least {model.min_audio_length_in_s} s for this model")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(settings.batch)]
    shape = (settings.batch, model.latent_channels, model.latent_height(settings.duration), model.latent_width)
    latents = np.random.default_rng(LATENT_SEED).standard_normal(shape, dtype=np.float32)
    return Work(prompts, latents, settings.duration, settings.steps, settings.guidance)


@dataclass
class Contender:
    """The parent's end of one worker: its pipe, and what it has reported so far."""

    spec: ContenderSpec
    connection: Any
    process: Any
    loaded: Loaded | None = None
    #: Device memory the worker holds after load and warm-up (MiB; None without a GPU).
    gpu_memory_mib: float | None = None
    warmup_totals: list[float] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    peak_rss_bytes: int = 0
    #: Why the contender stopped before its last run (one line), or None.
    failure: str | None = None

    @classmethod
    def start(cls, spec: ContenderSpec, work: Work, warmup: int, notes: list[str]) -> Contender | None:
        """Spawn the worker, wait for its load and its warm-up runs; None (and a note) if its backend cannot
        run here or it fails. One at a time, so no load competes with another and the GPU memory each adds is
        its own."""
        logger.info("starting %s", spec.name)
        context = multiprocessing.get_context("spawn")
        connection, child = context.Pipe()
        gpu_before = machine.gpu_memory_used_mib()
        process = context.Process(target=serve, args=(child, spec), name=spec.name, daemon=True)
        process.start()
        child.close()
        contender = cls(spec, connection, process)
        try:
            kind, payload = contender._receive()
            if kind == "unavailable":
                notes.append(f"{spec.name} skipped: {payload}")
                logger.warning("%s", notes[-1])
                contender.close()
                return None
            contender.loaded = payload
            clock = time.perf_counter()
            contender.warmup_totals = [contender.run(work).timings["total"] for _ in range(warmup)]
            gpu_after = machine.gpu_memory_used_mib()
        except BenchmarkError as error:
            contender.close()
            notes.append(f"{spec.name} failed: {error}")
            logger.warning("%s", notes[-1])
            return None
        except BaseException:
            contender.close()
            raise
        if gpu_before is not None and gpu_after is not None:
            contender.gpu_memory_mib = gpu_after - gpu_before
        logger.info(
            "%s: imports %.1f s, load %.1f s, %d warm-up run(s) %.1f s",
            spec.name,
            payload.import_s,
            payload.load_s,
            warmup,
            time.perf_counter() - clock,
        )
        return contender

    def run(self, work: Work) -> Sample:
        self.connection.send(work)
        return self._receive()[1]  # type: ignore[no-any-return]

    def run_timed(self, work: Work, notes: list[str]) -> None:
        """One timed run into ``samples``; a failure ends this contender (noted), not the benchmark."""
        try:
            self.samples.append(self.run(work))
        except BenchmarkError as error:
            self.failure = str(error)
            notes.append(f"{self.spec.name} failed in timed run {len(self.samples) + 1}: {error}")
            logger.warning("%s", notes[-1])
            self.close()

    def finish(self) -> None:
        """Stop the worker and keep its peak RSS."""
        self.connection.send(None)
        self.peak_rss_bytes = self._receive()[1]
        self.process.join(timeout=60)

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
        self.connection.close()

    def _receive(self) -> tuple[str, Any]:
        try:
            kind, payload = self.connection.recv()
        except EOFError:
            self.process.join(timeout=10)
            raise BenchmarkError(f"the worker died (exit code {self.process.exitcode})") from None
        if kind == "error":
            raise BenchmarkError(payload)
        return kind, payload


def _speedup(contender: Contender, baseline: Contender) -> float:
    """The median over the interleaved rounds of the baseline's time / the contender's time."""
    pairs = zip(baseline.samples, contender.samples, strict=True)
    return float(np.median([theirs.timings["total"] / ours.timings["total"] for theirs, ours in pairs]))


def _audio(contender: Contender) -> np.ndarray:
    """The audio of the contender's first timed run (the same latents for every contender)."""
    audio = contender.samples[0].audio
    assert audio is not None
    return audio


def _precision(contender: Contender) -> str:
    assert contender.loaded is not None
    return contender.loaded.precision


def within(quality: dict[str, float], bound: dict[str, float]) -> bool:
    """Whether audio at ``quality`` is no further from the fp32 audio than ``bound``, by every measure."""
    return (
        quality["relative_max_difference"] <= bound["relative_max_difference"]
        and quality["snr_db"] >= bound["snr_db"]
        and quality["log_mel_distance_db"] <= bound["log_mel_distance_db"]
    )


def build_record(
    settings: Settings,
    checkpoint: str,
    engines: dict[str, Path],
    work: Work,
    contenders: list[Contender],
    notes: list[str],
) -> dict[str, Any]:
    """Everything measured, with the machine, versions and settings: the JSON the report is made from.

    Every contender is compared with diffusers on its device in the device's own precision (the reference,
    ``parity``); a reduced-precision contender also gets its audio's distance to the fp32 audio of its device
    (``quality``): diffusers fp32 on the CPU, the engine's fp32 export on a GPU (TF32 off), where they ran.
    An engine contender beside diffusers bf16 also gets its speed-up over that and whether its distance is
    within diffusers bf16's (``within_diffusers_bf16``: no measure worse)."""
    audio_seconds = settings.duration * settings.batch
    sampling_rate = Manifest.load(next(iter(engines.values()))).model.sampling_rate
    diffusers = [c for c in contenders if c.spec.kind == "diffusers" and not c.spec.compile]
    references = {c.spec.device: c for c in diffusers if c.spec.precision is None}
    autocast = {c.spec.device: c for c in diffusers if c.spec.precision == "bf16"}
    fp32_references: dict[str, Contender] = {}
    for contender in sorted(contenders, key=lambda c: c.spec.kind != "diffusers"):
        if _precision(contender) == "fp32" and not contender.spec.compile:
            fp32_references.setdefault(contender.spec.device, contender)
    qualities = {
        contender.spec.name: audio_distance(
            _audio(contender), _audio(fp32_references[contender.spec.device]), sampling_rate
        )
        for contender in contenders
        if _precision(contender) != "fp32" and contender.spec.device in fp32_references
    }
    rows = []
    for contender in contenders:
        reference = references.get(contender.spec.device)
        compared = reference if reference is not None and contender is not reference else None
        stages = report.stage_statistics(contender.samples)
        audio = _audio(contender)
        loaded = contender.loaded
        assert loaded is not None
        bf16 = autocast.get(contender.spec.device) if contender.spec.kind == "engine" else None
        quality = qualities.get(contender.spec.name)
        bound = qualities.get(bf16.spec.name) if bf16 is not None else None
        fp32_reference = fp32_references.get(contender.spec.device)
        rows.append(
            {
                "name": contender.spec.name,
                "kind": contender.spec.kind,
                "device": contender.spec.device,
                "backend": contender.spec.backend,
                "compile": contender.spec.compile,
                "precision": loaded.precision,
                "source": contender.spec.source,
                "versions": loaded.versions,
                "compared_with": compared.spec.name if compared else None,
                "import_s": loaded.import_s,
                "load_s": loaded.load_s,
                "peak_rss_mib": contender.peak_rss_bytes / 2**20,
                "gpu_memory_mib": contender.gpu_memory_mib,
                "warmup_total_s": contender.warmup_totals,
                "unet_calls": contender.samples[0].unet_calls,
                "stages": stages,
                "rtf": stages["total"]["median"] / audio_seconds,
                "speedup": _speedup(contender, compared) if compared else None,
                "speedup_vs_diffusers_bf16": _speedup(contender, bf16) if bf16 is not None else None,
                "parity": relative_max_difference(audio, _audio(compared)) if compared else None,
                "quality": quality,
                "quality_reference": fp32_reference.spec.name if quality and fp32_reference else None,
                "within_diffusers_bf16": within(quality, bound) if quality and bound else None,
            }
        )
    if settings.model is not None:
        model = settings.model
    elif settings.engine is not None:
        model = f"export {settings.engine} of {checkpoint}"
    else:
        model = f"{settings.preset} (random weights)"
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.describe_machine(),
        "versions": machine.merged_versions([c.loaded.versions for c in contenders if c.loaded is not None]),
        "settings": {
            "model": model,
            "checkpoint": checkpoint,
            "engines": {precision: str(path) for precision, path in engines.items()},
            "duration": settings.duration,
            "steps": settings.steps,
            "guidance": settings.guidance,
            "batch": settings.batch,
            "runs": settings.runs,
            "warmup": settings.warmup,
            "backends": list(settings.backends or ()),
            "compile": settings.compile,
            "diffusers_bf16": settings.diffusers_bf16,
            "prompts": work.prompts,
            "latent_shape": list(work.latents.shape),
            "latent_seed": LATENT_SEED,
            "audio_seconds": audio_seconds,
        },
        "contenders": rows,
        "notes": notes,
    }
