"""One generation in flight: its latents, scheduler, random stream and embeddings, advanced one UNet call at a
time by ``Engine.step``, alone or side by side with other generations in the same UNet call.

Each state contributes its own rows to a UNet call (both sides of guidance, each row with its own timestep
and class embedding) and takes its own rows of the noise prediction back, so its audio does not depend on
what else shares the call.
"""

from __future__ import annotations

import numpy as np

from .random import TorchGenerator
from .request import GenerationRequest

#: The stages a generation's time is reported in (``Generation.timings``, with "total").
STAGES = ("text_encoder", "unet", "scheduler", "vae_decoder", "vocoder")


class Denoising:
    """The loop state of one request: ``unet_inputs`` gives the rows of the next UNet call, ``advance`` takes
    the noise prediction of those rows and steps the request's own scheduler."""

    def __init__(
        self,
        request: GenerationRequest,
        class_labels: np.ndarray,
        started: float,
        posterior: np.ndarray | None = None,
    ) -> None:
        """``posterior``: for audio-to-audio, the VAE encoder's output for the input (mean, then std, on the
        channel axis)."""
        self.request = request
        #: (unet_rows, D): the negative side's embeddings first when guided, as diffusers concatenates them.
        self.class_labels = class_labels
        #: ``time.perf_counter()`` when the generation started (its "total" is measured from here).
        self.started = started
        self.scheduler = request.scheduler.create(request.num_inference_steps)
        self.generator = TorchGenerator(request.seed)
        #: The index in the scheduler's timesteps of the first call: later than 0 for audio-to-audio below
        #: strength 1, which starts from the input's latents noised to that step.
        self.first = 0
        #: Masked modes: the input's latents, the noise they are re-noised with at each step, and the mask
        #: (1 regenerated, 0 kept).
        self.clean: np.ndarray | None = None
        self.noise: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        if request.audio is None:
            # As diffusers: given latents are used as they are, else drawn first from the seeded stream.
            noise = request.latents if request.latents is not None else self.generator.randn(request.latent_shape)
            self.latents = noise * np.float32(self.scheduler.init_noise_sigma)
        elif posterior is None:
            raise ValueError("an audio-to-audio generation starts from the VAE posterior of its input")
        else:
            self._start_from_audio(posterior)
        self.calls_done = 0
        self.timings = dict.fromkeys(STAGES, 0.0)

    def _start_from_audio(self, posterior: np.ndarray) -> None:
        """The start of diffusers' img2img (``prepare_latents``) and inpaint pipelines: the posterior sampled
        from the seeded stream (or its mean) times the scaling factor, then the noise drawn from the same
        stream, added at the first timestep kept; the inpaint pipeline at strength 1 starts from the noise."""
        request = self.request
        audio = request.audio
        assert audio is not None
        mean, std = np.split(posterior, 2, axis=1)
        clean = mean if audio.posterior == "mean" else mean + std * self.generator.randn(mean.shape)
        clean = np.repeat(np.float32(audio.scaling_factor) * clean, request.waveforms, axis=0)
        noise = request.latents if request.latents is not None else self.generator.randn(request.latent_shape)
        self.first = audio.begin_index
        self.scheduler.set_begin_index(self.first)
        if audio.mask is not None and audio.strength == 1.0:
            self.latents = noise * np.float32(self.scheduler.init_noise_sigma)
        else:
            self.latents = self.scheduler.add_noise(clean, noise, self.first)
        if audio.mask is not None:
            self.clean, self.noise, self.mask = clean, noise, audio.mask

    @property
    def calls_total(self) -> int:
        return len(self.scheduler.timesteps) - self.first

    @property
    def remaining_calls(self) -> int:
        return self.calls_total - self.calls_done

    @property
    def done(self) -> bool:
        return self.calls_done >= self.calls_total

    def unet_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """The sample rows and their timesteps for the next UNet call (``class_labels`` are the third input)."""
        t = self.scheduler.timesteps[self.first + self.calls_done]
        sample = np.concatenate([self.latents, self.latents]) if self.request.guided else self.latents
        sample = self.scheduler.scale_model_input(sample, t)
        return sample, np.full(len(sample), t, dtype=np.float32)

    def advance(self, noise_pred: np.ndarray) -> None:
        """Combine both sides of guidance and step the scheduler with the noise prediction of this state's rows."""
        request = self.request
        if request.guided:
            uncond, text = noise_pred[: request.waveforms], noise_pred[request.waveforms :]
            noise_pred = uncond + request.guidance_scale * (text - uncond)
        t = self.scheduler.timesteps[self.first + self.calls_done]
        self.latents = self.scheduler.step(noise_pred, t, self.latents, eta=request.eta, generator=self.generator)
        self.calls_done += 1
        if self.mask is not None:
            self._keep_input()

    def _keep_input(self) -> None:
        """The masked sampling of AudioLDM (and diffusers' inpaint pipeline): where the mask is 0 the latents
        are the input's, noised to the next timestep, or clean after the last step."""
        assert self.clean is not None and self.noise is not None and self.mask is not None
        index = self.first + self.calls_done
        kept = self.clean if self.done else self.scheduler.add_noise(self.clean, self.noise, index)
        self.latents = (np.float32(1.0) - self.mask) * kept + self.mask * self.latents
