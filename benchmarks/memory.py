"""``python -m audioldm_trt.benchmarks.memory``: peak resident memory of a generation against the audio length.

Each duration runs in a fresh process, because a process's peak RSS (VmHWM) only grows: the process loads the
engine on ONNX Runtime CPU, generates ``--generations`` times (two by default: ONNX Runtime plans a graph's
memory from its first run at a shape, and the later runs of a serving process can peak higher), and reports
its peak after the load and after the generations.
Beside each figure goes the estimate of ``engine/memory.py``, which request validation uses; the estimate
must stay above the measurement. Peak memory is not timing, so a busy machine measures it as well as an idle
one (other processes take no memory from this one's RSS); the durations run one at a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..engine.files import write_atomically
from ..engine.manifest import Manifest
from ..engine.memory import estimate_peak_bytes
from . import machine
from .workers import peak_rss_bytes

logger = logging.getLogger(__name__)

DURATIONS = (5.0, 10.0, 20.0, 40.0, 60.0)
_MIB = 1 << 20


def measure(
    engine: Path, prompts: list[str], duration: float, steps: int, guidance: float, generations: int = 2
) -> dict[str, Any]:
    """Peak RSS of a fresh process that loads ``engine`` and generates ``generations`` times for ``prompts``
    (the process imports the engine package only: this module imports the export code inside ``main``)."""
    context = multiprocessing.get_context("spawn")
    work = (str(engine), prompts, duration, steps, guidance, generations)
    with context.Pool(1) as pool:
        peaks: dict[str, int] = pool.apply(_load_and_generate, work)
    manifest = Manifest.load(engine)
    height = manifest.model.latent_height(duration)
    return {
        "duration_s": duration,
        "latent_rows": height,
        "load_peak_bytes": peaks["load"],
        "peak_bytes": peaks["generation"],
        "estimate_bytes": estimate_peak_bytes(manifest, len(prompts), height, guidance > 1),
    }


def _load_and_generate(
    engine: str, prompts: list[str], duration: float, steps: int, guidance: float, generations: int
) -> dict[str, int]:
    from ..engine import Engine

    loaded = Engine.load(engine, backend="onnxruntime-cpu")
    after_load = peak_rss_bytes()
    for seed in range(generations):
        loaded.generate(
            prompts, audio_length_in_s=duration, num_inference_steps=steps, guidance_scale=guidance, seed=seed
        )
    return {"load": after_load, "generation": peak_rss_bytes()}


def markdown(record: dict[str, Any]) -> str:
    settings = record["settings"]
    lines = [
        f"{settings['steps']} steps, guidance {settings['guidance']}, batch {settings['batch']},"
        f" {settings['generations']} generations per process, ONNX Runtime CPU, `{settings['engine']}`;"
        f" machine: {record['machine']['cpu']}, {record['machine']['ram_gib']} GiB RAM.",
        "",
        "| audio (s) | latent rows | peak RSS after load (MiB) | peak RSS (MiB) | estimate (MiB) |",
        "|--:|--:|--:|--:|--:|",
    ]
    for row in record["rows"]:
        lines.append(
            f"| {row['duration_s']:g} | {row['latent_rows']} | {row['load_peak_bytes'] / _MIB:.0f}"
            f" | {row['peak_bytes'] / _MIB:.0f} | {row['estimate_bytes'] / _MIB:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m audioldm_trt.benchmarks.memory", description=__doc__)
    parser.add_argument("--engine", type=Path, help="export to measure (default: the --preset, exported into --cache)")
    parser.add_argument("--preset", default="s-full-v2", help="random-weight architecture (default s-full-v2)")
    parser.add_argument("--cache", type=Path, help="exports kept here (default: the bench's cache)")
    parser.add_argument("--durations", type=float, nargs="+", default=list(DURATIONS), help="seconds of audio")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    parser.add_argument("--batch", type=int, default=1, help="prompts per generation (default 1)")
    parser.add_argument("--guidance", type=float, default=2.5, help="guidance scale (default 2.5)")
    parser.add_argument("--generations", type=int, default=2, help="generations per process (default 2)")
    parser.add_argument("--output", type=Path, help="also write the record as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .bench import PROMPTS, Settings, prepare_models

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.batch)]
    _, engines = prepare_models(Settings(preset=args.preset, engine=args.engine, cache=args.cache), ["cpu"])
    engine = engines["cpu"]
    rows = []
    for duration in args.durations:
        rows.append(measure(engine, prompts, duration, args.steps, args.guidance, args.generations))
        logger.info("%g s: peak RSS %.0f MiB", duration, rows[-1]["peak_bytes"] / _MIB)
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.describe_machine(),
        "versions": machine.versions(),
        "settings": {
            "engine": str(engine),
            "steps": args.steps,
            "batch": args.batch,
            "guidance": args.guidance,
            "generations": args.generations,
        },
        "rows": rows,
    }
    print(markdown(record), end="")
    if args.output is not None:
        write_atomically(args.output, (json.dumps(record, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
