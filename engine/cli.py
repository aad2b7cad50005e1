"""``audioldm-trt``: generate audio, export and build models, make random test models, benchmark.

Every failure is one line on stderr and a non-zero exit: 2 for a bad command line or argument, 1 for a
failure while running (missing files, no GPU, ...). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .backends import BACKENDS
from .errors import EngineError
from .schedulers import SCHEDULERS

logger = logging.getLogger("audioldm_trt")

AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


class UsageError(Exception):
    """A bad command line: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2) rather than the usage text and a line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not -(2**63) <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [-2**63, 2**64) like torch's manual_seed, got {value}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON ({error.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    common.add_argument("--verbose", action="store_true", help="log what is loaded and which backend runs it")
    parser = _Parser(prog="audioldm-trt", description=__doc__.split("\n")[0], parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    generate = commands.add_parser("generate", parents=[common], help="text to audio with an exported model")
    generate.add_argument("prompt", nargs="+", help="one or more prompts")
    generate.add_argument("--engine", required=True, type=Path, help="directory written by `audioldm-trt export`")
    generate.add_argument(
        "--output", required=True, type=Path, help="FILE.wav or FILE.flac; several outputs are numbered"
    )
    generate.add_argument(
        "--duration",
        type=_positive_float,
        help="seconds of audio (default: the model's, 5.12 s for the public checkpoints)",
    )
    generate.add_argument("--steps", type=_positive_int, default=10, help="denoising steps (default 10)")
    generate.add_argument(
        "--guidance",
        type=_finite_float,
        default=2.5,
        help="classifier-free guidance scale; <= 1 disables it (default 2.5)",
    )
    generate.add_argument("--negative-prompt", help="what the audio should not contain (one for all prompts)")
    generate.add_argument("--waveforms", type=_positive_int, default=1, help="waveforms per prompt (default 1)")
    generate.add_argument("--eta", type=_finite_float, default=0.0, help="DDIM eta (default 0)")
    generate.add_argument(
        "--seed", type=_seed, help="seed; equal seeds give diffusers' audio for torch.Generator().manual_seed(seed)"
    )
    generate.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="scheduler (default: the checkpoint's)")
    generate.add_argument(
        "--scheduler-config",
        type=_json_object,
        default={},
        metavar="JSON",
        help="scheduler config overrides, e.g. '{\"use_karras_sigmas\": true}'",
    )
    generate.add_argument("--backend", choices=BACKENDS, default="auto", help="what runs the graphs (default auto)")
    generate.add_argument("--threads", type=_positive_int, help="ONNX Runtime threads per call (default: all cores)")
    generate.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the engine files")
    generate.set_defaults(handler=_generate)

    export = commands.add_parser("export", parents=[common], help="export a diffusers AudioLDM checkpoint to ONNX")
    export.add_argument(
        "--model", required=True, help="local diffusers directory or hub id, e.g. cvssp/audioldm-s-full-v2"
    )
    export.add_argument("--output", required=True, type=Path, help="engine directory to write")
    export.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    export.add_argument("--fp32", nargs="+", default=[], metavar="GRAPH", help="graphs to keep fp32 in an fp16 export")
    export.add_argument("--force", action="store_true", help="replace an existing output directory")
    export.set_defaults(handler=_export)

    build = commands.add_parser(
        "build", parents=[common], help="build TensorRT engines for an export (needs an NVIDIA GPU; takes minutes)"
    )
    build.add_argument("engine", type=Path, metavar="DIR", help="directory written by `audioldm-trt export`")
    build.add_argument(
        "--batch", metavar="MIN:OPT:MAX", help="waveforms per generation the engines take (default 1:1:4)"
    )
    build.add_argument(
        "--duration",
        metavar="MIN:OPT:MAX",
        help="seconds of audio the engines take (default: the model's shortest : its default : twice its default)",
    )
    build.add_argument(
        "--requests",
        type=_positive_int,
        default=1,
        metavar="N",
        help="generations a server batches into one call (serve --max-batch): every batch maximum times N (default 1)",
    )
    build.add_argument("--workspace", metavar="SIZE", help="TensorRT scratch memory cap, e.g. 4G (default: TensorRT's)")
    build.add_argument("--force", action="store_true", help="rebuild engines that are up to date")
    build.set_defaults(handler=_build)

    random_model = commands.add_parser(
        "random-model", parents=[common], help="write a random-weight AudioLDM checkpoint"
    )
    random_model.add_argument(
        "--preset", required=True, help="tiny, tiny-deep or s-full-v2 (the architecture of cvssp/audioldm-s-full-v2)"
    )
    random_model.add_argument("--output", required=True, type=Path, help="directory to write (diffusers layout)")
    random_model.add_argument("--seed", type=_seed, default=0, help="weight seed (default 0)")
    random_model.add_argument("--force", action="store_true", help="replace an existing output directory")
    random_model.set_defaults(handler=_random_model)

    bench = commands.add_parser(
        "bench", parents=[common], help="time this runtime against diffusers on the same work, outputs compared"
    )
    source = bench.add_argument_group("model (default: the random-weight --preset, exported into --cache)")
    source.add_argument("--model", help="diffusers checkpoint (local directory or hub id) to benchmark")
    source.add_argument("--preset", default="s-full-v2", help="random-weight preset (default s-full-v2)")
    source.add_argument("--engine", type=Path, help="use this export instead of exporting (diffusers loads its source)")
    source.add_argument("--cache", type=Path, help="exports kept here (~/.cache/audioldm-trt/bench)")
    bench.add_argument("--duration", type=_positive_float, default=5.0, help="seconds of audio (default 5)")
    bench.add_argument("--steps", type=_positive_int, default=10, help="denoising steps (default 10)")
    bench.add_argument("--guidance", type=_finite_float, default=2.5, help="guidance scale (default 2.5)")
    bench.add_argument("--batch", type=_positive_int, default=1, help="prompts per generation (default 1)")
    bench.add_argument("--runs", type=_positive_int, default=5, help="timed runs of each contender (default 5)")
    bench.add_argument("--warmup", type=_non_negative_int, default=1, help="untimed runs first (default 1)")
    bench.add_argument(
        "--backends",
        nargs="+",
        choices=("onnxruntime-cpu", "onnxruntime-cuda", "tensorrt"),
        metavar="BACKEND",
        help="onnxruntime-cpu, onnxruntime-cuda, tensorrt (default: the last two on a GPU host, else the first)",
    )
    bench.add_argument("--compile", action="store_true", help="also run diffusers with a torch.compile'd UNet")
    bench.add_argument("--output", type=Path, default=Path("bench-results"), help="report directory (./bench-results)")
    bench.set_defaults(handler=_bench)
    return parser


