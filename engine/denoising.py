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

    def __init__(self, request: GenerationRequest, class_labels: np.ndarray, started: float) -> None:
        self.request = request
        #: (unet_rows, D): the negative side's embeddings first when guided, as diffusers concatenates them.
        self.class_labels = class_labels
        #: ``time.perf_counter()`` when the generation started (its "total" is measured from here).
        self.started = started
        self.scheduler = request.scheduler.create(request.num_inference_steps)
        self.generator = TorchGenerator(request.seed)
        # As diffusers: given latents are used as they are, else drawn first from the seeded stream.
        noise = request.latents if request.latents is not None else self.generator.randn(request.latent_shape)
        self.latents = noise * np.float32(self.scheduler.init_noise_sigma)
        self.calls_done = 0
        self.timings = dict.fromkeys(STAGES, 0.0)

    @property
    def calls_total(self) -> int:
        return len(self.scheduler.timesteps)

    @property
    def remaining_calls(self) -> int:
        return self.calls_total - self.calls_done

    @property
    def done(self) -> bool:
        return self.calls_done >= self.calls_total

    def unet_inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """The sample rows and their timesteps for the next UNet call (``class_labels`` are the third input)."""
        t = self.scheduler.timesteps[self.calls_done]
        sample = np.concatenate([self.latents, self.latents]) if self.request.guided else self.latents
        sample = self.scheduler.scale_model_input(sample, t)
        return sample, np.full(len(sample), t, dtype=np.float32)

    def advance(self, noise_pred: np.ndarray) -> None:
        """Combine both sides of guidance and step the scheduler with the noise prediction of this state's rows."""
        request = self.request
        if request.guided:
            uncond, text = noise_pred[: request.waveforms], noise_pred[request.waveforms :]
            noise_pred = uncond + request.guidance_scale * (text - uncond)
        t = self.scheduler.timesteps[self.calls_done]
        self.latents = self.scheduler.step(noise_pred, t, self.latents, eta=request.eta, generator=self.generator)
        self.calls_done += 1
