"""``audioldm-trt bench-stream``: time to first audio of ``Engine.stream`` against the whole answer of
``Engine.complete``, unloaded, on one export, alternating run after run so that both see the same machine state.

The first chunk comes after denoising, the VAE decoder and one vocoder window; the vocoder's other windows are
what a streaming client no longer waits for.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..engine import Engine


@dataclass(frozen=True)
class Settings:
    engine: Path
    backend: str = "auto"
    duration: float = 10.0
    steps: int = 10
    chunk: float = 2.0
    runs: int = 5
    warmup: int = 1
    threads: int | None = None


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Seconds to the whole audio (``complete``), and to the first and the last chunk (``stream``), medians."""
    engine = Engine.load(settings.engine, backend=settings.backend, threads=settings.threads)
    request = engine.request(
        "a dog barking in the rain", audio_length_in_s=settings.duration, num_inference_steps=settings.steps, seed=0
    )
    samples: list[dict[str, float]] = []
    for index in range(settings.warmup + settings.runs):
        started = time.perf_counter()
        engine.complete(request)
        whole = time.perf_counter() - started
        started = time.perf_counter()
        chunks = engine.stream(request, settings.chunk)
        next(chunks)
        first = time.perf_counter() - started
        count = 1 + sum(1 for _ in chunks)
        last = time.perf_counter() - started
        if index >= settings.warmup:
            samples.append({"whole": whole, "first_audio": first, "last_audio": last, "chunks": count})
    medians = {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "backend": engine.backend.describe(),
        "machine": platform.processor() or platform.machine(),
        "medians": medians,
        "samples": samples,
    }


def table(record: dict[str, Any]) -> str:
    settings, medians = record["settings"], record["medians"]
    return "\n".join(
        [
            f"{settings['duration']} s, {settings['steps']} steps, chunks of {settings['chunk']} s;"
            f" {record['backend']}; median of {settings['runs']} runs",
            f"whole answer (complete)      {medians['whole'] * 1000:>9.1f} ms",
            f"first audio (stream)         {medians['first_audio'] * 1000:>9.1f} ms",
            f"last audio (stream)          {medians['last_audio'] * 1000:>9.1f} ms, {medians['chunks']:.0f} chunks",
            f"first audio after {medians['first_audio'] / medians['whole']:.2f}x the time of the whole answer",
        ]
    )


def write(record: dict[str, Any], output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / "streaming.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
