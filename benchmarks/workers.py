"""The worker processes: each contender (diffusers, or the engine on one backend) runs in its own process.

A process of its own gives each side its own load time, peak RSS and GPU memory, and keeps one side's
threads, allocator and caches out of the other's way. The parent talks to a worker over a pipe:

    worker -> ("ready", Loaded) | ("unavailable", reason) | ("error", message)
    parent -> Work, worker -> ("sample", Sample) | ("error", message)      (repeated)
    parent -> None, worker -> ("done", peak RSS in bytes)

This module is imported by every worker, the engine's included, so it imports torch and diffusers only
inside the diffusers runner: the engine worker's memory and start-up must not include them.
"""

from __future__ import annotations

import os
import resource
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .machine import imported_versions

#: The stages every sample reports, in pipeline order; "total" is end to end.
TIMED_STAGES = ("text_encoder", "unet", "vae_decoder", "vocoder", "total")


class EngineContender(NamedTuple):
    """An engine contender of ``--backends``: the device it runs on, the backend and precision given to
    Engine.load (None: the export's), and the precision of the export it loads. diffusers runs on each device
    in use, as the reference there."""

    device: str
    backend: str
    precision: str | None
    export_precision: str


ENGINE_CONTENDERS: dict[str, EngineContender] = {
    "onnxruntime-cpu": EngineContender("cpu", "onnxruntime-cpu", None, "fp32"),
    "onnxruntime-cuda": EngineContender("cuda", "onnxruntime-cuda", None, "fp16"),
    # The fp32 export on the GPU: what fp16 gains, and the parity fp16 gives up.
    "onnxruntime-cuda-fp32": EngineContender("cuda", "onnxruntime-cuda", "fp32", "fp32"),
    "tensorrt": EngineContender("cuda", "tensorrt", None, "fp16"),
    "openvino-fp32": EngineContender("cpu", "openvino", "fp32", "fp32"),
    "openvino-bf16": EngineContender("cpu", "openvino", "bf16", "fp32"),
}


@dataclass(frozen=True)
class ContenderSpec:
    """One side of the comparison, as the parent describes it to the worker."""

    #: "diffusers" or "engine"
    kind: str
    #: "cpu" or "cuda"
    device: str
    #: diffusers: a checkpoint directory or hub id; engine: an engine directory.
    source: str
    #: engine: the backend name given to Engine.load; diffusers: None.
    backend: str | None = None
    #: diffusers: wrap the UNet in torch.compile.
    compile: bool = False
    #: engine: the precision given to Engine.load (None: the export's); diffusers: "bf16" for
    #: torch.autocast("cpu", dtype=torch.bfloat16), None for the device's own (fp32 on CPU, fp16 on a GPU).
    precision: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "engine":
            return f"audioldm-trt {self.backend}{f'-{self.precision}' if self.precision else ''}"
        autocast = f" {self.precision} autocast" if self.precision else ""
        return f"diffusers {self.device}{autocast}{' + torch.compile' if self.compile else ''}"


@dataclass(frozen=True)
class Work:
    """What every contender is asked to do, identically: same prompts, latents, steps, guidance, length."""

    prompts: list[str]
    #: float32 (len(prompts), C, H, W): the initial noise, drawn once by the parent.
    latents: np.ndarray
    audio_length_in_s: float
    num_inference_steps: int
    guidance_scale: float


@dataclass(frozen=True)
class Loaded:
    """What a worker reports once its model is ready."""

    #: Seconds spent importing torch + diffusers, or the engine package: a cold start pays it too.
    import_s: float
    #: Seconds spent loading the model onto its device (with a backend library imported on first use).
    load_s: float
    #: The precision the contender computes in.
    precision: str
    #: The versions of the modules the worker imported (``machine.imported_versions``).
    versions: dict[str, str] = field(default_factory=dict)


@dataclass
class Sample:
    """One timed generation: seconds per stage (see TIMED_STAGES), UNet calls, and the audio."""

    timings: dict[str, float] = field(default_factory=dict)
    unet_calls: int = 0
    audio: np.ndarray | None = None


