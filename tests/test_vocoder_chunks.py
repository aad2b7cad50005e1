"""The vocoder over windows of the spectrogram (``engine/decoding.py``): the chunks joined are, bit for bit, the
audio of one call on the whole spectrogram, on the tiny model through the engine and on the full-size s
vocoder's architecture through a real ONNX Runtime session; the receptive field the export records covers
what torch's HiFi-GAN actually reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from audioldm_trt.engine.decoding import Vocoding, chunk_frames
from audioldm_trt.engine.manifest import ModelSpec
from audioldm_trt.export.onnx import export_vocoder, vocoder_context_frames
from audioldm_trt.export.random_models import PRESETS

from conftest import ModelUnderTest


@pytest.mark.parametrize("length", [0.6, 1.28, 3.0, 5.17])
@pytest.mark.parametrize("waveforms", [1, 2])
def test_streamed_chunks_are_the_whole_clips_audio(tiny: ModelUnderTest, length: float, waveforms: int) -> None:
    engine = tiny.engine
    request = engine.request("a dog barking", audio_length_in_s=length, num_waveforms_per_prompt=waveforms, seed=7)
    whole = engine.complete(request).audio
    for chunk_seconds in (None, 0.24, 0.5, 1.3):
        chunks = list(engine.stream(request, chunk_seconds))
        assert [c.offset for c in chunks] == list(np.cumsum([0] + [c.audio.shape[1] for c in chunks[:-1]]))
        assert np.array_equal(np.concatenate([c.audio for c in chunks], axis=1), whole), chunk_seconds
    assert len(list(engine.stream(request, 0.24))) > length / 0.5  # it did chunk


def test_windows_of_several_requests_share_a_call(tiny: ModelUnderTest) -> None:
    """Two requests of one window length vocoded in the same calls each get their own audio."""
    engine = tiny.engine
    requests = [engine.request(p, audio_length_in_s=2.0, seed=s) for p, s in (("rain", 1), ("a bell", 2))]
    wholes = [engine.complete(r).audio for r in requests]
    states = engine.start(requests)
    while not states[0].done:
        engine.step(states)
    vocodings = engine.spectrogram(states, chunk_frames(engine.manifest.model, 0.5))
    while not vocodings[0].done:
        engine.vocode(vocodings)
    for vocoding, whole in zip(vocodings, wholes, strict=True):
        assert np.array_equal(vocoding.generation().audio, whole)
    assert not np.allclose(wholes[0], wholes[1], atol=1e-2)  # the model hears its prompt


def test_chunk_seconds_are_checked(tiny: ModelUnderTest) -> None:
    model = tiny.engine.manifest.model
    with pytest.raises(ValueError, match=r"at least 0.24 s for this model \(twice the vocoder's context\)"):
        chunk_frames(model, 0.1)
    with pytest.raises(ValueError, match="positive number of seconds"):
        chunk_frames(model, -1.0)
    request = tiny.engine.request("a", num_inference_steps=1)
    with pytest.raises(ValueError, match="chunk_seconds"):
        next(tiny.engine.stream(request, 0.0))


@pytest.fixture(scope="module")
def s_vocoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[SpeechT5HifiGan, Path]:
    """The full-size s checkpoint's HiFi-GAN with random weights, exported as the export does."""
    torch.manual_seed(0)
    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**PRESETS["s-full-v2"]["vocoder"])).eval()
    with torch.no_grad():
        for module in vocoder.modules():  # weights that keep the signal's scale through the layers
            if isinstance(module, torch.nn.Conv1d | torch.nn.ConvTranspose1d):
                module.weight.normal_(0.0, (module.weight.shape[1] * module.weight.shape[2]) ** -0.5)
    path = tmp_path_factory.mktemp("s-vocoder") / "vocoder.onnx"
    export_vocoder(vocoder, path)
    return vocoder, path


def s_model_spec(vocoder: SpeechT5HifiGan) -> ModelSpec:
    config = vocoder.config
    return ModelSpec(
        sampling_rate=config.sampling_rate,
        vocoder_upsample_rates=list(config.upsample_rates),
        vocoder_context_frames=vocoder_context_frames(vocoder),
        vae_scale_factor=4,
        vae_scaling_factor=1.0,
        latent_channels=8,
        mel_bins=config.model_in_dim,
        unet_sample_size=256,
        embedding_dim=512,
        tokenizer_max_length=512,
    )


def test_the_s_vocoders_windows_join_bit_for_bit(s_vocoder: tuple[SpeechT5HifiGan, Path]) -> None:
    vocoder, path = s_vocoder
    model = s_model_spec(vocoder)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames, waveforms, chunks in ((260, 1, (0.5, 1.5)), (520, 2, (1.5,))):
        mel = np.random.default_rng(frames).standard_normal((waveforms, frames, model.mel_bins), dtype=np.float32)
        (whole,) = session.run(None, {"mel": mel})
        length = (frames - 3) * model.hop_length  # the trim ends inside the last frames, as diffusers' does
        for chunk_seconds in chunks:
            state: Any = SimpleNamespace(
                request=SimpleNamespace(audio_length_in_s=length / model.sampling_rate, seed=0),
                timings={"vocoder": 0.0},
                started=0.0,
                calls_done=0,
            )
            vocoding = Vocoding(state, mel, model, chunk_frames(model, chunk_seconds))
            while not vocoding.done:
                (output,) = session.run(None, {"mel": np.ascontiguousarray(mel[:, slice(*vocoding.window())])})
                vocoding.take(output, 0.0)
            assert len(vocoding.chunks) > 1
            assert np.array_equal(vocoding.generation().audio, whole[:, :length]), (frames, chunk_seconds)


@pytest.mark.parametrize("which", ["tiny", "s-full-v2"])
def test_the_recorded_context_covers_the_vocoders_receptive_field(
    which: str, tiny: ModelUnderTest, s_vocoder: tuple[SpeechT5HifiGan, Path]
) -> None:
    """Torch's HiFi-GAN: changing one mel frame changes samples no further than the recorded context."""
    vocoder = s_vocoder[0] if which == "s-full-v2" else SpeechT5HifiGan.from_pretrained(tiny.checkpoint / "vocoder")
    context = vocoder_context_frames(vocoder)
    hop = int(np.prod(vocoder.config.upsample_rates))
    frames, changed = 4 * context, 2 * context
    mel = torch.randn(1, frames, vocoder.config.model_in_dim, generator=torch.Generator().manual_seed(0))
    moved = mel.clone()
    moved[0, changed] += 1.0
    with torch.no_grad():
        difference = (vocoder(moved) - vocoder(mel)).abs().flatten().numpy()
    reached = np.flatnonzero(difference)
    assert reached.size
    assert reached.min() >= (changed - context) * hop and reached.max() < (changed + context + 1) * hop
    # and the context is not far more than needed (each window's overlap is work)
    assert reached.min() < (changed - context + 6) * hop
