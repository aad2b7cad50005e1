"""``audioldm-trt bench-audio``: style transfer against text-to-audio on one export, side by side in one run.

At strength s a style transfer runs the last ``int(steps * s)`` steps of the schedule (diffusers' img2img start)
plus one VAE encoder call and the mel front-end; text-to-audio runs every step. The two are timed alternately,
run after run, on the same loaded engine, so that both see the same machine state; the report gives the
medians per stage, the UNet calls of each, and the share of the encoder (and front-end) in a style transfer.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .engine_bench import EngineBenchSettings, record_head, write_record

STAGES = ("front_end", "text_encoder", "vae_encoder", "unet", "scheduler", "vae_decoder", "vocoder", "total")


@dataclass(frozen=True)
class Settings(EngineBenchSettings):
    duration: float = 5.0
    strength: float = 0.5
    guidance: float = 2.5
    input_audio: Path | None = None


def synthetic_clip(seconds: float, rate: int) -> bytes:
    """A WAV of ``seconds`` of a gliding harmonic tone in noise: an input whose content does not change the
    timing (the work depends only on the shapes)."""
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    signal = 0.3 * np.sin(2 * np.pi * (220 + 40 * t) * t) + 0.02 * np.random.default_rng(0).standard_normal(len(t))
    buffer = io.BytesIO()
    soundfile.write(buffer, signal, rate, format="WAV")
    return buffer.getvalue()


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Time text-to-audio and style transfer alternately; the medians of each stage (seconds) and the calls."""
    engine = settings.load()
    clip = (
        settings.input_audio.read_bytes()
        if settings.input_audio
        else synthetic_clip(settings.duration, engine.sampling_rate)
    )
    common = {"num_inference_steps": settings.steps, "guidance_scale": settings.guidance, "seed": 0}
    prompt = "a dog barking in the rain"

    def text() -> dict[str, float]:
        request = engine.request(prompt, audio_length_in_s=settings.duration, **common)
        result = engine.complete(request)
        return {**result.timings, "unet_calls": result.unet_calls}

    def transfer() -> dict[str, float]:
        started = time.perf_counter()
        request = engine.request(
            prompt, audio=clip, strength=settings.strength, audio_length_in_s=settings.duration, **common
        )
        front_end = time.perf_counter() - started  # reading, resampling and the log-mel
        result = engine.complete(request)
        timings = {**result.timings, "front_end": front_end, "total": result.timings["total"] + front_end}
        return {**timings, "unet_calls": result.unet_calls}

    samples: dict[str, list[dict[str, float]]] = {"text_to_audio": [], "style_transfer": []}
    for index in range(settings.warmup + settings.runs):
        for name, work in (("text_to_audio", text), ("style_transfer", transfer)):
            sample = work()
            if index >= settings.warmup:
                samples[name].append(sample)
    medians = {
        name: {stage: statistics.median(s.get(stage, 0.0) for s in runs) for stage in (*STAGES, "unet_calls")}
        for name, runs in samples.items()
    }
    transfer_median = medians["style_transfer"]
    return {
        **record_head(settings, engine),
        "medians": medians,
        "encoder_share": transfer_median["vae_encoder"] / transfer_median["total"],
        "front_end_share": transfer_median["front_end"] / transfer_median["total"],
        "speedup": medians["text_to_audio"]["total"] / transfer_median["total"],
        "samples": samples,
    }


def table(record: dict[str, Any]) -> str:
    """The medians side by side, in milliseconds, and the encoder's share."""
    medians = record["medians"]
    settings = record["settings"]
    lines = [
        f"{settings['duration']} s, {settings['steps']} steps, guidance {settings['guidance']}, style transfer at"
        f" strength {settings['strength']}; {record['backend']}; median of {settings['runs']} runs",
        f"{'stage (ms)':<14}{'text-to-audio':>16}{'style transfer':>16}",
    ]
    for stage in (*STAGES, "unet_calls"):
        scale = 1 if stage == "unet_calls" else 1000
        left, right = medians["text_to_audio"][stage] * scale, medians["style_transfer"][stage] * scale
        lines.append(f"{stage:<14}{left:>16.1f}{right:>16.1f}")
    lines.append(
        f"style transfer takes {1 / record['speedup']:.2f}x the time of text-to-audio; the VAE encoder is"
        f" {record['encoder_share']:.1%} of it, the front-end {record['front_end_share']:.1%}"
    )
    return "\n".join(lines)


def write(record: dict[str, Any], output: Path) -> Path:
    return write_record(record, output, "audio-to-audio.json")
