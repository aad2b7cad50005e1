"""The export package's subcommands of ``audioldm-trt``: ``export``, ``build`` and ``random-model``.

Registered through the ``audioldm_trt.commands`` entry-point group (pyproject.toml); torch, diffusers and
TensorRT are imported when a command runs, so that ``audioldm-trt --help`` stays fast and works without them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..engine.cli import UsageError, import_extra, positive_int, seed_value


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
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
        type=positive_int,
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
    random_model.add_argument("--seed", type=seed_value, default=0, help="weight seed (default 0)")
    random_model.add_argument("--force", action="store_true", help="replace an existing output directory")
    random_model.set_defaults(handler=_random_model)


def quiet_unless_verbose(args: argparse.Namespace) -> None:
    """diffusers' and transformers' notices and progress bars, unless ``--verbose`` or ``--debug``."""
    if not (args.verbose or args.debug):
        import_extra("audioldm_trt.export", "export").quiet_hub_libraries()


def _export(args: argparse.Namespace) -> None:
    exporter = import_extra("audioldm_trt.export.exporter", "export")
    quiet_unless_verbose(args)
    output = exporter.export_model(
        args.model, args.output, precision=args.precision, fp32_graphs=args.fp32, force=args.force
    )
    print(f"exported {args.model} to {output}")


def _build(args: argparse.Namespace) -> None:
    from ..engine.backends.profiles import Range

    tensorrt = import_extra("audioldm_trt.export.tensorrt", "gpu")
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
    random_models = import_extra("audioldm_trt.export.random_models", "export")
    quiet_unless_verbose(args)
    if args.preset not in random_models.PRESETS:
        raise UsageError(f"unknown preset {args.preset!r}; choose one of {', '.join(random_models.PRESETS)}")
    output = random_models.write_random_model(args.preset, args.output, seed=args.seed, force=args.force)
    print(f"wrote a random-weight {args.preset} AudioLDM model to {output}")
