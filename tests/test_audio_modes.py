"""Audio-to-audio (style transfer, inpainting, super-resolution, continuation) against a reference assembled from
diffusers' components: the same VAE encoder, scheduler and UNet, put together the way diffusers'
``StableDiffusionImg2ImgPipeline`` (strength, ``get_timesteps``, ``prepare_latents``) and
``StableDiffusionInpaintPipeline`` (the kept region re-noised after each step) put them, around AudioLDM's
guidance and decoding. The engine's input mel is the reference's input too (the front-end has its own oracle,
tests/test_audio_frontend.py)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from audioldm_trt.engine import Engine

from conftest import AUDIO_TOLERANCE, ModelUnderTest, relative_difference

SEED = 5
PROMPT = "a dog barking in the rain"

_engines: dict[tuple[str, str], Engine] = {}


def _engine(model: ModelUnderTest, scheduler: str) -> Engine:
    key = (model.name, scheduler)
    if key not in _engines:
        _engines[key] = Engine.load(model.export, backend="onnxruntime-cpu", scheduler=scheduler, verify=False)
    return _engines[key]


def _clip(tmp_path: Path, rate: int, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    signal = 0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t) + 0.05 * rng.standard_normal(len(t))
    path = tmp_path / f"clip-{rate}-{seconds}-{seed}.wav"
    soundfile.write(path, signal, rate)
    return path


def _reference(model: ModelUnderTest, engine: Engine, scheduler: str, kwargs: dict[str, Any]) -> np.ndarray:
    """diffusers' components in img2img's / inpaint's order, on the engine's checked input."""
    import diffusers
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    request = engine.request(PROMPT, seed=SEED, **kwargs)
    audio = request.audio
    assert audio is not None
    pipe = model.pipeline
    steps, guidance = request.num_inference_steps, request.guidance_scale
    sched = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    # StableDiffusionImg2ImgPipeline.get_timesteps
    init_timestep = min(int(steps * audio.strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order :]
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        embeds = pipe._encode_prompt(PROMPT, "cpu", request.waveforms_per_prompt, guidance > 1, None)
        posterior = pipe.vae.encode(torch.from_numpy(audio.mel)).latent_dist
        clean = posterior.sample(generator) if audio.posterior == "sample" else posterior.mean
        clean = pipe.vae.config.scaling_factor * clean
        clean = torch.cat([clean] * request.waveforms)
        noise = randn_tensor(request.latent_shape, generator=generator, dtype=clean.dtype)
        if audio.mask is not None and audio.strength == 1.0:  # the inpaint pipeline's is_strength_max
            latents = noise * sched.init_noise_sigma
        else:
            latents = sched.add_noise(clean, noise, timesteps[:1].repeat(request.waveforms))
        mask = None if audio.mask is None else torch.from_numpy(audio.mask)
        # AudioLDMPipeline.prepare_extra_step_kwargs, for this scheduler
        accepted = inspect.signature(sched.step).parameters
        extra = {k: v for k, v in (("eta", request.eta), ("generator", generator)) if k in accepted}
        for i, t in enumerate(timesteps):
            model_input = torch.cat([latents] * 2) if guidance > 1 else latents
            model_input = sched.scale_model_input(model_input, t)
            noise_pred = pipe.unet(model_input, t, encoder_hidden_states=None, class_labels=embeds, return_dict=False)[
                0
            ]
            if guidance > 1:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + guidance * (text - uncond)
            latents = sched.step(noise_pred, t, latents, **extra).prev_sample
            if mask is not None:
                proper = clean
                if i < len(timesteps) - 1:
                    proper = sched.add_noise(clean, noise, torch.tensor([timesteps[i + 1]]))
                latents = (1 - mask) * proper + mask * latents
        mel = pipe.decode_latents(latents)
        waveform = pipe.mel_spectrogram_to_waveform(mel)
    return waveform[:, : int(request.audio_length_in_s * pipe.vocoder.config.sampling_rate)].numpy()


STYLE_CASES = [
    ("DDIMScheduler", {"strength": 0.5}),
    ("DDIMScheduler", {"strength": 0.3, "num_inference_steps": 12, "eta": 1.0}),  # the original's eta
    ("DDIMScheduler", {"strength": 1.0, "posterior": "mean"}),
    ("DPMSolverMultistepScheduler", {"strength": 0.6, "num_inference_steps": 15}),
    ("EulerAncestralDiscreteScheduler", {"strength": 0.5, "num_waveforms_per_prompt": 2}),
    ("HeunDiscreteScheduler", {"strength": 0.75, "guidance_scale": 1.0}),
    ("UniPCMultistepScheduler", {"strength": 0.4, "num_inference_steps": 20}),
]


@pytest.mark.parametrize(("scheduler", "kwargs"), STYLE_CASES, ids=[f"{s}-{k}" for s, k in STYLE_CASES])
def test_style_transfer_matches_diffusers_components(
    tiny: ModelUnderTest, tmp_path: Path, scheduler: str, kwargs: dict[str, Any]
) -> None:
    engine = _engine(tiny, scheduler)
    kwargs = {"audio": _clip(tmp_path, 16000, 0.9), **kwargs}
    ours = engine.generate(PROMPT, seed=SEED, **kwargs)
    expected = _reference(tiny, engine, scheduler, kwargs)
    assert ours.shape == expected.shape == (kwargs.get("num_waveforms_per_prompt", 1), int(0.9 * 16000))
    assert relative_difference(ours, expected) < AUDIO_TOLERANCE


MASKED_CASES = [
    ("DDIMScheduler", {"inpaint": (0.2, 0.5)}),
    ("DPMSolverMultistepScheduler", {"inpaint": (0.0, 0.3), "strength": 0.8}),
    ("KDPM2DiscreteScheduler", {"inpaint": (0.4, 0.9), "num_inference_steps": 6}),
    ("DDIMScheduler", {"super_resolution": 3000.0}),
    ("LMSDiscreteScheduler", {"super_resolution": 2000.0, "strength": 0.9}),
    ("DDIMScheduler", {"extend": 0.6}),
    ("EulerDiscreteScheduler", {"extend": 0.4, "audio_length_in_s": 1.1}),
]


@pytest.mark.parametrize(("scheduler", "kwargs"), MASKED_CASES, ids=[f"{s}-{k}" for s, k in MASKED_CASES])
def test_masked_modes_match_diffusers_components(
    model: ModelUnderTest, tmp_path: Path, scheduler: str, kwargs: dict[str, Any]
) -> None:
    engine = _engine(model, scheduler)
    rate = engine.sampling_rate
    kwargs = {"audio": _clip(tmp_path, rate, 0.9), **kwargs}
    ours = engine.run(PROMPT, seed=SEED, **kwargs)
    expected = _reference(model, engine, scheduler, kwargs)
    assert relative_difference(ours.audio, expected) < AUDIO_TOLERANCE
    length = kwargs.get("audio_length_in_s", 0.9 + kwargs.get("extend", 0.0))
    # as long as the input plus the extension, or the duration given (to the row, as diffusers rounds)
    model = engine.manifest.model
    assert 0 <= int(length * rate) - ours.audio.shape[1] < model.hop_length * model.vae_scale_factor


def test_kept_latents_are_the_inputs(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """Outside the span, the final latents are the input's own (the posterior sample times the scaling factor):
    what is decoded there is the input's reconstruction; inside they differ."""
    engine = _engine(tiny, "DDIMScheduler")
    request = engine.request(PROMPT, seed=SEED, audio=_clip(tmp_path, 16000, 1.0), inpaint=(0.3, 0.6))
    (state,) = engine.start([request])
    while not state.done:
        engine.step([state])
    assert state.mask is not None and state.clean is not None
    kept = state.mask[0, 0, :, 0] == 0
    assert kept.any() and (~kept).any()
    np.testing.assert_array_equal(state.latents[:, :, kept], state.clean[:, :, kept])
    assert np.abs(state.latents[:, :, ~kept] - state.clean[:, :, ~kept]).max() > 0.1
    # the rows of the span: 0.3-0.6 s at this model's rows per second
    model = engine.manifest.model
    rows_per_second = 1 / (model.seconds_per_frame * model.vae_scale_factor)
    assert np.flatnonzero(~kept).tolist() == list(
        range(int(0.3 * rows_per_second), int(np.ceil(0.6 * rows_per_second)))
    )


