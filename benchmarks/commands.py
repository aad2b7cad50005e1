"""The benchmarks package's subcommands of ``audioldm-trt``: ``bench``, ``loadtest`` and ``loadtest-batching``
(registered through the ``audioldm_trt.commands`` entry-point group; torch and diffusers, or aiohttp, are
imported when they run)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import importlib
import shlex
from pathlib import Path
from typing import Any

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
    bench.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the checkpoint and the exports --backends load into --cache, then stop (no timing)",
    )
    bench.set_defaults(handler=_bench)
    _add_load_tests(commands, common)
    _add_audio_bench(commands, common)
    _add_stream_bench(commands, common)


def _add_engine_bench(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    name: str,
    help: str,
    duration: float,
) -> argparse.ArgumentParser:
    """A timing command on one loaded export: the arguments that bench-audio and bench-stream share."""
    parser = commands.add_parser(name, parents=[common], help=help)
    parser.add_argument("--engine", type=Path, required=True, help="directory written by `audioldm-trt export`")
    parser.add_argument("--backend", default="auto", help="what runs the graphs (default auto)")
    parser.add_argument(
        "--duration", type=positive_float, default=duration, help=f"seconds of audio (default {duration:g})"
    )
    parser.add_argument("--steps", type=positive_int, default=10, help="denoising steps (default 10)")
    parser.add_argument("--runs", type=positive_int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--threads", type=positive_int, help="threads per graph call (default: all cores)")
    parser.add_argument("--output", type=Path, default=Path("bench-results"), help="report directory (./bench-results)")
    return parser


def _add_audio_bench(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    audio = _add_engine_bench(
        commands,
        common,
        "bench-audio",
        "time style transfer against text-to-audio at the same steps on one export (the encoder's share)",
        5.0,
    )
    audio.add_argument("--strength", type=finite_float, default=0.5, help="style transfer strength (default 0.5)")
    audio.add_argument("--guidance", type=finite_float, default=2.5, help="guidance scale (default 2.5)")
    audio.add_argument("--input-audio", type=Path, help="input clip (default: a synthetic one of --duration)")
    audio.set_defaults(handler=functools.partial(_bench_on_export, "audio_to_audio"))


def _add_stream_bench(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    stream = _add_engine_bench(
        commands,
        common,
        "bench-stream",
        "time to first audio of Engine.stream against the whole answer, unloaded, on one export",
        10.0,
    )
    stream.add_argument("--chunk", type=positive_float, default=2.0, help="seconds per vocoder chunk (default 2)")
    stream.set_defaults(handler=functools.partial(_bench_on_export, "streaming"))


def _bench_on_export(module_name: str, args: argparse.Namespace) -> None:
    """bench-audio and bench-stream: the module's Settings from the arguments of the same names, its run, its
    table printed and its report written."""
    module = importlib.import_module(f"{__package__}.{module_name}")
    names = [field.name for field in dataclasses.fields(module.Settings)]
    record = module.run_benchmark(module.Settings(**{name: getattr(args, name) for name in names}))
    print(module.table(record))
    print(f"wrote {module.write(record, args.output)}")


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
    if args.prepare_only:
        backends = settings.backends or bench.default_backends()
        checkpoint, engines = bench.prepare_models(settings, bench.export_precisions(backends))
        print(f"prepared {checkpoint} and {', '.join(str(path) for path in engines.values())}")
        return
    record = bench.run_benchmark(settings)
    paths = report.write_report(record, args.output)
    print(report.markdown(record))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


def _add_load_tests(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    load = commands.add_parser(
        "loadtest", parents=[common], help="open-loop Poisson load on a running `audioldm-trt serve`"
    )
    load.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    key = load.add_mutually_exclusive_group()
    key.add_argument("--api-key", help="sent as `Authorization: Bearer KEY`")
    key.add_argument("--api-key-file", type=Path, help="a file holding the API key")
    load.add_argument(
        "--rate", nargs="+", required=True, type=positive_float, metavar="R", help="requests per second, one run each"
    )
    window = load.add_mutually_exclusive_group(required=True)
    window.add_argument("--duration", type=positive_float, metavar="S", help="seconds of arrivals per rate")
    window.add_argument("--requests", type=positive_int, metavar="N", help="arrivals per rate")
    load.add_argument("--timeout", type=positive_float, default=600.0, help="client timeout per request (default 600)")
    _add_shared_options(load)
    load.set_defaults(handler=_loadtest)

    compare = commands.add_parser(
        "loadtest-batching",
        parents=[common],
        help="start `audioldm-trt serve` in each batching mode; capacity, then load at a fraction of it",
    )
    compare.add_argument("--engine", required=True, type=Path, help="directory written by `audioldm-trt export`")
    compare.add_argument(
        "--modes",
        nargs="+",
        choices=("step", "request", "none"),
        default=["step", "request", "none"],
        help="batching modes, in this order (default: all three)",
    )
    compare.add_argument("--load", type=positive_float, default=0.8, help="fraction of capacity offered (0.8)")
    compare.add_argument("--requests", type=positive_int, default=80, help="Poisson arrivals per mode (80)")
    compare.add_argument("--capacity-requests", type=positive_int, default=20, help="closed-loop requests (20)")
    compare.add_argument("--concurrency", type=positive_int, default=4, help="closed-loop users (4)")
    compare.add_argument("--unloaded-runs", type=positive_int, default=3, help="idle-server runs per class (3)")
    compare.add_argument("--max-batch", type=positive_int, default=8, help="serve --max-batch (8)")
    compare.add_argument("--max-queue", type=positive_int, default=64, help="serve --max-queue (64)")
    compare.add_argument("--serve-args", default="", help="more serve arguments, e.g. '--threads 2'")
    compare.add_argument("--timeout", type=positive_float, default=1800.0, help="client timeout (default 1800)")
    compare.add_argument("--ready-timeout", type=positive_float, default=900.0, help="server start limit (900 s)")
    _add_shared_options(compare)
    compare.set_defaults(handler=_loadtest_batching)


def _add_shared_options(parser: argparse.ArgumentParser) -> None:
    mix = parser.add_mutually_exclusive_group()
    mix.add_argument(
        "--mix",
        nargs="+",
        metavar="NAME=WEIGHT[:FIELD=VALUE,...]",
        help="request classes (default: issue 8's, short=0.7:duration=2.5,steps=10 long=0.3:duration=10,steps=25)",
    )
    mix.add_argument("--mix-file", type=Path, help='JSON: {"short": {"weight": 0.7, "duration": 2.5, ...}, ...}')
    parser.add_argument("--prompt", help="the prompt of the classes that set none (default: a dog in the rain)")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the arrivals and requests (default 0)"
    )
    parser.add_argument("--batch-size-metric", help="the server's batch-size histogram (default: *batch_size*)")
    parser.add_argument(
        "--output", type=Path, default=Path("loadtest-results"), help="report directory (./loadtest-results)"
    )


def _shared_settings(loadtest: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The settings both commands take from ``_add_shared_options`` and ``--timeout``."""
    prompt = args.prompt or loadtest.DEFAULT_PROMPT
    if args.mix_file:
        mix = loadtest.load_mix(args.mix_file, prompt)
    else:
        mix = loadtest.parse_mix(args.mix or loadtest.DEFAULT_MIX, prompt)
    return {"mix": mix, "timeout": args.timeout, "seed": args.seed, "batch_size_metric": args.batch_size_metric}


