"""``manifest.json``: everything the runtime needs to know about an exported model, and the checks of it.

The exporter writes it last (the directory is renamed into place after), so a directory with a manifest is a
complete export; the sha256 of every file lets the runtime name the file that is missing or corrupt.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import EngineDirectoryError

MANIFEST_NAME = "manifest.json"
#: 2: the fused-attention graphs ONNX Runtime runs (``onnxruntime_file``) and the activation sizes.
FORMAT_VERSION = 2
#: The graphs of an export, in pipeline order.
GRAPH_NAMES = ("text_encoder", "unet", "vae_decoder", "vocoder")


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: dtype name and shape, with strings for dynamic axes."""

    dtype: str
    shape: list[int | str]


@dataclass(frozen=True)
class GraphSpec:
    #: The graph TensorRT builds from, with attention in the standard pattern TensorRT fuses.
    file: str
    precision: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    #: The most bytes of intermediate tensors alive at once, per batch item and latent row, in the graph ONNX
    #: Runtime runs (0 for the text encoder, whose tensors do not grow with the audio): what ``memory.py`` scales.
    activation_bytes_per_row: float
    #: The graph ONNX Runtime runs: ``file``, or for a network with attention its form with ONNX Runtime's fused
    #: attention operator, in memory linear in the tokens (see ``audioldm_trt.export.attention``).
    onnxruntime_file: str


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ModelSpec:
    """The dimensions and constants of the exported checkpoint the pipeline computes with."""

    sampling_rate: int
    #: HiFi-GAN's up-sampling rates; their product is the number of samples per mel frame.
    vocoder_upsample_rates: list[int]
    vae_scale_factor: int
    vae_scaling_factor: float
    latent_channels: int
    mel_bins: int
    #: The UNet's ``sample_size``: diffusers' default audio length is derived from it.
    unet_sample_size: int
    embedding_dim: int
    tokenizer_max_length: int

    @property
    def hop_length(self) -> int:
        return math.prod(self.vocoder_upsample_rates)

    @property
    def seconds_per_frame(self) -> float:
        """diffusers' ``vocoder_upsample_factor``: seconds of audio per mel frame."""
        return self.hop_length / self.sampling_rate

    @property
    def default_audio_length_in_s(self) -> float:
        return self.unet_sample_size * self.vae_scale_factor * self.seconds_per_frame

    @property
    def min_audio_length_in_s(self) -> float:
        """The shortest audio diffusers accepts: one latent row."""
        return self.seconds_per_frame * self.vae_scale_factor

    def latent_height(self, audio_length_in_s: float) -> int:
        """Latent rows for ``audio_length_in_s``: spectrogram frames rounded up to the VAE factor, as diffusers."""
        height = int(audio_length_in_s / self.seconds_per_frame)
        if height % self.vae_scale_factor != 0:
            height = math.ceil(height / self.vae_scale_factor) * self.vae_scale_factor
        return height // self.vae_scale_factor

    def waveform_length(self, audio_length_in_s: float) -> int:
        return int(audio_length_in_s * self.sampling_rate)

    @property
    def latent_width(self) -> int:
        return self.mel_bins // self.vae_scale_factor


@dataclass(frozen=True)
class Manifest:
    model: ModelSpec
    scheduler: dict[str, Any]
    graphs: dict[str, GraphSpec]
    #: Every file of the export but the manifest, by path relative to the directory.
    files: dict[str, FileRecord]
    precision: str
    source: str
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not directory.is_dir():
            raise EngineDirectoryError(f"engine directory {directory} does not exist")
        if not path.is_file():
            raise EngineDirectoryError(f"{path} is missing: {directory} is not a complete export")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format_version") != FORMAT_VERSION:
                raise EngineDirectoryError(
                    f"{path} has format version {data.get('format_version')}, this runtime reads {FORMAT_VERSION}:"
                    " export the model again"
                )
            return cls(
                model=ModelSpec(**data["model"]),
                scheduler=dict(data["scheduler"]),
                graphs={
                    name: GraphSpec(
                        file=g["file"],
                        precision=g["precision"],
                        inputs={k: TensorSpec(**v) for k, v in g["inputs"].items()},
                        outputs={k: TensorSpec(**v) for k, v in g["outputs"].items()},
                        activation_bytes_per_row=float(g["activation_bytes_per_row"]),
                        onnxruntime_file=g["onnxruntime_file"],
                    )
                    for name, g in data["graphs"].items()
                },
                files={k: FileRecord(**v) for k, v in data["files"].items()},
                precision=data["precision"],
                source=data["source"],
                versions=dict(data.get("versions", {})),
            )
        except EngineDirectoryError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise EngineDirectoryError(f"{path} is corrupt ({type(error).__name__}: {error})") from None

    def save(self, directory: str | Path) -> None:
        Path(directory, MANIFEST_NAME).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    def verify(self, directory: str | Path, hashes: bool = True) -> None:
        """Raise EngineDirectoryError naming the first file that is missing, truncated or (with ``hashes``)
        whose sha256 differs from the manifest's."""
        directory = Path(directory)
        missing_graphs = [name for name in GRAPH_NAMES if name not in self.graphs]
        if missing_graphs:
            raise EngineDirectoryError(f"{directory / MANIFEST_NAME} lists no {missing_graphs[0]} graph")
        for relative, record in self.files.items():
            path = directory / relative
            if not path.is_file():
                raise EngineDirectoryError(f"{path} is missing: export the model again")
            size = path.stat().st_size
            if size != record.bytes:
                raise EngineDirectoryError(f"{path} has {size} bytes, the manifest says {record.bytes}: it is corrupt")
        if not hashes:
            return
        # hashlib releases the GIL on large buffers: the files hash in parallel, one per core.
        paths = [directory / relative for relative in self.files]
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            digests = list(pool.map(sha256_file, paths))
        for path, digest, record in zip(paths, digests, self.files.values(), strict=True):
            if digest != record.sha256:
                raise EngineDirectoryError(f"{path} does not match its sha256 in the manifest: it is corrupt")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path) -> FileRecord:
    return FileRecord(sha256=sha256_file(path), bytes=path.stat().st_size)
