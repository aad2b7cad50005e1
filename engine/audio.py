"""The audio front-end of audio-to-audio: an input clip to the log-mel spectrogram the VAE encoder takes, in numpy.

It computes what AudioLDM's own preprocessing computes (``audioldm.audio.tools.wav_to_fbank`` with its
``TacotronSTFT``): the waveform normalised, cut or zero-padded to the target frames, a centred magnitude STFT
with a periodic Hann window, the Slaney mel filterbank (librosa's defaults), the natural log clamped at 1e-5.
The diffusers checkpoints carry none of these parameters: the export writes them into the manifest
(``MelSpec``), from the vocoder's rate, hop and mel bins, and the original release's window and band.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import Manifest, MelSpec
from .schedulers.base import strength_start

#: The original's clamp below the mel magnitudes before the log.
LOG_FLOOR = 1e-5


def read_audio(source: str | Path | bytes, name: str = "input_audio") -> tuple[np.ndarray, int]:
    """A clip in any format libsndfile reads (WAV, FLAC, OGG, ...), from a path or the file's bytes, mixed to
    mono (float64, its own rate). ValueError naming ``name`` when it cannot be read or holds no samples."""
    import soundfile

    try:
        data, rate = soundfile.read(
            io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float64", always_2d=True
        )
    except (soundfile.LibsndfileError, RuntimeError, TypeError, OSError) as error:
        raise ValueError(f"{name}: cannot read audio ({error})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{name}: the audio holds no samples")
    if not np.isfinite(data).all():
        raise ValueError(f"{name}: the audio holds NaN or infinity")
    return data.mean(axis=1), int(rate)


def resample(waveform: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``waveform`` at ``target`` Hz, by libsoxr's very high quality resampler (no-op at the same rate)."""
    if rate == target:
        return waveform
    import soxr

    return np.asarray(soxr.resample(waveform, rate, target, quality="VHQ"), dtype=np.float64)


def normalised(waveform: np.ndarray, samples: int) -> np.ndarray:
    """The original's ``read_wav_file`` after loading: zero mean, peak 0.5, cut or zero-padded to ``samples``,
    then peak 0.5 again (a cut may have removed the peak)."""
    waveform = waveform - waveform.mean()
    waveform = waveform / (np.abs(waveform).max() + 1e-8) * 0.5
    fitted = np.zeros(samples)
    fitted[: min(samples, len(waveform))] = waveform[:samples]
    peak = np.abs(fitted).max()
    return fitted / peak * 0.5 if peak > 0 else fitted


def mel_filterbank(spec: MelSpec) -> np.ndarray:
    """librosa's ``filters.mel`` (Slaney mel scale, Slaney area normalisation), (n_mels, filter_length // 2 + 1),
    float32 as librosa returns it and the original uses it."""
    bins = spec.filter_length // 2 + 1
    fft_freqs = np.linspace(0, spec.sampling_rate / 2, bins)
    mel_freqs = _mel_to_hz(np.linspace(_hz_to_mel(spec.fmin), _hz_to_mel(spec.fmax), spec.n_mels + 2))
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, np.newaxis] - fft_freqs[np.newaxis, :]
    lower = -ramps[:-2] / widths[:-1, np.newaxis]
    upper = ramps[2:] / widths[1:, np.newaxis]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, np.newaxis]
    return weights.astype(np.float32)


def _hz_to_mel(hz: float | np.ndarray) -> np.ndarray:
    """Slaney's scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


def log_mel(waveform: np.ndarray, spec: MelSpec, frames: int) -> np.ndarray:
    """The (frames, n_mels) float32 log-mel spectrogram of a waveform at ``spec.sampling_rate``, as the original's
    ``wav_to_fbank(..., target_length=frames)``: normalised to ``frames * hop`` samples, centred frames (reflect
    padding), magnitudes of the windowed DFT, mel, ``log(max(x, 1e-5))``, the frames cut to ``frames``."""
    signal = normalised(waveform, frames * spec.hop_length)
    half = spec.filter_length // 2
    padded = np.pad(signal, half, mode="reflect")
    count = 1 + (len(padded) - spec.filter_length) // spec.hop_length
    starts = np.arange(count)[:, np.newaxis] * spec.hop_length
    segments = padded[starts + np.arange(spec.filter_length)[np.newaxis, :]]
    magnitudes = np.abs(np.fft.rfft(segments * _window(spec), axis=1))
    mel = magnitudes @ mel_filterbank(spec).T.astype(np.float64)
    return np.asarray(np.log(np.maximum(mel, LOG_FLOOR))[:frames], dtype=np.float32)


def _window(spec: MelSpec) -> np.ndarray:
    """A periodic Hann window of ``win_length``, centred in ``filter_length`` (librosa's ``pad_center``)."""
    n = np.arange(spec.win_length)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / spec.win_length)
    left = (spec.filter_length - spec.win_length) // 2
    return np.pad(window, (left, spec.filter_length - spec.win_length - left))


