"""``manifest.json``: everything the runtime needs to know about an exported model, and the checks of it.

The exporter writes it last (the directory is renamed into place after), so a directory with a manifest is a
complete export; the size and hashes of every file let the runtime name the file that is missing or corrupt.

Every load hashes every byte of every file with XXH3-128 (xxhash), which runs at memory speed, several times
faster than sha256, and hashes the weights while the sessions are being created (benchmarks/README.md has the
figures). XXH3-128 is for corruption: a changed file passes only with a chance of 2**-128. It is not for
tampering, which a manifest kept beside the files cannot detect anyway. The manifest checks itself likewise:
it records the XXH3-128 of the rest of its content. The sha256 of each file is recorded too: it identifies the
graph a TensorRT engine was built from, and it is what older manifests, without XXH3-128, are checked by.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import xxhash

from .errors import EngineDirectoryError

MANIFEST_NAME = "manifest.json"
#: 2: the fused-attention graphs ONNX Runtime runs (``onnxruntime_file``) and the activation sizes.
FORMAT_VERSION = 3
#: The manifest's key for the XXH3-128 of the rest of its content (as canonical JSON): the manifest checks itself.
SELF_DIGEST = "manifest_xxh3_128"
#: The graphs of an export, in pipeline order.
GRAPH_NAMES = ("text_encoder", "unet", "vae_decoder", "vocoder")
#: Graphs an export may lack: exports made before audio-to-audio have no VAE encoder.
OPTIONAL_GRAPHS = ("vae_encoder",)
#: AudioLDM's STFT window at its 16 kHz: 1024 samples (64 ms); other rates keep the 64 ms.
AUDIOLDM_FILTER_SECONDS = 1024 / 16000
#: Appended to a graph's file name, the file that holds its weights (ONNX external data).
WEIGHTS_SUFFIX = ".data"


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
    #: attention operator, in memory linear in the tokens (README: "What an engine directory holds"). Both forms
    #: read their weights from ``file``'s weights file.
    onnxruntime_file: str


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    bytes: int
    #: What every load checks; None in manifests written before it was recorded (their sha256 is checked).
    xxh3_128: str | None = None

    @property
    def checked_digest(self) -> tuple[str, str]:
        """The hash a load checks: its name and the manifest's value."""
        return ("xxh3_128", self.xxh3_128) if self.xxh3_128 is not None else ("sha256", self.sha256)


