"""``audioldm-trt export``: a diffusers AudioLDM checkpoint -> an engine directory the runtime loads.

The directory is written under a temporary name beside the target and renamed into place at the end, so an
interrupted export never leaves a directory that looks complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from diffusers import AudioLDMPipeline
from tqdm import tqdm

from ..engine.errors import EngineError
from ..engine.manifest import (
    GRAPH_NAMES,
    OPTIONAL_GRAPHS,
    WEIGHTS_SUFFIX,
    GraphSpec,
    Manifest,
    MelSpec,
    ModelSpec,
    TensorSpec,
    file_record,
)
from ..engine.tokenizer import TOKENIZER_FILES
from .activations import activation_bytes_per_row
from .attention import has_attention
from .files import atomic_directory
from .onnx import (
    GraphIO,
    export_text_encoder,
    export_unet,
    export_vae_decoder,
    export_vae_encoder,
    export_vocoder,
    share_weights,
    vocoder_context_frames,
)

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")


class SourceError(EngineError, ValueError):
    """The checkpoint to export cannot be found or read."""


def load_pipeline(source: str) -> tuple[AudioLDMPipeline, Path]:
    """The fp32 pipeline and the local directory it was read from (hub ids are downloaded by diffusers)."""
    if Path(source).exists():
        directory = Path(source)
        if not (directory / "model_index.json").is_file():
            raise SourceError(f"{source} is not a diffusers AudioLDM directory (no model_index.json)")
    elif _is_path(source):
        raise SourceError(f"{source} does not exist")
    else:
        try:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(source))
        except Exception as error:  # the hub client raises many types: offline, unknown repo, auth
            raise SourceError(
                f"cannot find model {source!r}: not a local directory, and the hub says: {error}"
            ) from None
    try:
        pipe = AudioLDMPipeline.from_pretrained(directory)
    except Exception as error:
        raise SourceError(f"cannot load {directory} as an AudioLDM pipeline: {error}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe, directory


def _is_path(source: str) -> bool:
    """A source that can only be a local path: hub ids are ``name`` or ``owner/name``."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def model_spec(pipe: AudioLDMPipeline) -> ModelSpec:
    """Every dimension the runtime needs, read from the components' configs."""
    vae_scale_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return ModelSpec(
        sampling_rate=int(pipe.vocoder.config.sampling_rate),
        vocoder_upsample_rates=[int(r) for r in pipe.vocoder.config.upsample_rates],
        vocoder_context_frames=vocoder_context_frames(pipe.vocoder),
        vae_scale_factor=vae_scale_factor,
        vae_scaling_factor=float(pipe.vae.config.scaling_factor),
        latent_channels=int(pipe.unet.config.in_channels),
        mel_bins=int(pipe.vocoder.config.model_in_dim),
        unet_sample_size=int(pipe.unet.config.sample_size),
        embedding_dim=int(pipe.text_encoder.config.projection_dim),
        tokenizer_max_length=int(pipe.tokenizer.model_max_length),
    )


def export_model(
    source: str,
    output: str | os.PathLike[str],
    precision: str = "fp32",
    fp32_graphs: Collection[str] = (),
    force: bool = False,
) -> Path:
    """Export ``source`` into ``output``; ``fp32_graphs`` stay fp32 when ``precision`` is fp16."""
    return export_models(source, {precision: output}, fp32_graphs, force)[precision]


