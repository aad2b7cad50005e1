"""The HTTP API's bodies and the checks of them that need no engine.

Defaults are those of ``audioldm-trt generate``. Field types and ranges, ``--max-steps``, ``--max-duration``,
``--max-batch`` (waveforms) and the prompt's length in characters are checked here, in the ingress; the checks
that need the engine (scheduler configs, the engines' profiles and memory, the prompt's length in tokens) are
``Engine.request``'s and the replica's, before the request is queued.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from audioldm_trt.engine.schedulers import SCHEDULERS

#: A prompt longer than this many characters is refused before it is tokenized: the tokenizer's limit (512
#: tokens for AudioLDM) is exceeded long before, and the tokenizer's work stays bounded.
MAX_PROMPT_CHARACTERS = 2000
#: The largest input clip (``input_audio``) the server takes, as a file: a minute of 16-bit stereo 48 kHz WAV
#: (11 MB). The engine takes at most ``MAX_INPUT_SECONDS`` (60 s) of audio, whatever the file's size.
MAX_INPUT_AUDIO_BYTES = 12 * 1024 * 1024
#: Request bodies larger than this are refused unread: a text-to-audio body is a few hundred bytes, one with an
#: input clip that clip's file in base64 (4/3 of its size) more.
MAX_BODY_BYTES = 16 * 1024 + (MAX_INPUT_AUDIO_BYTES + 2) // 3 * 4
#: The 503 of a request whose engine replica stopped under it (its process died, or its engine call hung and the
#: replica gave up on it).
REPLICA_LOST_MESSAGE = "the engine replica serving this request stopped; retry"
AUDIO_MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}
#: ``Engine.request``'s arguments and the body fields they come from (the names of ``audioldm-trt generate``).
ENGINE_ARGUMENT_FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "audio_length_in_s": "duration",
    "num_inference_steps": "steps",
    "guidance_scale": "guidance",
    "num_waveforms_per_prompt": "waveforms",
    "eta": "eta",
    "seed": "seed",
    "scheduler": "scheduler",
    "strength": "strength",
    "inpaint": "inpaint",
    "super_resolution": "super_resolution",
    "extend": "extend",
}


@dataclass(frozen=True)
class Limits:
    """What the server accepts beyond the model's own limits (``serve``'s options)."""

    max_steps: int = 200
    max_duration: float | None = None
    max_waveforms: int = 4


#: The largest guidance scale the server takes, either sign: AudioLDM is run at 1 to 10; far beyond, the
#: latents leave float32's range and the request could only fail.
MAX_GUIDANCE = 100.0


class GenerateBody(BaseModel):
    """``POST /v1/generate``: the arguments of ``audioldm-trt generate``, for one prompt. Strictly typed: a
    number is not taken as a string, a boolean not as an integer, an integer only where a number is."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARACTERS, description="what the audio should be")
    negative_prompt: str | None = Field(
        default=None, max_length=MAX_PROMPT_CHARACTERS, description="what the audio should not contain"
    )
    duration: float | None = Field(default=None, gt=0, description="seconds of audio (default: the model's)")
    steps: int = Field(default=10, ge=1, description="denoising steps")
    guidance: float = Field(
        default=2.5,
        ge=-MAX_GUIDANCE,
        le=MAX_GUIDANCE,
        description=f"classifier-free guidance scale, within ±{MAX_GUIDANCE:g}; <= 1 disables it",
    )
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64, description="seed (default: drawn and returned)")
    eta: float = Field(default=0.0, ge=0, le=1, description="DDIM's eta, in [0, 1]")
    scheduler: str | None = Field(
        default=None, description="diffusers scheduler class name (default: the checkpoint's)"
    )
    waveforms: int = Field(default=1, ge=1, description="waveforms to generate")
    format: Literal["wav", "flac"] = Field(default="wav", description="audio file format (16-bit PCM)")
    stream: bool = Field(
        default=False,
        description="answer text/event-stream: progress events, audio events as the vocoder makes them, the result",
    )
    input_audio: str | None = Field(
        default=None,
        max_length=(MAX_INPUT_AUDIO_BYTES + 2) // 3 * 4,
        description="base64 of a WAV or FLAC file (at most 60 s and 12 MiB): the input of audio-to-audio",
    )
    strength: float | None = Field(
        default=None, gt=0, le=1, description="style transfer: how much of the input is regenerated (default 0.5)"
    )
    inpaint: tuple[float, float] | None = Field(
        default=None, description="[start, end] seconds of the input to regenerate; the rest is kept"
    )
    super_resolution: float | None = Field(
        default=None, gt=0, description="regenerate the bands above this frequency (Hz), keep those below"
    )
    extend: float | None = Field(default=None, gt=0, description="continue the input by this many seconds")

    @field_validator("input_audio")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except ValueError:
                raise ValueError("must be a file in base64") from None
        return value

    @field_validator("duration", "guidance", "eta", "strength", "super_resolution", "extend")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be finite")
        return value

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or only whitespace")
        return value

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is not None and value not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {value!r}; choose one of {', '.join(sorted(SCHEDULERS))}")
        return value

    def check(self, limits: Limits) -> None:
        """Raise ValueError naming the field that the server's limits refuse."""
        if self.steps > limits.max_steps:
            raise ValueError(f"steps: {self.steps} is above this server's limit of {limits.max_steps}")
        if limits.max_duration is not None and self.duration is not None and self.duration > limits.max_duration:
            raise ValueError(f"duration: {self.duration:g} s is above this server's limit of {limits.max_duration:g} s")
        if self.waveforms > limits.max_waveforms:
            raise ValueError(f"waveforms: {self.waveforms} is above this server's limit of {limits.max_waveforms}")

    def engine_arguments(self) -> dict[str, Any]:
        """The ``Engine.request`` arguments of this body."""
        arguments = {argument: getattr(self, name) for argument, name in ENGINE_ARGUMENT_FIELDS.items()}
        if self.input_audio is not None:
            arguments["audio"] = base64.b64decode(self.input_audio)
        return arguments


