"""Linear multistep (Karras et al. 2022's LMS sampler): a port of diffusers' LMSDiscreteScheduler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.polynomial import Polynomial

if TYPE_CHECKING:
    from ..random import TorchGenerator
from .base import BETA_SCHEDULES, TIMESTEP_SPACINGS
from .sigmas import (
    WITHOUT_BETA_SIGMAS,
    SigmaScheduler,
    converted_sigmas,
    interpolated_sigmas,
    spaced_timesteps,
    train_sigmas,
)


class LMSDiscreteScheduler(SigmaScheduler):
    name = "LMSDiscreteScheduler"
    config_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "v_prediction", "sample"),
        "timestep_spacing": TIMESTEP_SPACINGS,
        "use_beta_sigmas": WITHOUT_BETA_SIGMAS,
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.derivatives: list[np.ndarray] = []

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(self.config, num_inference_steps)
        train = train_sigmas(self.alphas_cumprod)
        sigmas = interpolated_sigmas(timesteps, train)
        converted = converted_sigmas(self.config, sigmas, np.log(train), num_inference_steps)
        if converted is not None:
            timesteps, sigmas = converted
        self._set_schedule(timesteps.astype(np.float32), np.append(sigmas, 0.0).astype(np.float32))
        self.derivatives = []

    def lms_coefficient(self, order: int, index: int, current_order: int) -> float:
        """The weight of the derivative ``current_order`` steps back in a step of the given ``order``.

        It is the integral, over this step's sigma interval, of the Lagrange basis polynomial of that derivative
        on the last ``order`` sigmas. diffusers integrates it numerically (``scipy.integrate.quad``, exact for
        these low degrees); here it is integrated analytically.
        """
        nodes = [float(self.sigmas[index - k]) for k in range(order)]
        basis = Polynomial([1.0])
        for k, node in enumerate(nodes):
            if k != current_order:
                basis = basis * Polynomial([-node, 1.0]) / (nodes[current_order] - node)
        antiderivative = basis.integ()
        return float(antiderivative(float(self.sigmas[index + 1])) - antiderivative(float(self.sigmas[index])))

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        generator: TorchGenerator | None = None,
        order: int = 4,
    ) -> np.ndarray:
        """One LMS step; ``order`` is diffusers' ``step(order=4)``, the number of past derivatives used."""
        index = self._index(timestep)
        sigma = np.float32(self.sigmas[index])
        derivative = (sample - self._denoised(model_output, sample, sigma)) / sigma
        self.derivatives.append(derivative)
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(index + 1, order)
        coefficients = [self.lms_coefficient(order, index, current) for current in range(order)]
        update = sum(c * d for c, d in zip(coefficients, reversed(self.derivatives), strict=False))
        self._step_index = index + 1
        return np.asarray(sample + update, dtype=np.float32)
