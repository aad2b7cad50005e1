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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .backends import BACKENDS, HOST_BACKENDS, resolve_backend
from .backends.openvino import PRECISIONS
from .backends.profiles import OutOfProfileError
from .errors import EngineError
from .files import temporary_beside
from .schedulers import SCHEDULERS

logger = logging.getLogger("audioldm_trt")

AUDIO_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
#: The entry-point group through which packages built on the engine add their subcommands.
COMMAND_GROUP = "audioldm_trt.commands"


class UsageError(Exception):
    """A bad command line: exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2) rather than the usage text and a line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def time_span(text: str) -> tuple[float, float]:
    """``START:END`` in seconds."""
    start, colon, end = text.partition(":")
    if not colon:
        raise argparse.ArgumentTypeError(f"expected START:END in seconds, got {text!r}")
    return finite_float(start), finite_float(end)


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not -(2**63) <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [-2**63, 2**64) like torch's manual_seed, got {value}")
    return value


def json_object(text: str) -> dict[str, Any]:
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
        type=positive_float,
        help="seconds of audio (default: the model's, 5.12 s for the public checkpoints)",
    )
    generate.add_argument("--steps", type=positive_int, default=10, help="denoising steps (default 10)")
    generate.add_argument(
        "--guidance",
        type=finite_float,
        default=2.5,
        help="classifier-free guidance scale; <= 1 disables it (default 2.5)",
    )
    generate.add_argument("--negative-prompt", help="what the audio should not contain (one for all prompts)")
    generate.add_argument("--waveforms", type=positive_int, default=1, help="waveforms per prompt (default 1)")
    generate.add_argument("--eta", type=finite_float, default=0.0, help="DDIM eta (default 0)")
    generate.add_argument(
        "--seed",
        type=seed_value,
        help="seed; equal seeds give diffusers' audio for torch.Generator().manual_seed(seed)",
    )
    generate.add_argument("--scheduler", choices=sorted(SCHEDULERS), help="scheduler (default: the checkpoint's)")
    generate.add_argument(
        "--scheduler-config",
        type=json_object,
        default={},
        metavar="JSON",
        help="scheduler config overrides, e.g. '{\"use_karras_sigmas\": true}'",
    )
    generate.add_argument("--backend", choices=BACKENDS, default="auto", help="what runs the graphs (default auto)")
    generate.add_argument("--threads", type=positive_int, help="threads per graph call (default: all cores)")
    generate.add_argument(
        "--precision", choices=PRECISIONS, help="openvino's precision (default fp32; bf16 needs AVX512_BF16 or AMX)"
    )
    generate.add_argument(
        "--no-verify", action="store_true", help="check the sizes of the engine files, not their hashes"
    )
    generate.add_argument(
        "--input-audio",
        type=Path,
        metavar="FILE",
        help="audio-to-audio: an input clip (WAV, FLAC, OGG, ...; at most 60 s); style transfer unless a mode"
        " below is given",
    )
    mode = generate.add_mutually_exclusive_group()
    mode.add_argument(
        "--strength", type=finite_float, help="style transfer: how much of the input is regenerated, (0, 1] (0.5)"
    )
    mode.add_argument(
        "--inpaint", type=time_span, metavar="START:END", help="regenerate these seconds of the input, keep the rest"
    )
    mode.add_argument(
        "--super-resolution",
        type=positive_float,
        metavar="CUTOFF_HZ",
        help="regenerate the bands above CUTOFF_HZ (the input's lost high frequencies), keep those below",
    )
    mode.add_argument("--extend", type=positive_float, metavar="SECONDS", help="continue the input by SECONDS")
    generate.set_defaults(handler=_generate)

    for add_commands in plugged_in_commands():
        add_commands(commands, common)
    return parser


def _generate(args: argparse.Namespace) -> None:
    from .manifest import Manifest
    from .pipeline import Engine
    from .request import GenerationRequest, SchedulerChoice

    target = args.output
    if target.suffix.lower() not in AUDIO_FORMATS:
        raise UsageError(f"--output must end in {' or '.join(AUDIO_FORMATS)}, got {target.name!r}")
    if not target.parent.is_dir():
        raise UsageError(f"--output directory {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise OSError(f"cannot write to {target.parent}")
    # The arguments are checked against the export and this machine's memory before anything loads.
    manifest = Manifest.load(args.engine)
    backend = resolve_backend(args.backend, args.engine, manifest)
    request = GenerationRequest.create(
        manifest,
        SchedulerChoice.of_export(manifest, args.scheduler, args.scheduler_config),
        args.prompt,
        audio_length_in_s=args.duration,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        negative_prompt=args.negative_prompt,
        num_waveforms_per_prompt=args.waveforms,
        eta=args.eta,
        seed=args.seed,
        **_audio_arguments(args),
        graphs_on_host=backend in HOST_BACKENDS,
    )
    paths = output_paths(target, request.waveforms)
    _check_writable(paths)  # before minutes of work, not after
    engine = Engine.load(
        args.engine,
        backend=backend,
        scheduler=args.scheduler,
        scheduler_config=args.scheduler_config,
        verify=not args.no_verify,
        threads=args.threads,
        precision=args.precision,
    )
    print(f"running on {engine.backend.describe()} with {engine.scheduler_name}")
    result = engine.complete(request, progress=not args.quiet)
    write_audio_files(paths, result.audio, engine.sampling_rate)
    seconds = result.audio.shape[1] / engine.sampling_rate
    for path in paths:
        print(f"wrote {path} ({seconds:.2f} s at {engine.sampling_rate} Hz)")
    print(f"seed {result.seed} (pass --seed {result.seed} to reproduce); {result.timings['total']:.2f} s")


def _audio_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``Engine.request``'s audio-to-audio arguments of the command line."""
    modes = {
        "strength": args.strength,
        "inpaint": args.inpaint,
        "super_resolution": args.super_resolution,
        "extend": args.extend,
    }
    given = {name: value for name, value in modes.items() if value is not None}
    if args.input_audio is None:
        if given:
            raise UsageError(f"--{next(iter(given)).replace('_', '-')} needs --input-audio")
        return {}
    if not args.input_audio.is_file():
        raise UsageError(f"--input-audio {args.input_audio} is not a file")
    return {"audio": args.input_audio, **given}


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
            temporary = temporary_beside(path)
            pending.append((temporary, path))
            soundfile.write(temporary, waveform, sampling_rate, format=AUDIO_FORMATS[path.suffix.lower()])
        for temporary, path in pending:
            os.replace(temporary, path)
            placed.append(path)
    except BaseException:
        for leftover in [t for t, _ in pending] + placed:
            leftover.unlink(missing_ok=True)
        raise


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def plugged_in_commands() -> list[Callable[..., None]]:
    """The ``add_commands(commands, common)`` functions of the packages built on the engine (export,
    benchmarks, serving), from the ``audioldm_trt.commands`` entry-point group, in name order."""
    from importlib.metadata import entry_points

    return [entry.load() for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name)]


def import_extra(module: str, extra: str) -> Any:
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
        # 2: the command line asks for something wrong (bad arguments, more than the engines were built for);
        # 1: the engine, its files or the machine failed.
        bad_request = isinstance(error, ValueError) and not isinstance(error, EngineError)
        status = 2 if isinstance(error, UsageError | OutOfProfileError) or bad_request else 1
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        prefix = "" if message.startswith("audioldm-trt") else "audioldm-trt: error: "
        print(f"{prefix}{message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