@dataclass(frozen=True, eq=False)
class AudioInput:
    """What an audio-to-audio request starts from, checked: the encoder's input, where the run starts, and
    which latents it regenerates. The loop (``Denoising``) draws the posterior sample and the noise."""

    #: (1, 1, frames, mel bins) float32: the log-mel spectrogram of the input, fitted to the output's frames.
    mel: np.ndarray
    #: The index in the scheduler's timesteps the run starts at (diffusers' img2img start for the strength).
    begin_index: int
    strength: float
    #: (1, 1, height, width) float32, 1 where the run regenerates the latents and 0 where it keeps the input's
    #: (noised to each step); None for style transfer, which regenerates everything.
    mask: np.ndarray | None
    #: "sample" (diffusers' ``latent_dist.sample(generator)``) or "mean" of the VAE posterior.
    posterior: str
    #: The VAE's scaling factor, which the posterior's latents are multiplied by.
    scaling_factor: float
    #: Seconds of the input clip, at the model's rate.
    input_seconds: float

    @classmethod
    def create(
        cls,
        manifest: Manifest,
        source: str | Path | bytes,
        num_inference_steps: int,
        order: int,
        audio_length_in_s: float | None,
        strength: float | None = None,
        inpaint: tuple[float, float] | None = None,
        super_resolution: float | None = None,
        extend: float | None = None,
        posterior: str = "sample",
    ) -> tuple[AudioInput, float]:
        """The checked input of one mode and the output's length in seconds: the input's (plus ``extend``)
        unless ``audio_length_in_s`` is given, which cuts the input or pads it with silence. ValueError naming
        the argument for anything wrong, before any graph runs."""
        mel_spec = manifest.mel
        if mel_spec is None or "vae_encoder" not in manifest.graphs:
            raise ValueError(
                "this export has no VAE encoder, which audio input needs: export the model again with"
                " `audioldm-trt export` (this version adds it)"
            )
        modes = [
            name
            for name, value in (("inpaint", inpaint), ("super_resolution", super_resolution), ("extend", extend))
            if value is not None
        ]
        if len(modes) > 1:
            raise ValueError(f"pass at most one of inpaint, super_resolution and extend, got {', '.join(modes)}")
        if posterior not in ("sample", "mean"):
            raise ValueError(f"posterior must be 'sample' or 'mean', got {posterior!r}")
        default_strength = 0.5 if not modes else 1.0
        strength = default_strength if strength is None else _finite(strength, "strength")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        begin = strength_start(num_inference_steps, strength, order)
        if begin >= num_inference_steps * order:
            raise ValueError(f"strength {strength} at {num_inference_steps} steps leaves no step to run: raise either")
        waveform, rate = read_audio(source)
        seconds = len(waveform) / rate
        if seconds > MAX_INPUT_SECONDS:
            raise ValueError(f"input_audio: {seconds:.1f} s is longer than the {MAX_INPUT_SECONDS:.0f} s allowed")
        model = manifest.model
        if extend is not None:
            extend = _finite(extend, "extend")
            if extend <= 0:
                raise ValueError(f"extend must be a positive number of seconds, got {extend}")
        length = seconds + (extend or 0.0) if audio_length_in_s is None else audio_length_in_s
        if length < model.min_audio_length_in_s:
            raise ValueError(
                f"audio_length_in_s must be at least {model.min_audio_length_in_s} s for this model, got {length}"
            )
        height = model.latent_height(length)
        frames = height * model.vae_scale_factor
        mel = log_mel(resample(waveform, rate, mel_spec.sampling_rate), mel_spec, frames)
        rows_per_second = 1 / (model.seconds_per_frame * model.vae_scale_factor)
        mask = None
        if inpaint is not None:
            start, end = _span(inpaint, min(seconds, length))
            mask = np.zeros((1, 1, height, model.latent_width), np.float32)
            mask[:, :, math.floor(start * rows_per_second) : math.ceil(end * rows_per_second)] = 1.0
        elif extend is not None:
            if seconds >= length:
                raise ValueError(f"extend: the output ({length} s) must be longer than the input ({seconds:.2f} s)")
            mask = np.zeros((1, 1, height, model.latent_width), np.float32)
            mask[:, :, math.floor(seconds * rows_per_second) :] = 1.0
        elif super_resolution is not None:
            mask = _band_mask(_finite(super_resolution, "super_resolution"), mel_spec, model.vae_scale_factor, height)
        audio = cls(mel[np.newaxis, np.newaxis], begin, strength, mask, posterior, model.vae_scaling_factor, seconds)
        return audio, length


#: The longest input clip a request takes (seconds): six times AudioLDM's 10.24 s training segments.
MAX_INPUT_SECONDS = 60.0


def _finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _span(span: tuple[float, float], seconds: float) -> tuple[float, float]:
    """An inpainting span (start, end) in seconds, inside the clip."""
    if not isinstance(span, (tuple, list)) or len(span) != 2:
        raise ValueError(f"inpaint must be (start, end) in seconds, got {span!r}")
    start, end = (_finite(value, "inpaint") for value in span)
    if not 0 <= start < end <= seconds:
        raise ValueError(f"inpaint: the span {start}-{end} s is not inside the clip (0-{seconds:.2f} s)")
    return start, end


def _band_mask(cutoff: float, spec: MelSpec, factor: int, height: int) -> np.ndarray:
    """Super-resolution's mask: the latent columns (groups of ``factor`` mel bins) whose highest mel band
    centre is above ``cutoff`` Hz are regenerated, those entirely below are kept."""
    if not 0 < cutoff < spec.fmax:
        raise ValueError(f"super_resolution: the cutoff must be between 0 and {spec.fmax:.0f} Hz, got {cutoff}")
    centres = _mel_to_hz(np.linspace(_hz_to_mel(spec.fmin), _hz_to_mel(spec.fmax), spec.n_mels + 2))[1:-1]
    regenerated = centres.reshape(-1, factor).max(axis=1) > cutoff
    mask = np.zeros((1, 1, height, len(regenerated)), np.float32)
    mask[..., regenerated] = 1.0
    return mask
