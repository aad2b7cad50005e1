"""``audioldm-trt bench-stream``: time to first audio of ``Engine.stream`` against the whole answer of
``Engine.complete``, unloaded, on one export, alternating run after run so that both see the same machine state.

The first chunk comes after denoising, the VAE decoder and one vocoder window; the vocoder's other windows are
what a streaming client no longer waits for.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine_bench import EngineBenchSettings, record_head, write_record


@dataclass(frozen=True)
class Settings(EngineBenchSettings):
    chunk: float = 2.0


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Seconds to the whole audio (``complete``), and to the first and the last chunk (``stream``), medians."""
    engine = settings.load()
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
        **record_head(settings, engine),
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
    return write_record(record, output, "streaming.json")