def export_models(
    source: str,
    outputs: Mapping[str, str | os.PathLike[str]],
    fp32_graphs: Collection[str] = (),
    force: bool = False,
) -> dict[str, Path]:
    """Export ``source`` once per precision of ``outputs`` (precision -> directory), tracing and checking each
    network against PyTorch once for all of them: an fp16 directory is converted from the same fp32 graphs."""
    targets = {precision: Path(output) for precision, output in outputs.items()}
    for precision in targets:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    names = GRAPH_NAMES + OPTIONAL_GRAPHS
    unknown = sorted(set(fp32_graphs) - set(names))
    if unknown:
        raise ValueError(f"unknown graph {unknown[0]!r} for --fp32; choose from {', '.join(names)}")
    for output in targets.values():
        if output.exists() and not force:
            raise FileExistsError(f"{output} already exists (pass --force to replace it)")
    pipe, source_dir = load_pipeline(source)
    spec = model_spec(pipe)
    if spec.mel_bins % spec.vae_scale_factor:
        raise SourceError(
            f"{source}: {spec.mel_bins} mel bins are not divisible by the VAE factor {spec.vae_scale_factor}"
        )

    with contextlib.ExitStack() as stack:
        # Every directory appears at the end or not at all; the traced fp32 graphs wait in a scratch directory.
        works = {precision: stack.enter_context(atomic_directory(path, force)) for precision, path in targets.items()}
        scratch = tempfile.TemporaryDirectory(prefix=".traces-", dir=next(iter(works.values())).parent)
        traces = Path(stack.enter_context(scratch))
        # Each network and its export; ``fused``: attention as ONNX Runtime's MultiHeadAttention (attention.py).
        exports: dict[str, tuple[Any, Callable[[Path, bool], GraphIO]]] = {
            "text_encoder": (pipe.text_encoder, lambda p, _: export_text_encoder(pipe.text_encoder, p)),
            "unet": (
                pipe.unet,
                lambda p, fused: export_unet(pipe.unet, p, spec.latent_width, spec.embedding_dim, fused),
            ),
            "vae_decoder": (pipe.vae, lambda p, fused: export_vae_decoder(pipe.vae, p, spec.latent_width, fused)),
            "vocoder": (pipe.vocoder, lambda p, _: export_vocoder(pipe.vocoder, p)),
            "vae_encoder": (
                pipe.vae,
                lambda p, fused: export_vae_encoder(pipe.vae, p, spec.mel_bins, spec.vae_scale_factor, fused),
            ),
        }
        graphs: dict[str, dict[str, GraphSpec]] = {precision: {} for precision in works}
        with tqdm(total=len(exports), desc="exporting", unit="graph") as bar:
            for name, (network, export) in exports.items():
                bar.set_postfix_str(name)
                files = [f"{name}.onnx"] + ([f"{name}.onnxruntime.onnx"] if has_attention(network) else [])
                io = export(traces / files[0], False)
                if len(files) > 1:
                    export(traces / files[1], True)
                for position, (precision, work) in enumerate(works.items()):
                    graph_precision = "fp16" if precision == "fp16" and name not in fp32_graphs else "fp32"
                    # The last directory takes the traced files; the others get copies.
                    place = shutil.move if position == len(works) - 1 else shutil.copyfile
                    for file in files:
                        for part in (file, file + WEIGHTS_SUFFIX):
                            place(traces / part, work / part)
                        _convert(work / file, name, graph_precision)
                    share_weights(work / files[0], [work / file for file in files[1:]])
                    graphs[precision][name] = GraphSpec(
                        file=files[0],
                        precision=graph_precision,
                        inputs={k: TensorSpec(dtype, shape) for k, (dtype, shape) in io.inputs.items()},
                        outputs={k: TensorSpec(dtype, shape) for k, (dtype, shape) in io.outputs.items()},
                        activation_bytes_per_row=activation_bytes_per_row(work / files[-1], io, spec),
                        onnxruntime_file=files[-1],
                    )
                bar.update()
        for precision, work in works.items():
            _copy_tokenizer(source_dir / "tokenizer", work / "tokenizer")
            manifest = Manifest(
                model=spec,
                scheduler=dict(pipe.scheduler.config) | {"_class_name": type(pipe.scheduler).__name__},
                graphs=graphs[precision],
                files={str(p.relative_to(work)): file_record(p) for p in sorted(work.rglob("*")) if p.is_file()},
                precision=precision,
                source=str(source),
                versions=_versions(),
                mel=MelSpec.audioldm(spec.sampling_rate, spec.hop_length, spec.mel_bins),
            )
            manifest.save(work)
    for output in targets.values():
        logger.info("exported %s to %s", source, output)
    return targets


def _convert(path: Path, name: str, precision: str) -> None:
    if precision == "fp16":
        from .fp16 import convert_to_fp16

        convert_to_fp16(path, name)


def _copy_tokenizer(source: Path, target: Path) -> None:
    present = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not ("tokenizer.json" in present or {"vocab.json", "merges.txt"} <= set(present)):
        raise SourceError(f"{source} has neither tokenizer.json nor vocab.json + merges.txt")
    target.mkdir()
    for name in present:
        shutil.copyfile(source / name, target / name)


def _versions() -> dict[str, str]:
    names = ("audioldm-trt", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


__all__ = ["PRECISIONS", "SourceError", "export_model", "export_models", "load_pipeline", "model_spec"]
