"""The audio front-end of audio-to-audio: an input clip to the log-mel spectrogram the VAE encoder takes, in numpy.

It computes what AudioLDM's own preprocessing computes (``audioldm.audio.tools.wav_to_fbank`` with its
``TacotronSTFT``): the waveform normalised, cut or zero-padded to the target frames, a centred magnitude STFT
with a periodic Hann window, the Slaney mel filterbank (librosa's defaults), the natural log clamped at 1e-5.
The diffusers checkpoints carry none of these parameters: the export writes them into the manifest
(``MelSpec``), from the vocoder's rate, hop and mel bins, and the original release's window and band.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .manifest import MelSpec

#: The original's clamp below the mel magnitudes before the log.
LOG_FLOOR = 1e-5
#: The longest input clip a request takes (seconds): six times AudioLDM's 10.24 s training segments.
MAX_INPUT_SECONDS = 60.0


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
    mel_freqs = _mel_frequencies(spec)
    widths = np.diff(mel_freqs)
    ramps = mel_freqs[:, np.newaxis] - fft_freqs[np.newaxis, :]
    lower = -ramps[:-2] / widths[:-1, np.newaxis]
    upper = ramps[2:] / widths[1:, np.newaxis]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_freqs[2:] - mel_freqs[:-2]))[:, np.newaxis]
    return weights.astype(np.float32)


def _mel_frequencies(spec: MelSpec) -> np.ndarray:
    """The edges of the mel bands in Hz: ``n_mels + 2`` points evenly spaced on the mel scale, each band's
    triangle spanning three of them (its centre the middle one)."""
    return _mel_to_hz(np.linspace(_hz_to_mel(spec.fmin), _hz_to_mel(spec.fmax), spec.n_mels + 2))


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


def band_mask(cutoff: float, spec: MelSpec, factor: int, height: int) -> np.ndarray:
    """Super-resolution's mask: the latent columns (groups of ``factor`` mel bins) whose highest mel band
    centre is above ``cutoff`` Hz are regenerated, those entirely below are kept."""
    centres = _mel_frequencies(spec)[1:-1]
    regenerated = centres.reshape(-1, factor).max(axis=1) > cutoff
    mask = np.zeros((1, 1, height, len(regenerated)), np.float32)
    mask[..., regenerated] = 1.0
    return mask
