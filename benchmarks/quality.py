"""How far reduced-precision audio is from the fp32 audio of the same latents: three measures, numpy only.

- Relative max difference: max|audio - reference| / max|reference|, the project's parity measure.
- SNR: 10 log10(sum reference**2 / sum (audio - reference)**2), in dB, over every sample of the batch.
- Log-mel spectral distance: the RMS, over every frame and mel band of the batch, of the difference of the two
  log-mel power spectra in dB (10 log10 of the mel power). The spectra: a Hann-windowed STFT of 64 ms windows
  (1024 samples at 16 kHz, rounded up to a power of two) every 10 ms, frames centred (zero-padded at the
  ends), power |X|**2 summed into 64 triangular mel bands (HTK mel scale, 0 Hz to Nyquist, unnormalised).
  Both spectra are floored at 80 dB below the reference's loudest mel bin, so that silence does not dominate.
  It weighs errors as hearing does — by band and loudness — where the sample-wise measures weigh only the
  loudest samples; 0 dB is identical, and fractions of a dB are inaudible in practice.
"""

from __future__ import annotations

import numpy as np

from ..export.onnx import relative_max_difference

WINDOW_S = 0.064
HOP_S = 0.010
MEL_BANDS = 64
FLOOR_DB = 80.0


def audio_distance(audio: np.ndarray, reference: np.ndarray, sampling_rate: int) -> dict[str, float]:
    """The three measures of ``audio`` (batch, samples) against ``reference`` of the same shape."""
    audio, reference = np.asarray(audio, np.float64), np.asarray(reference, np.float64)
    return {
        "relative_max_difference": relative_max_difference(audio, reference),
        "snr_db": snr_db(audio, reference),
        "log_mel_distance_db": log_mel_distance_db(audio, reference, sampling_rate),
    }


def snr_db(audio: np.ndarray, reference: np.ndarray) -> float:
    noise = float(np.sum((audio - reference) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(reference**2) / noise))


def log_mel_distance_db(audio: np.ndarray, reference: np.ndarray, sampling_rate: int) -> float:
    ours, theirs = log_mel_db(audio, sampling_rate), log_mel_db(reference, sampling_rate)
    floor = theirs.max() - FLOOR_DB
    return float(np.sqrt(np.mean((np.maximum(ours, floor) - np.maximum(theirs, floor)) ** 2)))


def log_mel_db(audio: np.ndarray, sampling_rate: int) -> np.ndarray:
    """10 log10 of the mel power spectrum, (batch, frames, MEL_BANDS)."""
    size = 1 << int(np.ceil(np.log2(WINDOW_S * sampling_rate)))
    hop = round(HOP_S * sampling_rate)
    padded = np.pad(np.atleast_2d(audio), ((0, 0), (size // 2, size // 2)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, size, axis=-1)[:, ::hop]
    window = np.hanning(size + 1)[:-1]  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    mel = power @ mel_filters(sampling_rate, size).T
    return 10 * np.log10(np.maximum(mel, np.finfo(np.float64).tiny))


def mel_filters(sampling_rate: int, size: int) -> np.ndarray:
    """(MEL_BANDS, size // 2 + 1) triangular filters, equally spaced on the HTK mel scale up to Nyquist."""
    edges_mel = np.linspace(0.0, _mel(sampling_rate / 2), MEL_BANDS + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1)
    frequencies = np.fft.rfftfreq(size, 1 / sampling_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (frequencies - lower) / (centre - lower)
    falling = (upper - frequencies) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def _mel(hertz: float) -> float:
    return float(2595.0 * np.log10(1 + hertz / 700.0))
