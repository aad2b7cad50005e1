"""A generation's arguments, checked once: what ``Engine.request`` returns and ``Engine.start`` takes.

Validation needs only the manifest and the scheduler, not the graphs, so a command line or a server can refuse
a bad request before it loads anything or queues it. Every problem is a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .audio import AudioInput
from .manifest import Manifest
from .memory import check_fits
from .random import check_seed, fresh_seed
from .schedulers import Scheduler, scheduler_class


@dataclass(frozen=True)
class SchedulerChoice:
    """A scheduler class and its resolved config: enough to make a fresh instance for each generation."""

    type: type[Scheduler]
    config: dict[str, Any]

    @classmethod
    def resolve(
        cls, base: Mapping[str, Any], name: str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> SchedulerChoice:
        """``name`` (default: ``base``'s own class) configured from ``base`` as diffusers' ``from_config`` does,
        with ``overrides`` on top; ValueError for an unknown name, key or value."""
        scheduler_type = scheduler_class(name or base.get("_class_name", "DDIMScheduler"))
        return cls(scheduler_type, scheduler_type.from_config(base, overrides).config)

    @classmethod
    def of_export(
        cls, manifest: Manifest, name: str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> SchedulerChoice:
        """The export's scheduler (the checkpoint's), or ``name`` configured from it."""
        return cls.resolve(manifest.scheduler, name, overrides)

    def create(self, num_inference_steps: int) -> Scheduler:
        scheduler = self.type(self.config)
        scheduler.set_timesteps(num_inference_steps)
        return scheduler


@dataclass(frozen=True, eq=False)
class GenerationRequest:
    """Checked arguments of one generation, with the seed fixed (drawn when none was given)."""

    #: Prompts to encode; empty when ``prompt_embeds`` is given.
    prompts: tuple[str, ...]
    #: One negative prompt per prompt, or None for the empty one.
    negative_prompts: tuple[str, ...] | None
    prompt_embeds: np.ndarray | None
    negative_prompt_embeds: np.ndarray | None
    #: Prompts (or rows of ``prompt_embeds``) in the request.
    prompt_count: int
    waveforms_per_prompt: int
    num_inference_steps: int
    guidance_scale: float
    eta: float
    seed: int
    audio_length_in_s: float
    #: (waveforms, channels, height, width) of the initial noise.
    latent_shape: tuple[int, int, int, int]
    #: The initial noise when the caller gave it; else it is drawn from ``seed``.
    latents: np.ndarray | None
    scheduler: SchedulerChoice
    #: UNet calls the generation makes (second-order schedulers list most timesteps twice).
    unet_calls: int
    #: Audio-to-audio's input and mode; None for text-to-audio.
    audio: AudioInput | None = None

    @property
    def waveforms(self) -> int:
        return self.prompt_count * self.waveforms_per_prompt

    @property
    def guided(self) -> bool:
        """Classifier-free guidance: diffusers applies it for ``guidance_scale > 1``."""
        return self.guidance_scale > 1.0

    @property
    def unet_rows(self) -> int:
        """Rows the request adds to a UNet call: both sides of guidance are one batched call."""
        return self.waveforms * (2 if self.guided else 1)

    @property
    def latent_height(self) -> int:
        """Requests of equal latent height can share UNet, VAE and vocoder calls."""
        return self.latent_shape[2]

    @classmethod
    def create(
        cls,
        manifest: Manifest,
        scheduler: SchedulerChoice,
        prompt: str | Sequence[str] | None = None,
        audio_length_in_s: float | None = None,
        num_inference_steps: int = 10,
        guidance_scale: float = 2.5,
        negative_prompt: str | Sequence[str] | None = None,
        num_waveforms_per_prompt: int = 1,
        eta: float = 0.0,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        prompt_embeds: np.ndarray | None = None,
        negative_prompt_embeds: np.ndarray | None = None,
        audio: str | Path | bytes | None = None,
        strength: float | None = None,
        inpaint: tuple[float, float] | None = None,
        super_resolution: float | None = None,
        extend: float | None = None,
        posterior: str = "sample",
        *,
        graphs_on_host: bool,
    ) -> GenerationRequest:
        """Check the arguments of ``Engine.run`` (diffusers' ``AudioLDMPipeline.__call__``'s, and the
        audio-to-audio ones of ``AudioInput.create``) for the export of ``manifest``, and that the generation
        fits in this machine's memory (``graphs_on_host``: the backend computes in host memory, see
        ``memory.check_fits``)."""
        model = manifest.model
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds")
        prompts = () if prompt is None else prompt_list(prompt, "prompt")
        given = _embeddings(prompt_embeds, "prompt_embeds", model.embedding_dim)
        count = len(given) if given is not None else len(prompts)
        given_negative = _embeddings(negative_prompt_embeds, "negative_prompt_embeds", model.embedding_dim)
        if given_negative is not None and len(given_negative) != count:
            raise ValueError(f"negative_prompt_embeds has {len(given_negative)} rows for {count} prompts")
        steps = positive_int(num_inference_steps, "num_inference_steps")
        waveforms = positive_int(num_waveforms_per_prompt, "num_waveforms_per_prompt")
        guidance = finite(guidance_scale, "guidance_scale")
        eta = finite(eta, "eta")
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1] (DDIM's formula takes no more), got {eta}")
        length = (
            model.default_audio_length_in_s
            if audio_length_in_s is None
            else finite(audio_length_in_s, "audio_length_in_s")
        )
        audio_input = None
        if audio is not None:
            given_length = None if audio_length_in_s is None else length
            audio_input, length = AudioInput.create(
                manifest,
                audio,
                steps,
                scheduler.type.order,
                given_length,
                strength,
                inpaint,
                super_resolution,
                extend,
                posterior,
            )
        elif any(value is not None for value in (strength, inpaint, super_resolution, extend)):
            raise ValueError("strength, inpaint, super_resolution and extend need an input audio")
        if length < model.min_audio_length_in_s:
            raise ValueError(
                f"audio_length_in_s must be at least {model.min_audio_length_in_s} s for this model, got {length}"
            )
        shape = (count * waveforms, model.latent_channels, model.latent_height(length), model.latent_width)
        if latents is not None:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise ValueError(f"latents must have shape {shape} for these arguments, got {latents.shape}")
            if not np.isfinite(latents).all():
                raise ValueError("latents hold NaN or infinity")
        request = cls(
            prompts=prompts,
            negative_prompts=_negative_list(negative_prompt, count),
            prompt_embeds=given,
            negative_prompt_embeds=given_negative,
            prompt_count=count,
            waveforms_per_prompt=waveforms,
            num_inference_steps=steps,
            guidance_scale=guidance,
            eta=eta,
            seed=fresh_seed() if seed is None else check_seed(seed),
            audio_length_in_s=length,
            latent_shape=shape,
            latents=latents,
            scheduler=scheduler,
            # Also checks the steps against the scheduler (more steps than training timesteps, ...).
            unet_calls=len(scheduler.create(steps).timesteps) - (audio_input.begin_index if audio_input else 0),
            audio=audio_input,
        )
        check_fits(manifest, request.waveforms, request.latent_height, request.guided, graphs_on_host)
        return request


def prompt_list(prompt: str | Sequence[str], name: str) -> tuple[str, ...]:
    """A string, or a non-empty list of strings, as a tuple; ValueError naming the bad element otherwise."""
    if isinstance(prompt, str):
        return (prompt,)
    if not isinstance(prompt, (list, tuple)):
        raise ValueError(f"{name} must be a string or a list of strings, got {type(prompt).__name__}")
    if not prompt:
        raise ValueError(f"{name} is an empty list")
    for index, item in enumerate(prompt):
        if not isinstance(item, str):
            raise ValueError(f"{name}[{index}] must be a string, got {type(item).__name__} {item!r}")
    return tuple(prompt)


def _embeddings(value: np.ndarray | None, name: str, dim: int) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != dim:
        raise ValueError(f"{name} must have shape (prompts, {dim}), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinity")
    return array


def _negative_list(negative_prompt: str | Sequence[str] | None, count: int) -> tuple[str, ...] | None:
    """One negative prompt per prompt; a single string applies to every prompt."""
    if negative_prompt is None:
        return None
    if isinstance(negative_prompt, str):
        return (negative_prompt,) * count
    negatives = prompt_list(negative_prompt, "negative_prompt")
    if len(negatives) != count:
        raise ValueError(f"negative_prompt has {len(negatives)} entries for {count} prompts")
    return negatives


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)