def _generate(args: argparse.Namespace) -> None:
    from .pipeline import Engine

    target = args.output
    if target.suffix.lower() not in AUDIO_FORMATS:
        raise UsageError(f"--output must end in {' or '.join(AUDIO_FORMATS)}, got {target.name!r}")
    if not target.parent.is_dir():
        raise UsageError(f"--output directory {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise OSError(f"cannot write to {target.parent}")
    paths = output_paths(target, len(args.prompt) * args.waveforms)
    _check_writable(paths)  # before minutes of work, not after
    engine = Engine.load(
        args.engine,
        backend=args.backend,
        scheduler=args.scheduler,
        scheduler_config=args.scheduler_config,
        verify=not args.no_verify,
        threads=args.threads,
    )
    print(f"running on {engine.backend.describe()} with {engine.scheduler_name}")
    result = engine.run(
        args.prompt,
        audio_length_in_s=args.duration,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        negative_prompt=args.negative_prompt,
        num_waveforms_per_prompt=args.waveforms,
        eta=args.eta,
        seed=args.seed,
        progress=not args.quiet,
    )
    write_audio_files(paths, result.audio, engine.sampling_rate)
    seconds = result.audio.shape[1] / engine.sampling_rate
    for path in paths:
        print(f"wrote {path} ({seconds:.2f} s at {engine.sampling_rate} Hz)")
    print(f"seed {result.seed} (pass --seed {result.seed} to reproduce); {result.timings['total']:.2f} s")


def output_paths(target: Path, count: int) -> list[Path]:
    """``out.wav`` for one waveform; ``out_0.wav``, ``out_1.wav``, ... for several."""
    if count == 1:
        return [target]
    return [target.with_name(f"{target.stem}_{i}{target.suffix}") for i in range(count)]


def _check_writable(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.is_dir():
            raise OSError(f"cannot write {path}: it is a directory")


def write_audio_files(paths: Sequence[Path], audio: np.ndarray, sampling_rate: int) -> None:
    """Write every waveform to a temporary file beside its target, then rename them all into place; on any
    failure remove what was written, so that no partial output is left."""
    import soundfile

    _check_writable(paths)
    pending: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for path, waveform in zip(paths, audio, strict=True):
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
            os.close(fd)
            pending.append((Path(name), path))
            soundfile.write(name, waveform, sampling_rate, format=AUDIO_FORMATS[path.suffix.lower()])
        for temporary, path in pending:
            os.replace(temporary, path)
            placed.append(path)
    except BaseException:
        for leftover in [t for t, _ in pending] + placed:
            leftover.unlink(missing_ok=True)
        raise


def _export(args: argparse.Namespace) -> None:
    exporter = _import_extra("audioldm_trt.export.exporter", "export")
    _quiet_unless_verbose(args)
    output = exporter.export_model(
        args.model, args.output, precision=args.precision, fp32_graphs=args.fp32, force=args.force
    )
    print(f"exported {args.model} to {output}")


def _build(args: argparse.Namespace) -> None:
    from .backends.profiles import Range

    tensorrt = _import_extra("audioldm_trt.export.tensorrt", "gpu")
    written = tensorrt.build_engines(
        args.engine,
        batch=Range.parse(args.batch, int) if args.batch else None,
        duration=Range.parse(args.duration, float) if args.duration else None,
        workspace=tensorrt.parse_size(args.workspace) if args.workspace else None,
        force=args.force,
        progress=not args.quiet,
        requests=args.requests,
    )
    for path in written:
        print(f"wrote {path}")
    print(f"TensorRT engines of {args.engine} are ready: audioldm-trt generate ... --engine {args.engine}")


def _random_model(args: argparse.Namespace) -> None:
    random_models = _import_extra("audioldm_trt.export.random_models", "export")
    _quiet_unless_verbose(args)
    if args.preset not in random_models.PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(random_models.PRESETS)}")
    output = random_models.write_random_model(args.preset, args.output, seed=args.seed, force=args.force)
    print(f"wrote a random-weight {args.preset} AudioLDM model to {output}")


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _bench(args: argparse.Namespace) -> None:
    bench = _import_extra("audioldm_trt.benchmarks.bench", "export")
    report = _import_extra("audioldm_trt.benchmarks.report", "export")
    _quiet_unless_verbose(args)
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
        cache=args.cache,
    )
    record = bench.run_benchmark(settings)
    paths = report.write_report(record, args.output)
    print(report.markdown(record))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


def _quiet_unless_verbose(args: argparse.Namespace) -> None:
    if not (args.verbose or args.debug):
        _import_extra("audioldm_trt.export", "export").quiet_hub_libraries()


def _import_extra(module: str, extra: str) -> Any:
    """Import a module that needs an optional extra, with an install hint instead of an ImportError."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise EngineError(f"{error.name or error} is not installed: pip install 'audioldm-trt[{extra}]'") from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        logger.setLevel(level)
        handler: Callable[[argparse.Namespace], None] = args.handler
        handler(args)
        return 0
    except KeyboardInterrupt:
        print("audioldm-trt: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the one place every failure becomes a one-line message and an exit status
        if debug:
            raise
        status = (
            2
            if isinstance(error, UsageError) or (isinstance(error, ValueError) and not isinstance(error, EngineError))
            else 1
        )
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        prefix = "" if isinstance(error, UsageError) else "audioldm-trt: error: "
        print(f"{prefix}{message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
