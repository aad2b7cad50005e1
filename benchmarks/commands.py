"""The benchmarks package's subcommand of ``audioldm-trt``: ``bench`` (registered through the
``audioldm_trt.commands`` entry-point group; torch and diffusers are imported when it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.cli import finite_float, import_extra, non_negative_int, positive_float, positive_int
from .workers import ENGINE_CONTENDERS


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    bench = commands.add_parser(
        "bench", parents=[common], help="time this runtime against diffusers on the same work, outputs compared"
    )
    source = bench.add_argument_group("model (default: the random-weight --preset, exported into --cache)")
    source.add_argument("--model", help="diffusers checkpoint (local directory or hub id) to benchmark")
    source.add_argument("--preset", default="s-full-v2", help="random-weight preset (default s-full-v2)")
    source.add_argument("--engine", type=Path, help="use this export instead of exporting (diffusers loads its source)")
    source.add_argument("--cache", type=Path, help="exports kept here (~/.cache/audioldm-trt/bench)")
    bench.add_argument("--duration", type=positive_float, default=5.0, help="seconds of audio (default 5)")
    bench.add_argument("--steps", type=positive_int, default=10, help="denoising steps (default 10)")
    bench.add_argument("--guidance", type=finite_float, default=2.5, help="guidance scale (default 2.5)")
    bench.add_argument("--batch", type=positive_int, default=1, help="prompts per generation (default 1)")
    bench.add_argument("--runs", type=positive_int, default=5, help="timed runs of each contender (default 5)")
    bench.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs first (default 1)")
    bench.add_argument(
        "--backends",
        nargs="+",
        choices=ENGINE_CONTENDERS,
        metavar="BACKEND",
        help=f"{', '.join(ENGINE_CONTENDERS)} (default: onnxruntime-cuda and tensorrt on a GPU, else onnxruntime-cpu)",
    )
    bench.add_argument("--compile", action="store_true", help="also run diffusers with a torch.compile'd UNet")
    bench.add_argument(
        "--diffusers-bf16", action="store_true", help="also run diffusers on the CPU under bf16 torch.autocast"
    )
    bench.add_argument("--output", type=Path, default=Path("bench-results"), help="report directory (./bench-results)")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> None:
    bench = import_extra("audioldm_trt.benchmarks.bench", "export")
    report = import_extra("audioldm_trt.benchmarks.report", "export")
    import_extra("audioldm_trt.export.commands", "export").quiet_unless_verbose(args)
    settings = bench.Settings(
        model=args.model,
        preset=args.preset,
        engine=args.engine,
        duration=args.duration,
        steps=args.steps,
        guidance=args.guidance,
        batch=args.batch,
        runs=args.runs,
        warmup=args.warmup,
        backends=tuple(args.backends) if args.backends else None,
        compile=args.compile,
        diffusers_bf16=args.diffusers_bf16,
        cache=args.cache,
    )
    record = bench.run_benchmark(settings)
    paths = report.write_report(record, args.output)
    print(report.markdown(record))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
