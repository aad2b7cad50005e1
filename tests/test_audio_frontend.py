"""The numpy mel front-end against AudioLDM's own preprocessing, re-implemented in torch as the oracle.

The ``audioldm`` package (0.1.1) pins old torch and torchaudio and does not install beside this project's
torch, so ``_original_fbank`` is its ``read_wav_file`` + ``wav_to_fbank`` + ``TacotronSTFT.mel_spectrogram``
formula for formula: float32 ``conv1d`` with the windowed Fourier basis (not an FFT), librosa's mel filterbank,
``log(clamp(x, 1e-5))``, ``_pad_spec``. Inputs at other rates go through the same resampler on both sides.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from audioldm_trt.engine.audio import MelSpec, log_mel, mel_filterbank, read_audio, resample

TOLERANCE = 1e-5
S_FULL = MelSpec.audioldm(16000, 160, 64)


def _original_fbank(waveform: np.ndarray, spec: MelSpec, target_length: int) -> np.ndarray:
    import librosa
    import scipy.signal

    # read_wav_file: normalize_wav, pad_wav, renormalise
    waveform = waveform - np.mean(waveform)
    waveform = waveform / (np.max(np.abs(waveform)) + 1e-8) * 0.5
    segment = target_length * spec.hop_length
    if len(waveform) > segment:
        waveform = waveform[:segment]
    elif len(waveform) < segment:
        padded = np.zeros(segment)
        padded[: len(waveform)] = waveform
        waveform = padded
    waveform = 0.5 * (waveform / np.max(np.abs(waveform)))
    audio = torch.clip(torch.FloatTensor(waveform).unsqueeze(0), -1, 1)
    # STFT.transform
    n = spec.filter_length
    cutoff = n // 2 + 1
    fourier = np.fft.fft(np.eye(n))
    basis = np.vstack([np.real(fourier[:cutoff]), np.imag(fourier[:cutoff])])
    window = librosa.util.pad_center(scipy.signal.get_window("hann", spec.win_length, fftbins=True), size=n)
    forward_basis = torch.FloatTensor(basis[:, None, :] * window)
    data = torch.nn.functional.pad(audio.view(1, 1, -1).unsqueeze(1), (n // 2, n // 2, 0, 0), mode="reflect")
    transform = torch.nn.functional.conv1d(data.squeeze(1), forward_basis, stride=spec.hop_length, padding=0)
    magnitudes = torch.sqrt(transform[:, :cutoff] ** 2 + transform[:, cutoff:] ** 2)
    mel_basis = torch.from_numpy(
        librosa.filters.mel(sr=spec.sampling_rate, n_fft=n, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax)
    ).float()
    mel = torch.log(torch.clamp(torch.matmul(mel_basis, magnitudes), min=1e-5))[0].T
    pad = target_length - mel.shape[0]
    mel = torch.nn.functional.pad(mel, (0, 0, 0, pad)) if pad > 0 else mel[:target_length]
    return mel.numpy()


def _signal(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Speech-like test audio: a gliding harmonic tone in noise, with a loud transient, off-centre."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = sum(np.sin(2 * np.pi * (220 * k + 60 * t) * t) / k for k in range(1, 6))
    signal = 0.3 * tone + 0.05 * rng.standard_normal(len(t)) + 0.1
    signal[len(t) // 3 : len(t) // 3 + 40] += 1.5
    return signal


def _relative(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape, f"{actual.shape} != {expected.shape}"
    return float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize(
    ("spec", "seconds", "frames"),
    [
        (S_FULL, 5.0, 500),  # as long as the target
        (S_FULL, 2.37, 256),  # shorter: zero-padded
        (S_FULL, 10.24, 1024),  # AudioLDM's own segment
        (S_FULL, 7.3, 400),  # longer: cut, after the normalisation over the whole clip
        (MelSpec.audioldm(16000, 160, 16), 1.3, 132),  # the tiny preset
        (MelSpec.audioldm(8000, 64, 32), 0.9, 120),  # the tiny-deep preset
    ],
)
def test_log_mel_matches_the_original(spec: MelSpec, seconds: float, frames: int) -> None:
    waveform = _signal(seconds, spec.sampling_rate, seed=frames)
    ours = log_mel(waveform, spec, frames)
    expected = _original_fbank(waveform, spec, frames)
    assert ours.dtype == np.float32 and ours.shape == (frames, spec.n_mels)
    assert _relative(ours, expected) < TOLERANCE
    # sensitive: another clip moves it far more than the tolerance
    assert _relative(log_mel(_signal(seconds, spec.sampling_rate, seed=1) * 0.9, spec, frames), expected) > 1e-2


@pytest.mark.parametrize("spec", [S_FULL, MelSpec.audioldm(8000, 64, 32), MelSpec.audioldm(16000, 160, 16)])
def test_mel_filterbank_is_librosas(spec: MelSpec) -> None:
    import librosa

    expected = librosa.filters.mel(
        sr=spec.sampling_rate, n_fft=spec.filter_length, n_mels=spec.n_mels, fmin=spec.fmin, fmax=spec.fmax
    )
    np.testing.assert_allclose(mel_filterbank(spec), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    ("rate", "channels", "subtype", "fmt"),
    [(44100, 2, "PCM_16", "WAV"), (22050, 1, "PCM_24", "FLAC"), (16000, 2, "FLOAT", "WAV")],
)
def test_files_of_other_rates_and_channels(tmp_path: Path, rate: int, channels: int, subtype: str, fmt: str) -> None:
    """Read, mixed to mono, resampled (the same resampler on both sides): the oracle's mel of the result."""
    stereo = np.stack([_signal(1.7, rate, seed=c) * 0.5 for c in range(channels)], axis=1)
    path = tmp_path / f"clip.{fmt.lower()}"
    soundfile.write(path, stereo, rate, subtype=subtype, format=fmt)
    waveform, read_rate = read_audio(path)
    assert read_rate == rate
    stored = soundfile.read(path, dtype="float64", always_2d=True)[0]
    np.testing.assert_array_equal(waveform, stored.mean(axis=1))
    at_16k = resample(waveform, rate, 16000)
    assert abs(len(at_16k) - round(len(waveform) * 16000 / rate)) <= 1
    assert _relative(log_mel(at_16k, S_FULL, 180), _original_fbank(at_16k, S_FULL, 180)) < TOLERANCE
    # the bytes of the file read the same as the file
    np.testing.assert_array_equal(read_audio(path.read_bytes())[0], waveform)


def test_resampling_keeps_a_tone() -> None:
    """soxr moves a 1 kHz tone from 44.1 kHz to 16 kHz without changing it (beyond its filter's ripple)."""
    t = np.arange(44100) / 44100
    at_16k = resample(np.sin(2 * np.pi * 1000 * t), 44100, 16000)
    expected = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    assert np.abs(at_16k[200:-200] - expected[200:-200]).max() < 1e-3


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"not audio at all", "cannot read"), (b"", "cannot read")],
)
def test_unreadable_input_is_a_value_error(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_audio(data)


def test_empty_input_is_a_value_error() -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros((0, 1)), 16000, format="WAV")
    with pytest.raises(ValueError, match="no samples"):
        read_audio(buffer.getvalue())
