"""The AudioLDM loop on exported graphs: encode the prompt, denoise the latents, decode them to a waveform.

Semantics follow diffusers' ``AudioLDMPipeline.__call__`` step for step (argument names, defaults, the
spectrogram height rounding, classifier-free guidance as one batched UNet call, the final trim), so that the
same latents give the same audio.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend, Graph, create_backend
from .backends.base import Link
from .errors import EngineError, NonFiniteOutputError
from .manifest import GRAPH_NAMES, Manifest
from .random import TorchGenerator, fresh_seed
from .schedulers import Scheduler, scheduler_class
from .tokenizer import PromptTokenizer

logger = logging.getLogger(__name__)

#: The VAE's mel (batch, 1, frames, bins) is the vocoder's input (batch, frames, bins): on a GPU it stays there.
MEL = Link("mel", "mel", squeeze=1)


@dataclass(frozen=True)
class Generation:
    """What one call produced: the audio, the seed that reproduces it, and where the time went."""

    #: float32, shape (len(prompts) * num_waveforms_per_prompt, samples)
    audio: np.ndarray
    #: The generator seed used: the one given, or the one drawn when none was given.
    seed: int
    #: Seconds spent per stage: text_encoder, unet, scheduler (host work of the loop), vae_decoder, vocoder, total.
    timings: dict[str, float] = field(default_factory=dict)
    #: UNet calls made (second-order schedulers make two per step).
    unet_calls: int = 0


class Engine:
    """An exported AudioLDM model loaded on one backend; thread-safe, load once and call many times."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        backend: Backend,
        graphs: dict[str, Graph],
        tokenizer: PromptTokenizer,
        scheduler: type[Scheduler],
        scheduler_config: dict[str, Any],
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.backend = backend
        self._graphs = graphs
        self._tokenizer = tokenizer
        self._scheduler = scheduler
        self._scheduler_config = scheduler_config
        # diffusers tokenizes negative prompts with max_length = the embedding size (it reuses
        # prompt_embeds.shape[1] there); the real checkpoints' 512 makes that the tokenizer's limit, small
        # models truncate earlier, and the same audio needs the same truncation.
        self._negative_max_length = min(manifest.model.embedding_dim, tokenizer.max_length)
        self._empty_embedding = self._encode([], [""])[1]

    @classmethod
    def load(
        cls,
        directory: str | Path,
        backend: str = "auto",
        scheduler: str | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
        verify: bool = True,
        threads: int | None = None,
    ) -> Engine:
        """Load an export made by ``audioldm-trt export``.

        ``scheduler`` is a diffusers class name (default: the checkpoint's own); ``scheduler_config``
        overrides keys of the checkpoint's scheduler config. ``verify`` checks every file against the
        manifest's sha256 (sizes are always checked). ``threads`` caps ONNX Runtime's threads per graph call
        (default: one per core), for hosts that share the cores."""
        if threads is not None:
            threads = _positive_int(threads, "threads")
        directory = Path(directory)
        manifest = Manifest.load(directory)
        base_config = dict(manifest.scheduler)
        scheduler_type = scheduler_class(scheduler or base_config.get("_class_name", "DDIMScheduler"))
        resolved = scheduler_type.from_config(base_config, scheduler_config).config
        manifest.verify(directory, hashes=verify)
        runtime = create_backend(backend, directory, manifest, threads)
        graphs = {name: runtime.load(directory, manifest, name) for name in GRAPH_NAMES}
        tokenizer = PromptTokenizer.from_directory(directory / "tokenizer")
        engine = cls(directory, manifest, runtime, graphs, tokenizer, scheduler_type, resolved)
        logger.info(
            "loaded %s (%s graphs from %s) on %s with %s",
            directory,
            manifest.precision,
            manifest.source,
            runtime.describe(),
            scheduler_type.name,
        )
        return engine

    def close(self) -> None:
        """Free the sessions and the GPU memory now (hosts that must free the GPU; else the garbage collector
        does it). Calls after it raise EngineError; closing again does nothing."""
        self._graphs = {}
        self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def sampling_rate(self) -> int:
        return self.manifest.model.sampling_rate

    @property
    def scheduler_name(self) -> str:
        return self._scheduler.name

    def encode_prompt(self, prompt: str | Sequence[str]) -> np.ndarray:
        """L2-normalised CLAP embeddings (n, D) of the prompts, as diffusers' ``_encode_prompt`` gives for one
        side of guidance."""
        return self._encode(_prompt_list(prompt, "prompt"), [])[0]

    def generate(
        self,
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
    ) -> np.ndarray:
        """Waveforms, float32 (len(prompts) * num_waveforms_per_prompt, samples), like diffusers'
        ``AudioLDMPipeline(...).audios`` with ``generator=torch.Generator().manual_seed(seed)``."""
        return self.run(
            prompt,
            audio_length_in_s=audio_length_in_s,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            num_waveforms_per_prompt=num_waveforms_per_prompt,
            eta=eta,
            seed=seed,
            latents=latents,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        ).audio

    def run(
        self,
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
        progress: bool = False,
    ) -> Generation:
        """``generate``, returning the seed used and per-stage timings too; ``progress`` shows a step bar."""
        started = time.perf_counter()
        model = self.manifest.model
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds")
        prompts = [] if prompt is None else _prompt_list(prompt, "prompt")
        given = _embeddings(prompt_embeds, "prompt_embeds", model.embedding_dim)
        count = len(given) if given is not None else len(prompts)
        given_negative = _embeddings(negative_prompt_embeds, "negative_prompt_embeds", model.embedding_dim)
        if given_negative is not None and len(given_negative) != count:
            raise ValueError(f"negative_prompt_embeds has {len(given_negative)} rows for {count} prompts")
        negatives = _negative_list(negative_prompt, count)
        steps = _positive_int(num_inference_steps, "num_inference_steps")
        waveforms = _positive_int(num_waveforms_per_prompt, "num_waveforms_per_prompt")
        guidance = _finite(guidance_scale, "guidance_scale")
        eta = _finite(eta, "eta")
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        length = (
            model.default_audio_length_in_s
            if audio_length_in_s is None
            else _finite(audio_length_in_s, "audio_length_in_s")
        )
        if length < model.min_audio_length_in_s:
            raise ValueError(
                f"audio_length_in_s must be at least {model.min_audio_length_in_s} s for this model, got {length}"
            )
        batch = count * waveforms
        shape = (batch, model.latent_channels, model.latent_height(length), model.latent_width)
        if latents is not None:
            latents = np.asarray(latents, dtype=np.float32)
            if latents.shape != shape:
                raise ValueError(f"latents must have shape {shape} for these arguments, got {latents.shape}")
        guided = guidance > 1.0
        self.backend.check_workload(batch, shape[2])
        scheduler = self._scheduler(self._scheduler_config)
        scheduler.set_timesteps(steps)
        seed = fresh_seed() if seed is None else seed
        generator = TorchGenerator(seed)

        timings = dict.fromkeys(("text_encoder", "unet", "scheduler", "vae_decoder", "vocoder"), 0.0)
        clock = time.perf_counter()
        # As diffusers: given embeddings are used as they are; the others are encoded (in one call).
        positive, negative = self._encode(prompts, negatives if guided and negatives is not None else [])
        positive = given if given is not None else positive
        if given_negative is not None:
            negative = given_negative
        elif guided and negatives is None:
            negative = np.repeat(self._empty_embedding, count, axis=0)
        embeddings = np.repeat(positive, waveforms, axis=0)
        if guided:
            embeddings = np.concatenate([np.repeat(negative, waveforms, axis=0), embeddings])
        timings["text_encoder"] = time.perf_counter() - clock

        clock = time.perf_counter()
        if latents is None:
            latents = generator.randn(shape)
        latents = latents * np.float32(scheduler.init_noise_sigma)
        unet_calls = 0
        bar = _progress_bar(len(scheduler.timesteps), progress)
        for t in scheduler.timesteps:
            model_input = np.concatenate([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            unet_clock = time.perf_counter()
            noise = self._run(
                "unet",
                sample=np.ascontiguousarray(model_input, dtype=np.float32),
                timestep=np.full(len(model_input), t, dtype=np.float32),
                class_labels=embeddings,
                reuse=("class_labels",),
            )
            timings["unet"] += time.perf_counter() - unet_clock
            unet_calls += 1
            if guided:
                uncond, text = noise[:batch], noise[batch:]
                noise = uncond + guidance * (text - uncond)
            latents = scheduler.step(noise, t, latents, eta=eta, generator=generator)
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        timings["scheduler"] = time.perf_counter() - clock - timings["unet"]

        waveform, seconds = self._decode(latents * np.float32(1 / model.vae_scaling_factor))
        timings.update(seconds)
        audio = np.ascontiguousarray(waveform[:, : model.waveform_length(length)], dtype=np.float32)
        timings["total"] = time.perf_counter() - started
        return Generation(audio=audio, seed=seed, timings=timings, unet_calls=unet_calls)

    def _encode(self, prompts: list[str], negatives: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of prompts and negative prompts in one text encoder call (each side may be empty)."""
        if not prompts and not negatives:
            empty = np.zeros((0, self.manifest.model.embedding_dim), np.float32)
            return empty, empty
        sides = [
            self._tokenizer(texts, limit)
            for texts, limit in ((prompts, None), (negatives, self._negative_max_length))
            if texts
        ]
        width = max(ids.shape[1] for ids, _ in sides)
        ids = np.concatenate(
            [np.pad(i, ((0, 0), (0, width - i.shape[1])), constant_values=self._tokenizer.pad_id) for i, _ in sides]
        )
        mask = np.concatenate([np.pad(m, ((0, 0), (0, width - m.shape[1]))) for _, m in sides])
        embeddings = self._run("text_encoder", input_ids=ids, attention_mask=mask)
        return embeddings[: len(prompts)], embeddings[len(prompts) :]

    def _run(self, graph: str, reuse: tuple[str, ...] = (), **feeds: np.ndarray) -> np.ndarray:
        """Run a single-output graph and refuse NaN/inf, naming the stage (fp16 overflow shows up here)."""
        if not self._graphs:
            raise EngineError("this Engine was closed: load it again")
        (output,) = self._graphs[graph].run(feeds, reuse).values()
        if not np.isfinite(output).all():
            self._non_finite(graph)
        return output

    def _decode(self, latents: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Waveforms of scaled latents through the VAE decoder and the vocoder in one chained call, and the
        seconds of each. A NaN/inf waveform runs the VAE decoder alone to name the stage it came from."""
        if not self._graphs:
            raise EngineError("this Engine was closed: load it again")
        decoder = self.backend.chain(self._graphs["vae_decoder"], self._graphs["vocoder"], MEL)
        outputs, seconds = decoder.run_timed({"latents": latents})
        (waveform,) = outputs.values()
        if not np.isfinite(waveform).all():
            self._run("vae_decoder", latents=latents)
            self._non_finite("vocoder")
        return waveform, seconds

    def _non_finite(self, graph: str) -> None:
        precision = self.manifest.graphs[graph].precision
        hint = f"; the graph is {precision}: export again with --fp32 {graph}" if precision != "fp32" else ""
        raise NonFiniteOutputError(f"{graph} produced NaN or infinity{hint}")


def _prompt_list(prompt: str | Sequence[str], name: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name} must be a string or a list of strings, got {type(prompt).__name__}")
    if not prompts:
        raise ValueError(f"{name} is an empty list")
    return list(prompts)


def _embeddings(value: np.ndarray | None, name: str, dim: int) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != dim:
        raise ValueError(f"{name} must have shape (prompts, {dim}), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinity")
    return array


def _negative_list(negative_prompt: str | Sequence[str] | None, count: int) -> list[str] | None:
    """One negative prompt per prompt; a single string applies to every prompt."""
    if negative_prompt is None:
        return None
    if isinstance(negative_prompt, str):
        return [negative_prompt] * count
    negatives = _prompt_list(negative_prompt, "negative_prompt")
    if len(negatives) != count:
        raise ValueError(f"negative_prompt has {len(negatives)} entries for {count} prompts")
    return negatives


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, servers).
    return tqdm(total=total, desc="denoising", unit="step", leave=False, disable=None)