class DiffusersRunner:
    """diffusers' AudioLDMPipeline as a user runs it: torch eager (fp32 on CPU, fp16 on a GPU), optionally
    with a compiled UNet, or fp32 weights under bf16 autocast on the CPU (how torch users get bf16 there).
    Stage times come from wrapping the components' forward/decode methods."""

    def __init__(self) -> None:
        # Quiet: AudioLDMPipeline is deprecated and says so on every load, and loads draw progress bars.
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by transformers when imported
        warnings.filterwarnings("ignore", category=FutureWarning)
        import torch
        from diffusers import AudioLDMPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()
        self._torch = torch
        self._pipeline_class: Any = AudioLDMPipeline  # diffusers is untyped

    def load(self, spec: ContenderSpec) -> str:
        self._device = spec.device
        self._dtype = self._torch.float16 if spec.device == "cuda" else self._torch.float32
        pipe = self._pipeline_class.from_pretrained(spec.source, torch_dtype=self._dtype).to(spec.device)
        pipe.set_progress_bar_config(disable=True)
        self._autocast = spec.precision == "bf16"
        if spec.compile:
            pipe.unet.forward = self._torch.compile(pipe.unet.forward)
        self._time(pipe.text_encoder, "forward", "text_encoder")
        self._time(pipe.unet, "forward", "unet")
        self._time(pipe.vae, "decode", "vae_decoder")
        self._time(pipe.vocoder, "forward", "vocoder")
        self._pipe = pipe
        return spec.precision or ("fp16" if spec.device == "cuda" else "fp32")

    def _synchronize(self) -> None:
        """Wait for the GPU, so that a stage's time is its own work rather than the queueing of it."""
        if self._device == "cuda":
            self._torch.cuda.synchronize()

    def _time(self, component: Any, method: str, stage: str) -> None:
        original: Callable[..., Any] = getattr(component, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._synchronize()
            start = time.perf_counter()
            result = original(*args, **kwargs)
            self._synchronize()
            self._sample.timings[stage] += time.perf_counter() - start
            self._sample.unet_calls += stage == "unet"
            return result

        setattr(component, method, timed)  # an instance attribute: nn.Module.__call__ finds it first

    def run(self, work: Work) -> Sample:
        self._sample = Sample(timings=dict.fromkeys(TIMED_STAGES, 0.0))
        self._synchronize()
        start = time.perf_counter()
        autocast = self._torch.autocast(self._device, dtype=self._torch.bfloat16, enabled=self._autocast)
        with autocast:
            audio = self._pipe(
                prompt=work.prompts,
                audio_length_in_s=work.audio_length_in_s,
                num_inference_steps=work.num_inference_steps,
                guidance_scale=work.guidance_scale,
                latents=self._torch.from_numpy(work.latents).to(self._device, self._dtype),
                output_type="np",
            ).audios
        self._sample.timings["total"] = time.perf_counter() - start
        self._sample.audio = np.asarray(audio, dtype=np.float32)
        return self._sample


class EngineRunner:
    """This runtime on one backend; its stage times are the ones ``Engine.run`` reports."""

    def __init__(self) -> None:
        from audioldm_trt.engine import Engine

        self._engine_class = Engine

    def load(self, spec: ContenderSpec) -> str:
        self._engine = self._engine_class.load(spec.source, backend=spec.backend or "auto", precision=spec.precision)
        return spec.precision or self._engine.manifest.precision

    def run(self, work: Work) -> Sample:
        generation = self._engine.run(
            work.prompts,
            audio_length_in_s=work.audio_length_in_s,
            num_inference_steps=work.num_inference_steps,
            guidance_scale=work.guidance_scale,
            latents=work.latents,
        )
        timings = {stage: generation.timings[stage] for stage in TIMED_STAGES}
        return Sample(timings=timings, unet_calls=generation.unet_calls, audio=generation.audio)


def serve(connection: Connection, spec: ContenderSpec) -> None:
    """The worker's main function: load the contender, then answer the parent's requests until told to stop."""
    started = time.perf_counter()
    from audioldm_trt.engine.errors import BackendUnavailableError

    try:
        runner = DiffusersRunner() if spec.kind == "diffusers" else EngineRunner()
        imported = time.perf_counter()
        precision = runner.load(spec)
        loaded = time.perf_counter()
    except BackendUnavailableError as error:
        connection.send(("unavailable", str(error)))
        return
    except Exception:
        connection.send(("error", _one_line_error()))
        return
    connection.send(("ready", Loaded(imported - started, loaded - imported, precision, imported_versions())))
    while (work := connection.recv()) is not None:
        try:
            connection.send(("sample", runner.run(work)))
        except Exception:
            connection.send(("error", _one_line_error()))
            return
    connection.send(("done", peak_rss_bytes()))


def peak_rss_bytes() -> int:
    """The peak RSS of this process. On Linux that is VmHWM, not ``ru_maxrss``: the latter keeps the RSS the
    parent had when it forked this worker, across the exec, and the parent is large after an export."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def _one_line_error() -> str:
    """The exception as one line, with the worker's traceback on its stderr for whoever needs more."""
    traceback.print_exc(file=sys.stderr)
    error = sys.exc_info()[1]
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
