"""A finished generation's audio, made one window of its spectrogram at a time: what lets a server interleave
other requests' UNet calls with a long clip's vocoder, and send audio before the whole clip is made.

HiFi-GAN is convolutional: a sample depends on the mel frames within its receptive field
(``ModelSpec.vocoder_context_frames`` on each side) and nothing else. Each vocoder call reads a window of the
spectrogram, the span it makes plus that context on both sides (shifted inward at the clip's ends), and keeps
the span's samples, so the joined chunks are the samples of one call on the whole spectrogram. All windows of
a clip have one length: a span's samples are then computed by the same kernels in the same order whatever
the window's position (ONNX Runtime's CPU kernels block their sums by the input's length), which keeps the
joined audio bit-identical, and calls with windows of the same length can take several requests.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .denoising import Denoising
from .manifest import ModelSpec


@dataclass(frozen=True)
class Generation:
    """What one call produced: the audio, the seed that reproduces it, and where the time went."""

    #: float32, shape (len(prompts) * num_waveforms_per_prompt, samples)
    audio: np.ndarray
    #: The generator seed used: the one given, or the one drawn when none was given.
    seed: int
    #: Seconds spent per stage: text_encoder, unet, scheduler (host work of the loop), vae_decoder, vocoder, total.
    timings: dict[str, float] = field(default_factory=dict)
    #: UNet calls made (second-order schedulers make two per step).
    unet_calls: int = 0


@dataclass(frozen=True)
class AudioChunk:
    """Consecutive samples of every waveform of a request; the chunks of a request, joined in offset order,
    are its audio."""

    #: Index of the first sample in the waveform.
    offset: int
    #: float32, shape (waveforms, samples).
    audio: np.ndarray


def chunk_frames(model: ModelSpec, chunk_seconds: float | None) -> int | None:
    """Mel frames per vocoder window's span for ``chunk_seconds`` of audio (None: the whole clip in one call);
    ValueError below twice the context, where a window would be mostly overlap."""
    if chunk_seconds is None:
        return None
    if isinstance(chunk_seconds, bool) or not isinstance(chunk_seconds, (int, float)) or not chunk_seconds > 0:
        raise ValueError(f"chunk_seconds must be a positive number of seconds, got {chunk_seconds!r}")
    frames = round(chunk_seconds / model.seconds_per_frame)
    least = 2 * model.vocoder_context_frames
    if frames < least:
        shortest = least * model.seconds_per_frame
        raise ValueError(
            f"chunk_seconds must be at least {shortest:g} s for this model (twice the vocoder's context), got "
            f"{chunk_seconds:g}"
        )
    return frames


def vocoder_windows(
    model: ModelSpec, frames: int, length: int, span_frames: int | None
) -> tuple[list[tuple[int, int]], int]:
    """The spans (first frame, end frame) that a spectrogram of ``frames`` is vocoded in, for a waveform of
    ``length`` samples, and the frames of every window: spans of about ``span_frames``, one call on the whole
    spectrogram where a window would take it all (or ``span_frames`` is None)."""
    # Only the frames that reach the trimmed waveform are vocoded (the latent height is rounded up).
    needed = min(frames, math.ceil(length / model.hop_length))
    count = 1 if span_frames is None else max(1, round(needed / span_frames))
    span = math.ceil(needed / count)
    window = min(frames, span + 2 * model.vocoder_context_frames)
    if window == frames:
        span = needed
    return [(start, min(needed, start + span)) for start in range(0, needed, span)], window


class Vocoding:
    """The vocoder's progress through one request's spectrogram: ``window`` is the next call's input frames,
    ``take`` keeps that call's span of samples as the next chunk."""

    def __init__(self, state: Denoising, mel: np.ndarray, model: ModelSpec, span_frames: int | None) -> None:
        self.state = state
        #: (waveforms, frames, mel bins): the VAE decoder's output, the vocoder's input.
        self.mel = mel
        self._hop = model.hop_length
        self.length = model.waveform_length(state.request.audio_length_in_s)
        self.spans, self.window_frames = vocoder_windows(model, mel.shape[1], self.length, span_frames)
        self.chunks: list[AudioChunk] = []
        self._context = model.vocoder_context_frames

    @property
    def done(self) -> bool:
        return len(self.chunks) == len(self.spans)

    @property
    def remaining_windows(self) -> int:
        return len(self.spans) - len(self.chunks)

    def window(self) -> tuple[int, int]:
        """The input frames of the next vocoder call: the next span and its context, within the clip."""
        start, _ = self.spans[len(self.chunks)]
        first = min(max(0, start - self._context), self.mel.shape[1] - self.window_frames)
        return first, first + self.window_frames

    def take(self, waveform: np.ndarray, seconds: float) -> AudioChunk:
        """The next chunk from the vocoder's output on ``window()``: the span's samples, trimmed to the length."""
        start, end = self.spans[len(self.chunks)]
        first, last = self.window()
        # The last frame's samples run to the output's end (a transposed convolution may add a sample or two).
        stop = None if end == last == self.mel.shape[1] else (end - first) * self._hop
        offset = start * self._hop
        samples = waveform[:, (start - first) * self._hop : stop][:, : max(0, self.length - offset)]
        chunk = AudioChunk(offset, np.ascontiguousarray(samples, dtype=np.float32))
        self.chunks.append(chunk)
        self.state.timings["vocoder"] += seconds
        return chunk

    def generation(self) -> Generation:
        """The request's result once every chunk is made: the chunks joined, its seed and timings."""
        state = self.state
        audio = np.concatenate([chunk.audio for chunk in self.chunks], axis=1)
        timings = dict(state.timings)
        timings["total"] = time.perf_counter() - state.started
        return Generation(audio=audio, seed=state.request.seed, timings=timings, unet_calls=state.calls_done)