def validation_message(error: ValidationError) -> str:
    """pydantic's first complaint as one line: ``field: problem``."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{field}: {message}"


class Timings(BaseModel):
    queue: float = Field(description="seconds from admission to the first UNet call")
    unet: float
    vae_decoder: float
    vocoder: float
    total: float = Field(description="seconds from the request's arrival to its answer")


class GenerateResult(BaseModel):
    seed: int
    sampling_rate: int
    audio: list[str] = Field(description="base64 of one WAV or FLAC file (16-bit PCM) per waveform")
    timings: Timings


class ServerLimits(BaseModel):
    max_steps: int
    max_duration: float | None = Field(description="seconds; null: what the engines take")
    max_waveforms: int


class ServerInfo(BaseModel):
    """``GET /v1/info``: what a client's form offers (the playground's)."""

    schedulers: list[str] = Field(description="the scheduler names `scheduler` takes")
    limits: ServerLimits
    defaults: dict[str, Any] = Field(description="the defaults of the body's fields that have one")

    @classmethod
    def of(cls, limits: Limits) -> ServerInfo:
        defaults = {name: field.default for name, field in GenerateBody.model_fields.items() if not field.is_required()}
        return cls(
            schedulers=sorted(SCHEDULERS),
            limits=ServerLimits(
                max_steps=limits.max_steps, max_duration=limits.max_duration, max_waveforms=limits.max_waveforms
            ),
            defaults=defaults,
        )


class ErrorBody(BaseModel):
    error: str = Field(description="one line naming the field and the problem")


def encode_audio(audio: np.ndarray, sampling_rate: int, audio_format: str) -> list[bytes]:
    """One 16-bit PCM WAV or FLAC file per waveform, as ``audioldm-trt generate`` writes them."""
    import soundfile

    files = []
    for waveform in audio:
        buffer = io.BytesIO()
        soundfile.write(buffer, waveform, sampling_rate, format=audio_format.upper(), subtype="PCM_16")
        files.append(buffer.getvalue())
    return files


def encode_pcm16(audio: np.ndarray) -> list[str]:
    """base64 of each waveform's little-endian 16-bit samples, converted as ``encode_audio``'s files are (the
    same libsndfile conversion), so that streamed chunks joined are the samples of the final file."""
    import soundfile

    chunks = []
    for waveform in audio:
        buffer = io.BytesIO()
        soundfile.write(buffer, waveform, 1, format="RAW", subtype="PCM_16", endian="LITTLE")
        chunks.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return chunks


def base64_files(files: list[bytes]) -> list[str]:
    return [base64.b64encode(data).decode("ascii") for data in files]


def http_field_names(message: str) -> str:
    """An engine error in the HTTP API's words: its argument names become the body's field names."""
    for argument, name in ENGINE_ARGUMENT_FIELDS.items():
        message = message.replace(argument, name)
    return message
