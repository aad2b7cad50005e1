"""The shapes each graph is run with, derived from the batch and duration ranges an engine is built for.

TensorRT engines take any shape inside their optimisation profiles and none outside, so the build and the
runtime's ``check_workload`` must agree exactly with what the pipeline feeds each graph. This module is that
one place; it follows ``pipeline.py``:

- text_encoder: prompts and negative prompts are encoded in one call, so the batch is 1 (the cached empty
  negative prompt) to 2 x waveforms; tokens are 1 to the tokenizer's limit (the runtime pads to the longest
  prompt of the call).
- unet: waveforms without guidance, 2 x waveforms with it (both halves of classifier-free guidance in one
  call); height = ``ModelSpec.latent_height(duration)``.
- vae_decoder: waveforms, the same height.
- vocoder: waveforms, frames = height x the VAE factor.

A server that batches ``requests`` generations into each call (step-level batching: ``Engine.start``, ``step``
and ``decode`` over several requests) multiplies every batch maximum by ``requests``: its UNet call holds the
rows of all of them. ``audioldm-trt build --requests N`` builds for that; ``serve --max-batch`` should not
exceed N (or the server caps each call at ``Backend.max_rows``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..errors import EngineError
from ..manifest import Manifest, ModelSpec

T = TypeVar("T", int, float)
Shape = tuple[int, ...]

#: The token count TensorRT tunes the text encoder for: AudioLDM prompts are a sentence or two.
OPT_TOKENS = 32


class OutOfProfileError(EngineError, ValueError):
    """A generation asks for a batch or a length that the engines were not built for."""


@dataclass(frozen=True)
class Range(Generic[T]):
    """``min <= opt <= max``: the smallest, the tuned-for and the largest value of one dimension."""

    min: T
    opt: T
    max: T

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.opt <= self.max:
            raise ValueError(f"a range needs 0 < MIN <= OPT <= MAX, got {self}")

    def __str__(self) -> str:
        return f"{self.min:g}:{self.opt:g}:{self.max:g}"

    def __contains__(self, value: object) -> bool:
        return isinstance(value, (int, float)) and self.min <= value <= self.max

    def as_list(self) -> list[T]:
        return [self.min, self.opt, self.max]

    @classmethod
    def parse(cls, text: str, kind: type[T]) -> Range[T]:
        """``MIN:OPT:MAX``, or one value for all three."""
        parts = text.split(":")
        if len(parts) not in (1, 3):
            raise ValueError(f"expected MIN:OPT:MAX or one value, got {text!r}")
        try:
            values = [kind(part) for part in parts]
        except ValueError:
            raise ValueError(f"expected {kind.__name__} values in MIN:OPT:MAX, got {text!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"expected finite values, got {text!r}")
        return cls(values[0], values[len(values) // 2], values[-1])


@dataclass(frozen=True)
class BuildRanges:
    """What an engine is declared for: waveforms per generation, seconds of audio, and how many generations
    one call may batch together."""

    batch: Range[int]
    duration: Range[float]
    requests: int = 1

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError(f"requests must be at least 1, got {self.requests}")

    @classmethod
    def default(cls, model: ModelSpec) -> BuildRanges:
        """1 to 4 waveforms; the model's shortest to twice its default length, tuned for one default-length one."""
        default = model.default_audio_length_in_s
        return cls(Range(1, 1, 4), Range(model.min_audio_length_in_s, default, 2 * default))

    def to_json(self) -> dict[str, Any]:
        return {"batch": self.batch.as_list(), "duration": self.duration.as_list(), "requests": self.requests}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildRanges:
        return cls(
            Range(*(int(v) for v in data["batch"])),
            Range(*(float(v) for v in data["duration"])),
            int(data.get("requests", 1)),
        )

    def build_flags(self) -> str:
        """The ``audioldm-trt build`` options that declare these ranges."""
        requests = f" --requests {self.requests}" if self.requests != 1 else ""
        return f"--batch {self.batch} --duration {self.duration}{requests}"

    def latent_heights(self, model: ModelSpec) -> Range[int]:
        """Latent rows; ``latent_height`` never decreases with the duration, so the ends map to the ends."""
        return Range(*(model.latent_height(d) for d in self.duration.as_list()))

    def dimensions(self, model: ModelSpec) -> dict[str, dict[str, Range[int]]]:
        """The range of every symbolic dimension of every graph (the names the export gives them)."""
        waveforms = self.batch
        most = waveforms.max * self.requests  # waveforms in one call that batches several generations
        height = self.latent_heights(model)
        tokens = model.tokenizer_max_length
        decoded = Range(waveforms.min, waveforms.opt, most)
        return {
            "text_encoder": {
                "batch": Range(1, waveforms.opt, 2 * most),
                "tokens": Range(1, min(OPT_TOKENS, tokens), tokens),
            },
            "unet": {"batch": Range(waveforms.min, 2 * waveforms.opt, 2 * most), "height": height},
            "vae_decoder": {"batch": decoded, "height": height},
            "vocoder": {
                "batch": decoded,
                "frames": Range(*(h * model.vae_scale_factor for h in height.as_list())),
            },
            # one input clip per call (``Engine.start`` encodes each audio request alone)
            "vae_encoder": {
                "batch": Range(1, 1, 1),
                "frames": Range(*(h * model.vae_scale_factor for h in height.as_list())),
            },
        }

    def input_shapes(self, manifest: Manifest) -> dict[str, dict[str, tuple[Shape, Shape, Shape]]]:
        """(min, opt, max) shape of every input of every graph: the optimisation profiles."""
        dimensions = self.dimensions(manifest.model)
        return {
            graph: {
                name: _shape_range(graph, name, spec.shape, dimensions[graph])
                for name, spec in manifest.graphs[graph].inputs.items()
            }
            for graph in manifest.graph_names
        }

    def check(self, model: ModelSpec, waveforms: int, latent_height: int, directory: Path) -> None:
        """Raise OutOfProfileError, saying what to rebuild, unless ``waveforms`` of ``latent_height`` rows fit.

        Guidance needs no check of its own: the UNet's range covers both 1x and 2x the waveform range."""
        heights = self.latent_heights(model)
        if waveforms in self.batch and latent_height in heights:
            return
        seconds = latent_height * model.vae_scale_factor * model.seconds_per_frame
        batch = Range(min(self.batch.min, waveforms), self.batch.opt, max(self.batch.max, waveforms))
        duration = Range(
            min(self.duration.min, math.floor(seconds * 100) / 100),
            self.duration.opt,
            max(self.duration.max, math.ceil(seconds * 100) / 100),
        )
        wider = BuildRanges(batch, duration, self.requests)
        raise OutOfProfileError(
            f"the TensorRT engines in {directory} were built for {self.batch.min}-{self.batch.max} waveforms of"
            f" {self.duration.min:g}-{self.duration.max:g} s ({heights.min}-{heights.max} latent rows); this"
            f" generation needs {waveforms} of {latent_height} rows ({seconds:.2f} s): rebuild with"
            f" audioldm-trt build {directory} {wider.build_flags()}"
        )


def _shape_range(
    graph: str, name: str, shape: list[int | str], dimensions: dict[str, Range[int]]
) -> tuple[Shape, Shape, Shape]:
    unknown = [d for d in shape if isinstance(d, str) and d not in dimensions]
    if unknown:
        raise ValueError(f"{graph} input {name} has a dimension {unknown[0]!r} that no engine profile defines")

    def at(end: int) -> Shape:
        return tuple(dimensions[d].as_list()[end] if isinstance(d, str) else d for d in shape)

    return at(0), at(1), at(2)
