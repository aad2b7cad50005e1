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

from .audio import MAX_INPUT_SECONDS, band_mask, log_mel, read_audio, resample
from .manifest import Manifest, ModelSpec
from .memory import check_fits
from .random import check_seed, fresh_seed
from .schedulers import Scheduler, scheduler_class
from .schedulers.base import strength_start


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
        strength = default_strength if strength is None else finite(strength, "strength")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if int(num_inference_steps * strength) < 1:  # diffusers' img2img runs int(steps * strength) steps
            raise ValueError(
                f"strength {strength} at {num_inference_steps} steps leaves no step to run: raise the strength or"
                " the steps"
            )
        waveform, rate = read_audio(source)
        seconds = len(waveform) / rate
        if seconds > MAX_INPUT_SECONDS:
            raise ValueError(f"input_audio: {seconds:.1f} s is longer than the {MAX_INPUT_SECONDS:.0f} s allowed")
        model = manifest.model
        if extend is not None:
            extend = finite(extend, "extend")
            if extend <= 0:
                raise ValueError(f"extend must be a positive number of seconds, got {extend}")
        length = seconds + (extend or 0.0) if audio_length_in_s is None else audio_length_in_s
        _check_length(model, length)
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
            cutoff = finite(super_resolution, "super_resolution")
            if not 0 < cutoff < mel_spec.fmax:
                raise ValueError(
                    f"super_resolution: the cutoff must be between 0 and {mel_spec.fmax:.0f} Hz, got {cutoff}"
                )
            mask = band_mask(cutoff, mel_spec, model.vae_scale_factor, height)
        begin = strength_start(num_inference_steps, strength, order)
        audio = cls(mel[np.newaxis, np.newaxis], begin, strength, mask, posterior, model.vae_scaling_factor)
        return audio, length


def _span(span: tuple[float, float], seconds: float) -> tuple[float, float]:
    """An inpainting span (start, end) in seconds, inside the clip."""
    if not isinstance(span, (tuple, list)) or len(span) != 2:
        raise ValueError(f"inpaint must be (start, end) in seconds, got {span!r}")
    start, end = (finite(value, "inpaint") for value in span)
    if not 0 <= start < end <= seconds:
        raise ValueError(f"inpaint: the span {start}-{end} s is not inside the clip (0-{seconds:.2f} s)")
    return start, end


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
        _check_length(model, length)
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


def _check_length(model: ModelSpec, length: float) -> None:
    if length < model.min_audio_length_in_s:
        raise ValueError(
            f"audio_length_in_s must be at least {model.min_audio_length_in_s} s for this model, got {length}"
        )


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