def test_modes_are_sensitive(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """The input, the strength and the seed each move the audio far more than the tolerance."""
    engine = _engine(tiny, "DDIMScheduler")
    clip = _clip(tmp_path, 16000, 0.9)
    base = engine.generate(PROMPT, seed=SEED, audio=clip, strength=0.5)
    changes = {
        "input": engine.generate(PROMPT, seed=SEED, audio=_clip(tmp_path, 16000, 0.9, seed=1), strength=0.5),
        "strength": engine.generate(PROMPT, seed=SEED, audio=clip, strength=0.7),
        "seed": engine.generate(PROMPT, seed=SEED + 1, audio=clip, strength=0.5),
        "mode": engine.generate(PROMPT, seed=SEED, audio=clip, inpaint=(0.2, 0.5)),
    }
    for what, audio in changes.items():
        assert relative_difference(audio, base) > 50 * AUDIO_TOLERANCE, f"changing the {what} barely changes the audio"


def test_a_shorter_duration_takes_the_start(tiny: ModelUnderTest, tmp_path: Path) -> None:
    engine = _engine(tiny, "DDIMScheduler")
    request = engine.request(PROMPT, seed=SEED, audio=_clip(tmp_path, 16000, 2.0), audio_length_in_s=0.5)
    assert request.audio is not None and request.audio_length_in_s == 0.5
    model = engine.manifest.model
    assert request.audio.mel.shape == (1, 1, model.latent_height(0.5) * model.vae_scale_factor, model.mel_bins)
