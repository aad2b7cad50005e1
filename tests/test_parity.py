"""Engine.generate against diffusers' AudioLDMPipeline on the same latents: the core promise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conftest import AUDIO_TOLERANCE, ModelUnderTest, relative_difference


def _both(model: ModelUnderTest, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ours, diffusers') for the same arguments and latents."""
    prompts = kwargs["prompt"] if isinstance(kwargs["prompt"], list) else [kwargs["prompt"]]
    batch = len(prompts) * kwargs.get("num_waveforms_per_prompt", 1)
    latents = model.latents(batch, kwargs.get("audio_length_in_s"), seed=batch)
    ours = model.engine.generate(latents=latents, **kwargs)
    return ours, model.diffusers_audio(latents=latents, **kwargs)


def test_batch_with_negative_prompts_and_two_waveforms_each(model: ModelUnderTest) -> None:
    length = model.odd_audio_length()
    ours, expected = _both(
        model,
        prompt=["a dog barking in the distance", "rain on a tin roof"],
        negative_prompt=["low quality", "static hiss and noise"],
        num_waveforms_per_prompt=2,
        audio_length_in_s=length,
    )
    assert ours.shape == expected.shape == (4, int(length * model.engine.sampling_rate))
    assert relative_difference(ours, expected) < AUDIO_TOLERANCE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt": "a cat meowing", "guidance_scale": 1.0},
        {"prompt": "a cat meowing", "guidance_scale": 0.5, "negative_prompt": "ignored without guidance"},
        {"prompt": "thunder", "guidance_scale": 4.0, "num_inference_steps": 4},
        {"prompt": "a bell", "audio_length_in_s": None},
        {"prompt": ["a", "b", "c"], "negative_prompt": ["", "x", "y"], "num_waveforms_per_prompt": 3},
        # diffusers truncates negative prompts at the embedding size; a long one checks we do too
        {"prompt": "birds", "negative_prompt": " ".join(["noisy muffled distorted quiet"] * 20)},
        {"prompt": " ".join(["a loud dog barking in the rain"] * 90)},  # over 512 tokens: truncated
    ],
    ids=[
        "no-guidance",
        "guidance-below-1",
        "guidance-4",
        "default-length",
        "three-prompts",
        "long-negative",
        "long-prompt",
    ],
)
def test_arguments_match_diffusers(model: ModelUnderTest, kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("audio_length_in_s", model.odd_audio_length())
    ours, expected = _both(model, **kwargs)
    assert relative_difference(ours, expected) < AUDIO_TOLERANCE


def test_audio_lengths_round_like_diffusers(tiny: ModelUnderTest) -> None:
    """Lengths that are not whole frames or latent rows: same height rounding and trimming as diffusers."""
    minimum = tiny.engine.manifest.model.min_audio_length_in_s
    for length in (minimum, 0.333, 1.0, 1.2345):
        ours, expected = _both(tiny, prompt="a drum", audio_length_in_s=length, num_inference_steps=3)
        assert ours.shape == expected.shape
        assert relative_difference(ours, expected) < AUDIO_TOLERANCE


def test_random_models_are_sensitive(model: ModelUnderTest) -> None:
    """A parity test proves something only if what it varies moves the audio far more than the tolerance."""
    length = model.odd_audio_length()
    latents = model.latents(1, length)
    base = model.engine.generate("a dog barking", audio_length_in_s=length, latents=latents)
    changes = {
        "prompt": model.engine.generate("rain on a window", audio_length_in_s=length, latents=latents),
        "guidance": model.engine.generate(
            "a dog barking", audio_length_in_s=length, latents=latents, guidance_scale=1.0
        ),
        "negative prompt": model.engine.generate(
            "a dog barking", audio_length_in_s=length, latents=latents, negative_prompt="music"
        ),
        "latents": model.engine.generate(
            "a dog barking", audio_length_in_s=length, latents=model.latents(1, length, seed=9)
        ),
    }
    for what, audio in changes.items():
        assert relative_difference(audio, base) > 50 * AUDIO_TOLERANCE, f"changing the {what} barely changes the audio"


def test_encode_prompt_matches_diffusers(model: ModelUnderTest) -> None:
    import torch

    prompts = ["a dog barking", "", "émoji 🐶 and\ttabs"]
    with torch.no_grad():
        expected = model.pipeline._encode_prompt(prompts, "cpu", 1, False).numpy()
    ours = model.engine.encode_prompt(prompts)
    assert ours.shape == expected.shape == (3, model.engine.manifest.model.embedding_dim)
    assert relative_difference(ours, expected) < 1e-5


def test_given_embeddings_match_diffusers(model: ModelUnderTest) -> None:
    """prompt_embeds / negative_prompt_embeds are used as given (not normalised), as diffusers uses them."""
    import torch

    rng = np.random.default_rng(5)
    positive = model.engine.encode_prompt(["a dog", "rain"]) * 0.8 + rng.normal(0, 0.05, (2, 1)).astype(np.float32)
    negative = model.engine.encode_prompt(["noise", "hiss"]) * 1.2
    length = model.odd_audio_length()
    latents = model.latents(2, length, seed=4)
    # (diffusers refuses a negative_prompt with prompt_embeds: its type check wants both to be lists)
    for negative_kwargs in ({"negative_prompt_embeds": negative}, {}):
        ours = model.engine.generate(
            prompt_embeds=positive, audio_length_in_s=length, latents=latents, **negative_kwargs
        )
        expected = model.diffusers_audio(
            prompt_embeds=torch.from_numpy(positive),
            audio_length_in_s=length,
            latents=latents,
            **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in negative_kwargs.items()},
        )
        assert relative_difference(ours, expected) < AUDIO_TOLERANCE
