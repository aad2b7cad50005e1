"""The AudioLDM loop on exported graphs: encode the prompt, denoise the latents, decode them to a waveform.

Semantics follow diffusers' ``AudioLDMPipeline.__call__`` step for step (argument names, defaults, the
spectrogram height rounding, classifier-free guidance as one batched UNet call, the final trim), so that the
same latents give the same audio.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .backends import Backend, Graph, create_backend
from .backends.base import Link
from .decoding import AudioChunk, Generation, Vocoding, chunk_frames
from .denoising import Denoising
from .errors import Cancelled, EngineError, NonFiniteOutputError, PartialFailureError
from .manifest import OPTIONAL_GRAPHS, Manifest
from .request import GenerationRequest, SchedulerChoice, positive_int, prompt_list
from .tokenizer import PromptTokenizer

logger = logging.getLogger(__name__)

#: The VAE's mel (batch, 1, frames, bins) is the vocoder's input (batch, frames, bins): on a GPU it stays there.
MEL = Link("mel", "mel", squeeze=1)


class _Stop(enum.Enum):
    STOP = "stop"


#: What a step callback returns to end its request (where diffusers' callbacks set ``pipe._interrupt``).
STOP = _Stop.STOP
#: ``on_step(step, steps)``: called after each UNet call of a request with the call's index (from 0) and the number
#: of calls (diffusers' ``callback_on_step_end`` without the pipeline and tensors); returning ``STOP``, or raising,
#: ends the request with ``Cancelled``. Anything else it returns is ignored.
StepCallback = Callable[[int, int], object]


class Engine:
    """An exported AudioLDM model loaded on one backend; thread-safe, load once and call many times.

    ``run`` (and ``generate``) is one request through the four steps a server drives itself for many:
    ``request`` checks the arguments, ``start`` encodes the prompts and draws the noise, ``step`` makes one UNet
    call for any number of requests of one latent height, ``decode`` turns finished ones into audio. To hand
    audio out as it is made, ``spectrogram`` and ``vocode`` replace ``decode``: the VAE decoder's call, then
    vocoder calls over windows of the spectrogram (``stream`` is one request that way)."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        backend: Backend,
        graphs: dict[str, Graph],
        tokenizer: PromptTokenizer,
        scheduler: SchedulerChoice,
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.backend = backend
        self._graphs = graphs
        self._tokenizer = tokenizer
        self._scheduler = scheduler
        # diffusers tokenizes negative prompts with max_length = the embedding size (it reuses
        # prompt_embeds.shape[1] there); the real checkpoints' 512 makes that the tokenizer's limit, small
        # models truncate earlier, and the same audio needs the same truncation.
        self._negative_max_length = min(manifest.model.embedding_dim, tokenizer.max_length)
        self._empty_embedding = self._encode([], [""])[1]
        self._optional_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        directory: str | Path,
        backend: str = "auto",
        scheduler: str | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
        verify: bool = True,
        threads: int | None = None,
        precision: str | None = None,
    ) -> Engine:
        """Load an export made by ``audioldm-trt export``.

        ``scheduler`` is a diffusers class name (default: the checkpoint's own); ``scheduler_config``
        overrides keys of the checkpoint's scheduler config. ``verify`` checks every file against the
        manifest's hashes while the graphs load (sizes are always checked). ``threads`` caps the backend's
        threads per graph call (default: one per core), for hosts that share the cores. ``precision`` is the
        openvino backend's ("fp32", the default, or "bf16"); other backends run the export's own precision."""
        if threads is not None:
            threads = positive_int(threads, "threads")
        directory = Path(directory)
        manifest = Manifest.load(directory)
        choice = SchedulerChoice.of_export(manifest, scheduler, scheduler_config)
        with manifest.verifying(directory, hashes=verify):
            runtime = create_backend(backend, directory, manifest, threads, precision)
            graphs = runtime.load_graphs(directory, manifest)
        tokenizer = PromptTokenizer.from_directory(directory / "tokenizer")
        engine = cls(directory, manifest, runtime, graphs, tokenizer, choice)
        logger.info(
            "loaded %s (%s graphs from %s) on %s with %s",
            directory,
            manifest.precision,
            manifest.source,
            runtime.describe(),
            choice.type.name,
        )
        return engine

    @property
    def sampling_rate(self) -> int:
        return self.manifest.model.sampling_rate

    @property
    def scheduler_name(self) -> str:
        return self._scheduler.type.name

    def encode_prompt(self, prompt: str | Sequence[str]) -> np.ndarray:
        """L2-normalised CLAP embeddings (n, D) of the prompts, as diffusers' ``_encode_prompt`` gives for one
        side of guidance."""
        return self._encode(list(prompt_list(prompt, "prompt")), [])[0]

    def check_prompt_lengths(
        self, prompt: str | Sequence[str] | None, negative_prompt: str | Sequence[str] | None = None
    ) -> None:
        """ValueError naming the argument for a prompt longer than the text encoder reads, or a negative prompt
        longer than diffusers keeps of it (the embedding size). ``generate`` truncates them as diffusers does,
        with its audio; a server refuses them instead, so that its client knows."""
        limits = (
            ("prompt", prompt, self._tokenizer.max_length),
            ("negative_prompt", negative_prompt, self._negative_max_length),
        )
        for name, texts, limit in limits:
            if texts is None:
                continue
            for tokens in self._tokenizer.count(list(prompt_list(texts, name))):
                if tokens > limit:
                    raise ValueError(f"{name}: {tokens} tokens is more than the model reads ({limit})")

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
        audio: str | Path | bytes | None = None,
        strength: float | None = None,
        inpaint: tuple[float, float] | None = None,
        super_resolution: float | None = None,
        extend: float | None = None,
        posterior: str = "sample",
        on_step: StepCallback | None = None,
    ) -> np.ndarray:
        """Waveforms, float32 (len(prompts) * num_waveforms_per_prompt, samples), like diffusers'
        ``AudioLDMPipeline(...).audios`` with ``generator=torch.Generator().manual_seed(seed)``.

        Audio-to-audio: ``audio`` is an input clip (a path, or a file's bytes, in any format libsndfile reads),
        and the mode is style transfer (``strength`` in (0, 1], default 0.5: diffusers' img2img start), or one
        of the masked modes, which keep the input where they do not regenerate: ``inpaint=(start_s, end_s)``,
        ``super_resolution=cutoff_hz`` (regenerates the bands above), ``extend=seconds`` (continuation).
        ``posterior``: the VAE latent of the input is a "sample" drawn from the seed, or the "mean". Without
        ``audio_length_in_s`` the output is as long as the input (plus ``extend``)."""
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
            audio=audio,
            strength=strength,
            inpaint=inpaint,
            super_resolution=super_resolution,
            extend=extend,
            posterior=posterior,
            on_step=on_step,
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
        audio: str | Path | bytes | None = None,
        strength: float | None = None,
        inpaint: tuple[float, float] | None = None,
        super_resolution: float | None = None,
        extend: float | None = None,
        posterior: str = "sample",
        on_step: StepCallback | None = None,
    ) -> Generation:
        """``generate``, returning the seed used and per-stage timings too; ``progress`` shows a step bar."""
        request = self.request(
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
            audio=audio,
            strength=strength,
            inpaint=inpaint,
            super_resolution=super_resolution,
            extend=extend,
            posterior=posterior,
        )
        return self.complete(request, progress, on_step)

    def complete(
        self, request: GenerationRequest, progress: bool = False, on_step: StepCallback | None = None
    ) -> Generation:
        """Run a checked request to its audio, alone: ``start``, ``step`` until done (``on_step`` after each),
        ``decode``."""
        (generation,) = self.decode([self._denoise_alone(request, progress, on_step)])
        return generation

    def _denoise_alone(self, request: GenerationRequest, progress: bool, on_step: StepCallback | None) -> Denoising:
        """``start`` and ``step`` one request until its latents are done (``on_step`` after each UNet call)."""
        if on_step is not None and not callable(on_step):  # refused before any graph runs, not as a cancellation
            raise ValueError(f"on_step must be callable, got {type(on_step).__name__}")
        self.backend.check_workload(request.waveforms, request.latent_height)
        (state,) = self.start([request])
        bar = _progress_bar(state.calls_total, progress)
        try:
            while not state.done:
                self.step([state])
                if bar is not None:
                    bar.update()
                if on_step is not None:
                    _call_on_step(on_step, state)
        finally:
            if bar is not None:
                bar.close()
        return state

    def request(
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
        scheduler: str | None = None,
        scheduler_config: Mapping[str, Any] | None = None,
        audio: str | Path | bytes | None = None,
        strength: float | None = None,
        inpaint: tuple[float, float] | None = None,
        super_resolution: float | None = None,
        extend: float | None = None,
        posterior: str = "sample",
    ) -> GenerationRequest:
        """Check ``run``'s arguments, ValueError naming the bad one; no graph runs. ``scheduler`` (a diffusers
        class name) and ``scheduler_config`` change the engine's scheduler for this request alone."""
        choice = self._scheduler
        if scheduler is not None or scheduler_config:
            choice = SchedulerChoice.resolve(choice.config, scheduler or choice.type.name, scheduler_config)
        request = GenerationRequest.create(
            self.manifest,
            choice,
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
            audio=audio,
            strength=strength,
            inpaint=inpaint,
            super_resolution=super_resolution,
            extend=extend,
            posterior=posterior,
            graphs_on_host=self.backend.graphs_on_host,
        )
        self.backend.check_workload(request.waveforms, request.latent_height)
        return request

    def start(self, requests: Sequence[GenerationRequest]) -> list[Denoising]:
        """The loop states of ``requests``: every prompt and negative prompt among them encoded in one text
        encoder call, each audio input in a VAE encoder call, the initial noise drawn from each request's seed.
        A request whose embeddings or posterior are not finite fails alone: PartialFailureError, its
        ``results`` the states of the others."""
        started = time.perf_counter()
        prompts = [p for r in requests for p in r.prompts]
        negatives = [n for r in requests if r.guided and r.negative_prompts for n in r.negative_prompts]
        positive, negative = self._encode(prompts, negatives, checked=False)
        encoded = time.perf_counter() - started
        states: list[Denoising | None] = []
        failed: dict[int, NonFiniteOutputError] = {}
        for index, request in enumerate(requests):
            if request.prompt_embeds is not None:
                own = request.prompt_embeds
            else:
                own, positive = positive[: request.prompt_count], positive[request.prompt_count :]
            class_labels = np.repeat(own, request.waveforms_per_prompt, axis=0)
            if request.guided:
                if request.negative_prompt_embeds is not None:
                    own_negative = request.negative_prompt_embeds
                elif request.negative_prompts is not None:
                    own_negative, negative = negative[: request.prompt_count], negative[request.prompt_count :]
                else:
                    own_negative = np.repeat(self._empty_embedding, request.prompt_count, axis=0)
                class_labels = np.concatenate(
                    [np.repeat(own_negative, request.waveforms_per_prompt, axis=0), class_labels]
                )
            if not np.isfinite(class_labels).all():
                failed[index] = self._non_finite_error("text_encoder")
                states.append(None)
                continue
            posterior, encoder_seconds = self._encode_audio(request)
            if posterior is not None and not np.isfinite(posterior).all():
                failed[index] = self._non_finite_error("vae_encoder")
                states.append(None)
                continue
            state = Denoising(request, class_labels, started, posterior)
            state.timings["text_encoder"] = encoded
            if posterior is not None:
                state.timings["vae_encoder"] = encoder_seconds
            states.append(state)
        _raise_failures(failed, states)
        return [state for state in states if state is not None]

    def step(self, states: Sequence[Denoising]) -> None:
        """One UNet call for all of ``states`` (one latent height, none done), then each one's scheduler step.
        Each state is charged the whole call's time. A state whose rows of the noise prediction are not finite
        does not step and fails alone (PartialFailureError naming it); the others have stepped."""
        _check_batch(states, "step", done=False)
        clock = time.perf_counter()
        inputs = [state.unet_inputs() for state in states]
        unet_clock = time.perf_counter()
        noise_pred = self._run(
            "unet",
            checked=False,
            sample=np.ascontiguousarray(_joined([sample for sample, _ in inputs]), dtype=np.float32),
            timestep=_joined([timestep for _, timestep in inputs]),
            class_labels=_joined([state.class_labels for state in states]),
            reuse=("class_labels",),
        )
        unet_seconds = time.perf_counter() - unet_clock
        offset = 0
        failed: dict[int, NonFiniteOutputError] = {}
        for index, state in enumerate(states):
            rows = noise_pred[offset : offset + state.request.unet_rows]
            offset += state.request.unet_rows
            if np.isfinite(rows).all():
                state.advance(rows)
            else:
                failed[index] = self._non_finite_error("unet")
        host_seconds = time.perf_counter() - clock - unet_seconds
        for state in states:
            state.timings["unet"] += unet_seconds
            state.timings["scheduler"] += host_seconds
        _raise_failures(failed, [None] * len(states))

    def decode(self, states: Sequence[Denoising]) -> list[Generation]:
        """The audio of finished ``states`` (one latent height): one VAE decoder and one vocoder call for all.
        A state whose waveforms are not finite fails alone (PartialFailureError naming the stage, its
        ``results`` the others' generations)."""
        _check_batch(states, "decode", done=True)
        model = self.manifest.model
        latents = _joined([state.latents for state in states]) * np.float32(1 / model.vae_scaling_factor)
        waveform, seconds = self._decode(latents)
        generations: list[Generation | None] = []
        failed: dict[int, NonFiniteOutputError] = {}
        offset = 0
        for index, state in enumerate(states):
            request = state.request
            own = slice(offset, offset + request.waveforms)
            rows = waveform[own, : model.waveform_length(request.audio_length_in_s)]
            offset += request.waveforms
            if not np.isfinite(waveform[own]).all():
                failed[index] = self._non_finite_error(self._non_finite_stage(latents[own]))
                generations.append(None)
                continue
            timings = state.timings | seconds
            timings["total"] = time.perf_counter() - state.started
            audio = np.ascontiguousarray(rows, dtype=np.float32)
            generations.append(Generation(audio=audio, seed=request.seed, timings=timings, unet_calls=state.calls_done))
        _raise_failures(failed, generations)
        return [generation for generation in generations if generation is not None]

    def stream(
        self, request: GenerationRequest, chunk_seconds: float | None = 2.0, on_step: StepCallback | None = None
    ) -> Iterator[AudioChunk]:
        """Run a checked request alone and yield its audio in chunks of about ``chunk_seconds`` as the vocoder
        makes them (joined in order: ``complete``'s audio, bit for bit); denoising (``on_step`` after each UNet
        call, as in ``complete``) and the VAE decoder come before the first chunk."""
        frames = chunk_frames(self.manifest.model, chunk_seconds)
        (vocoding,) = self.spectrogram([self._denoise_alone(request, False, on_step)], frames)
        while not vocoding.done:
            yield from self.vocode([vocoding])

    def spectrogram(self, states: Sequence[Denoising], span_frames: int | None) -> list[Vocoding]:
        """One VAE decoder call for finished ``states`` (one latent height): each one's vocoder state, its
        spectrogram to be vocoded over spans of ``span_frames`` (``chunk_frames``; None: the whole clip at once).
        A state whose spectrogram is not finite fails alone (PartialFailureError)."""
        _check_batch(states, "spectrogram", done=True)
        clock = time.perf_counter()
        latents = _joined([state.latents for state in states]) * np.float32(1 / self.manifest.model.vae_scaling_factor)
        mel = self._run("vae_decoder", checked=False, latents=latents)[:, 0]
        seconds = time.perf_counter() - clock
        vocodings: list[Vocoding | None] = []
        failed: dict[int, NonFiniteOutputError] = {}
        offset = 0
        for index, state in enumerate(states):
            own = mel[offset : offset + state.request.waveforms]
            offset += state.request.waveforms
            state.timings["vae_decoder"] += seconds
            if np.isfinite(own).all():
                vocodings.append(Vocoding(state, own, self.manifest.model, span_frames))
            else:
                failed[index] = self._non_finite_error("vae_decoder")
                vocodings.append(None)
        _raise_failures(failed, vocodings)
        return [vocoding for vocoding in vocodings if vocoding is not None]

    def vocode(self, vocodings: Sequence[Vocoding]) -> list[AudioChunk]:
        """One vocoder call on the next window of each of ``vocodings`` (windows of one length): each one's
        next chunk. A request whose samples are not finite fails alone (PartialFailureError)."""
        if not vocodings or any(v.done for v in vocodings):
            raise ValueError("vocode takes vocodings with windows left")
        if len({v.window_frames for v in vocodings}) > 1:
            raise ValueError("vocode batches windows of one length")
        clock = time.perf_counter()
        windows = [v.mel[:, slice(*v.window())] for v in vocodings]
        waveform = self._run("vocoder", checked=False, mel=np.ascontiguousarray(_joined(windows)))
        seconds = time.perf_counter() - clock
        chunks: list[AudioChunk | None] = []
        failed: dict[int, NonFiniteOutputError] = {}
        offset = 0
        for index, vocoding in enumerate(vocodings):
            own = waveform[offset : offset + len(vocoding.mel)]
            offset += len(vocoding.mel)
            if np.isfinite(own).all():
                chunks.append(vocoding.take(own, seconds))
            else:
                failed[index] = self._non_finite_error("vocoder")
                chunks.append(None)
        _raise_failures(failed, chunks)
        return [chunk for chunk in chunks if chunk is not None]

    def close(self) -> None:
        """Free the sessions and the GPU memory now (hosts that must free the GPU; else the garbage collector
        does it). Calls after it raise EngineError; closing again does nothing."""
        self._graphs = {}
        self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _encode(self, prompts: list[str], negatives: list[str], checked: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of prompts and negative prompts in one text encoder call (each side may be empty);
        ``checked``: NaN/inf refused (else the caller checks each request's rows)."""
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
        embeddings = self._run("text_encoder", checked=checked, input_ids=ids, attention_mask=mask)
        return embeddings[: len(prompts)], embeddings[len(prompts) :]

    def _run(self, graph: str, reuse: tuple[str, ...] = (), checked: bool = True, **feeds: np.ndarray) -> np.ndarray:
        """Run a single-output graph; ``checked``: refuse NaN/inf, naming the stage (fp16 overflow shows up
        here). ``reuse`` names inputs a backend may keep on its device while they are unchanged."""
        (output,) = self._graph(graph).run(feeds, reuse).values()
        if checked and not np.isfinite(output).all():
            raise self._non_finite_error(graph)
        return output

    def _decode(self, latents: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """Waveforms of scaled latents through the VAE decoder and the vocoder in one chained call (on a GPU the
        mel stays there), and the seconds of each; the caller checks each request's rows."""
        decoder = self.backend.chain(self._graph("vae_decoder"), self._graph("vocoder"), MEL)
        outputs, seconds = decoder.run_timed({"latents": latents})
        (waveform,) = outputs.values()
        return waveform, seconds

    def _non_finite_stage(self, latents: np.ndarray) -> str:
        """The stage of a non-finite waveform: the VAE decoder, run again alone on its latents, or the vocoder."""
        mel = self._run("vae_decoder", checked=False, latents=latents)
        return "vocoder" if np.isfinite(mel).all() else "vae_decoder"

    def _encode_audio(self, request: GenerationRequest) -> tuple[np.ndarray | None, float]:
        """The VAE posterior of an audio request's input (None for text-to-audio), and the encoder's seconds."""
        if request.audio is None:
            return None, 0.0
        clock = time.perf_counter()
        posterior = self._run("vae_encoder", checked=False, mel=request.audio.mel)
        return posterior, time.perf_counter() - clock

    def _graph(self, name: str) -> Graph:
        if not self._graphs:
            raise EngineError("this Engine was closed: load it again")
        if name not in self._graphs and name in OPTIONAL_GRAPHS:
            # The encoder loads on the first audio input: text-to-audio never pays for its session.
            with self._optional_lock:
                if name not in self._graphs:
                    self._graphs[name] = self.backend.load(self.directory, self.manifest, name)
        return self._graphs[name]

    def _non_finite_error(self, graph: str) -> NonFiniteOutputError:
        precision = self.manifest.graphs[graph].precision
        hint = f"; the graph is {precision}: export again with --fp32 {graph}" if precision != "fp32" else ""
        return NonFiniteOutputError(f"{graph} produced NaN or infinity{hint}")


def _raise_failures(failed: dict[int, NonFiniteOutputError], results: Sequence[object | None]) -> None:
    """A request alone raises its own error; in a batch, PartialFailureError names the ones that failed."""
    if not failed:
        return
    if len(results) == 1:
        raise failed[0]
    raise PartialFailureError(failed, list(results))


def _call_on_step(on_step: StepCallback, state: Denoising) -> None:
    """Cancelled where the callback returns STOP or raises (its exception chained): the request ends here."""
    done, total = state.calls_done, state.calls_total
    try:
        stop = on_step(done - 1, total) is STOP
    except Cancelled:
        raise
    except Exception as error:
        raise Cancelled(f"the step callback raised {type(error).__name__} after UNet call {done} of {total}") from error
    if stop:
        raise Cancelled(f"stopped by the step callback after UNet call {done} of {total}")


def _check_batch(states: Sequence[Denoising], call: str, done: bool) -> None:
    """``step`` and ``decode`` take a non-empty list of states of one latent height, all finished or none."""
    if not states:
        raise ValueError(f"{call} needs at least one generation")
    heights = sorted({state.request.latent_height for state in states})
    if len(heights) > 1:
        raise ValueError(f"{call} batches generations of one latent height, got heights {heights}")
    if any(state.done != done for state in states):
        raise ValueError(f"{call} takes {'finished' if done else 'unfinished'} generations only")


def _joined(arrays: list[np.ndarray]) -> np.ndarray:
    """The arrays stacked along the batch axis, without a copy for one."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, servers).
    return tqdm(total=total, desc="denoising", unit="step", leave=False, disable=None)