def _report(loadtest: Any, record: dict[str, Any], text: str, output: Path, name: str) -> None:
    paths = loadtest.write_report(record, text, output, name)
    print(text)
    print(f"wrote {', '.join(str(p) for p in paths)}")


def _loadtest(args: argparse.Namespace) -> None:
    loadtest = import_extra("audioldm_trt.benchmarks.loadtest", "loadtest")
    api_key = args.api_key_file.read_text().strip() if args.api_key_file else args.api_key
    settings = loadtest.LoadSettings(
        url=args.url,
        rates=tuple(args.rate),
        duration=args.duration,
        requests=args.requests,
        api_key=api_key,
        **_shared_settings(loadtest, args),
    )
    record = asyncio.run(loadtest.run_load(settings))
    _report(loadtest, record, loadtest.markdown(record), args.output, "loadtest")


def _loadtest_batching(args: argparse.Namespace) -> None:
    loadtest = import_extra("audioldm_trt.benchmarks.loadtest", "loadtest")
    batching = import_extra("audioldm_trt.benchmarks.batching", "loadtest")

    settings = batching.ComparisonSettings(
        engine=args.engine,
        modes=tuple(args.modes),
        load=args.load,
        requests=args.requests,
        capacity_requests=args.capacity_requests,
        concurrency=args.concurrency,
        unloaded_runs=args.unloaded_runs,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        serve_args=tuple(shlex.split(args.serve_args)),
        ready_timeout=args.ready_timeout,
        **_shared_settings(loadtest, args),
    )
    record = asyncio.run(batching.compare_batching(settings, batching.serve_processes(settings, args.output)))
    _report(loadtest, record, batching.markdown(record), args.output, "batching")
    if failed := batching.failures(record):
        mode, error = next(iter(failed.items()))
        raise loadtest.LoadTestError(f"batching {mode} failed: {error}")