@dataclass(frozen=True)
class ModelSpec:
    """The dimensions and constants of the exported checkpoint the pipeline computes with."""

    sampling_rate: int
    #: HiFi-GAN's up-sampling rates; their product is the number of samples per mel frame.
    vocoder_upsample_rates: list[int]
    #: Mel frames on each side of a span that its waveform depends on (the vocoder's receptive field): the
    #: overlap that makes the vocoder's windows join to exactly the whole spectrogram's audio.
    vocoder_context_frames: int
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
class MelSpec:
    """The front-end's parameters, recorded in the manifest by the export."""

    sampling_rate: int
    filter_length: int
    hop_length: int
    win_length: int
    n_mels: int
    fmin: float
    fmax: float

    @classmethod
    def audioldm(cls, sampling_rate: int, hop_length: int, n_mels: int) -> MelSpec:
        """AudioLDM's front-end for a model of this rate, hop and mel bins (the vocoder's): a 64 ms window and
        filter, mel bands from 0 Hz to Nyquist (1024 samples and 0-8000 Hz for the 16 kHz checkpoints)."""
        filter_length = round(AUDIOLDM_FILTER_SECONDS * sampling_rate)
        return cls(sampling_rate, filter_length, hop_length, filter_length, n_mels, 0.0, sampling_rate / 2)


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
    #: The audio front-end's parameters; None in exports made before audio-to-audio.
    mel: MelSpec | None = None

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
            recorded = data.pop(SELF_DIGEST, None)  # absent from manifests written before it was recorded
            if recorded is not None and recorded != _content_digest(data):
                raise EngineDirectoryError(f"{path} does not match its own xxh3_128: it is corrupt")
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
                mel=MelSpec(**data["mel"]) if data.get("mel") else None,
            )
        except EngineDirectoryError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise EngineDirectoryError(f"{path} is corrupt ({type(error).__name__}: {error})") from None

    def save(self, directory: str | Path) -> None:
        data = asdict(self)
        text = json.dumps(data | {SELF_DIGEST: _content_digest(data)}, indent=2)
        Path(directory, MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")

    @property
    def graph_names(self) -> tuple[str, ...]:
        """The export's graphs, in pipeline order: GRAPH_NAMES and the optional ones it has."""
        return GRAPH_NAMES + tuple(name for name in OPTIONAL_GRAPHS if name in self.graphs)

    def graph_files(self, graph: str) -> list[str]:
        """The files of a graph: the graph itself and, where it has one, the file of its weights."""
        file = self.graphs[graph].file
        return [f for f in (file, file + WEIGHTS_SUFFIX) if f in self.files]

    def graph_bytes(self, graph: str) -> int:
        return sum(self.files[f].bytes for f in self.graph_files(graph))

    def graph_sha256(self, graph: str) -> str:
        """The identity of a graph, structure and weights, from the sha256 of its files."""
        digest = hashlib.sha256()
        for relative in self.graph_files(graph):
            digest.update(f"{relative} {self.files[relative].sha256}\n".encode())
        return digest.hexdigest()

    def verify(self, directory: str | Path, hashes: bool = True) -> None:
        """Raise EngineDirectoryError naming the first file that is missing, truncated or (with ``hashes``)
        whose hash differs from the manifest's."""
        with self.verifying(directory, hashes):
            pass

    @contextmanager
    def verifying(self, directory: str | Path, hashes: bool = True) -> Iterator[None]:
        """``verify``, overlapped with the body of the ``with`` block, which loads the export.

        Sizes, and the hashes of every file but the weights (graph structure, tokenizer: what parsers read),
        are checked before the body runs. The weight files are only ever read as numbers, so they are hashed
        in a background thread while the body creates the sessions; leaving the block waits for them. If the
        body fails and a file is corrupt, the error raised is the one naming the file: a corrupt graph often
        makes the backend fail first, with a message that does not."""
        directory = Path(directory)
        self._check_sizes(directory)
        if not hashes:
            yield
            return
        weights = [relative for relative in self.files if relative.endswith(WEIGHTS_SUFFIX)]
        self._check_hashes(directory, [relative for relative in self.files if relative not in weights])
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify") as pool:
            checked = pool.submit(self._check_hashes, directory, weights)
            try:
                yield
            except BaseException as failure:
                corrupt = checked.exception()
                if corrupt is not None:
                    raise corrupt from failure
                raise
            checked.result()

    def _check_sizes(self, directory: Path) -> None:
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

    def _check_hashes(self, directory: Path, relatives: list[str]) -> None:
        for relative in relatives:
            path = directory / relative
            name, expected = self.files[relative].checked_digest
            digest = xxhash.xxh3_128() if name == "xxh3_128" else hashlib.sha256()
            _hash_file(path, digest)
            if digest.hexdigest() != expected:
                raise EngineDirectoryError(f"{path} does not match its {name} in the manifest: it is corrupt")


def _content_digest(data: dict[str, Any]) -> str:
    """XXH3-128 of ``data`` as canonical JSON: what the manifest says, whatever its layout."""
    return xxhash.xxh3_128_hexdigest(json.dumps(data, sort_keys=True, separators=(",", ":")).encode())


class _Digest(Protocol):
    def update(self, data: mmap.mmap, /) -> None: ...

    def hexdigest(self) -> str: ...


def _hash_file(path: Path, *digests: _Digest) -> None:
    """Feed the bytes of ``path`` to each digest through a read-only memory map: no copy into this process, and
    both libraries release the GIL while they hash."""
    with open(path, "rb") as stream:
        if os.fstat(stream.fileno()).st_size == 0:
            return  # mmap cannot map an empty file; the digests of nothing are what they are
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            for digest in digests:
                digest.update(mapped)


def file_record(path: Path) -> FileRecord:
    sha256, xxh3_128 = hashlib.sha256(), xxhash.xxh3_128()
    _hash_file(path, sha256, xxh3_128)
    return FileRecord(sha256=sha256.hexdigest(), bytes=path.stat().st_size, xxh3_128=xxh3_128.hexdigest())
