"""The VAE encoder graph: exported beside the others, checked against PyTorch at export (a trace that baked a
length fails it), equal to diffusers' posterior on real front-end input, and run by the other backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import soundfile
import torch

from audioldm_trt.engine import Engine
from audioldm_trt.engine.audio import log_mel
from audioldm_trt.engine.manifest import Manifest
from audioldm_trt.export.onnx import ExportError, _VAEEncoder, export_vae_encoder

from conftest import AUDIO_TOLERANCE, ModelUnderTest, relative_difference


def _mel(model: ModelUnderTest, seconds: float) -> np.ndarray:
    manifest = Manifest.load(model.export)
    assert manifest.mel is not None
    rate = manifest.mel.sampling_rate
    t = np.arange(int(seconds * rate)) / rate
    frames = manifest.model.latent_height(seconds) * manifest.model.vae_scale_factor
    waveform = np.sin(2 * np.pi * 250 * t) + 0.1 * np.random.default_rng(0).standard_normal(len(t))
    return log_mel(waveform, manifest.mel, frames)[np.newaxis, np.newaxis]


def test_the_graph_is_diffusers_posterior(model: ModelUnderTest) -> None:
    """ONNX Runtime's posterior (mean, std) of a front-end mel equals ``vae.encode(mel).latent_dist``'s."""
    manifest = Manifest.load(model.export)
    session = onnxruntime.InferenceSession(str(model.export / manifest.graphs["vae_encoder"].onnxruntime_file))
    for seconds in (0.5, 1.37):
        mel = _mel(model, seconds)
        (posterior,) = session.run(None, {"mel": mel})
        with torch.no_grad():
            expected = model.pipeline.vae.encode(torch.from_numpy(mel)).latent_dist
        channels = manifest.model.latent_channels
        assert posterior.shape == (1, 2 * channels, mel.shape[2] // manifest.model.vae_scale_factor, 8)
        assert relative_difference(posterior[:, :channels], expected.mean.numpy()) < 1e-5
        assert relative_difference(posterior[:, channels:], expected.std.numpy()) < 1e-5


def test_a_trace_that_baked_the_length_fails_the_export(
    tiny: ModelUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = _VAEEncoder.forward

    def baked(self: _VAEEncoder, mel: torch.Tensor) -> torch.Tensor:
        return original(self, mel) * (int(mel.shape[2]) / 26)  # a Python int: a constant in the trace

    monkeypatch.setattr(_VAEEncoder, "forward", baked)
    vae = tiny.pipeline.vae
    with pytest.raises(
        ExportError, match=r"^vae_encoder: the ONNX graph differs from PyTorch at input shape 2x1x40x16"
    ):
        export_vae_encoder(vae, tmp_path / "vae_encoder.onnx", 16, 2)
    monkeypatch.setattr(_VAEEncoder, "forward", original)
    io = export_vae_encoder(vae, tmp_path / "vae_encoder.onnx", 16, 2)
    assert io.inputs == {"mel": ("float32", ["batch", 1, "frames", 16])}
    assert io.outputs == {"posterior": ("float32", ["batch", 8, "height", 8])}


def test_openvino_runs_audio_to_audio(tiny: ModelUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder loads on the first audio request on any backend: OpenVINO's style transfer is ONNX Runtime's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    clip = tmp_path / "clip.wav"
    t = np.arange(16000) / 16000
    soundfile.write(clip, 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    arguments = {"audio": clip, "strength": 0.6, "seed": 2, "num_inference_steps": 6}
    with Engine.load(tiny.export, backend="openvino", verify=False) as engine:
        assert "vae_encoder" not in engine._graphs  # text-to-audio never loads it
        ours = engine.generate("a dog", **arguments)
        assert "vae_encoder" in engine._graphs
    expected = tiny.engine.generate("a dog", **arguments)
    assert relative_difference(ours, expected) < AUDIO_TOLERANCE
