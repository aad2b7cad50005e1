"""DPM-Solver and DPM-Solver++ (https://huggingface.co/papers/2211.01095), multistep: a port of diffusers'
DPMSolverMultistepScheduler, the usual fast sampler for latent diffusion (``solver_order=2``, 20-25 steps)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import BETA_SCHEDULES, TIMESTEP_SPACINGS
from .multistep import (
    PREDICTION_TYPES,
    MultistepScheduler,
    adopt_dpm_aliases,
    dpm_coefficients,
    sde_noise,
    weighted_sum,
)

if TYPE_CHECKING:
    from ..random import TorchGenerator


class DPMSolverMultistepScheduler(MultistepScheduler):
    name = "DPMSolverMultistepScheduler"
    config_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "euler_at_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_lu_lambdas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "solver_order": (1, 2, 3),
        "prediction_type": PREDICTION_TYPES,
        "algorithm_type": ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver", "deis"),
        "solver_type": ("midpoint", "heun", "logrho", "bh1", "bh2"),
        "use_beta_sigmas": (False,),
        "use_flow_sigmas": (False,),
        "final_sigmas_type": ("zero", "sigma_min"),
        "variance_type": (None,),
        "timestep_spacing": TIMESTEP_SPACINGS,
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        adopt_dpm_aliases(self.config, self.name)
        if self.config["algorithm_type"] == "sde-dpmsolver" and self.config["solver_order"] == 3:
            raise ValueError(f"{self.name}: solver_order=3 has no algorithm_type='sde-dpmsolver' update in diffusers")

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps = self._spaced(num_inference_steps, self._clipped_end())
        # diffusers keeps the cosine schedule's Karras/Lu timesteps fractional (then truncates them to int64).
        respaced = self._respaced(
            num_inference_steps, round_timesteps=self.config["beta_schedule"] != "squaredcos_cap_v2"
        )
        if respaced is None:
            sigmas = self._interpolated(timesteps)
        else:
            timesteps, sigmas = respaced
        final = float(self.train_sigmas[0]) if self.config["final_sigmas_type"] == "sigma_min" else 0.0
        self._set_schedule(timesteps, sigmas, final)

    def _advance(self, model_output: np.ndarray, sample: np.ndarray, generator: TorchGenerator | None) -> np.ndarray:
        assert self.step_index is not None
        config = self.config
        index, steps = self.step_index, len(self.timesteps)
        # Lower orders at the end stabilise runs of few steps.
        few = config["lower_order_final"] and steps < 15
        final = index == steps - 1 and (config["euler_at_final"] or few or config["final_sigmas_type"] == "zero")
        second_last = index == steps - 2 and few

        algorithm = config["algorithm_type"]
        if algorithm in ("dpmsolver++", "sde-dpmsolver++"):
            converted = self._data_prediction(model_output, sample)
        else:
            converted = self._noise_prediction(model_output, sample, threshold=True)
        self._remember(converted)
        noise = sde_noise(generator, model_output.shape, self.name) if algorithm.startswith("sde-") else None

        solver_order = int(config["solver_order"])
        if solver_order == 1 or self.lower_order_nums < 1 or final:
            order = 1
        elif solver_order == 2 or self.lower_order_nums < 2 or second_last:
            order = 2
        else:
            order = 3
        prev_sample = self._update(order, sample, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, solver_order)
        return prev_sample

    def _update(self, order: int, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """diffusers' first-order update and multistep second/third-order ones, from the newest outputs."""
        assert self.step_index is not None
        index = self.step_index
        target, s0 = self._level(index + 1), self._level(index)
        h = target.lam - s0.lam
        weights = dpm_coefficients(self.config["algorithm_type"], target, s0, h)
        outputs = self._history(order)
        terms = [(weights.sample, sample), (weights.d0, outputs[0])]
        if order == 2:
            s1 = self._level(index - 1)
            r0 = (s0.lam - s1.lam) / h
            d1 = (1.0 / r0) * (outputs[0] - outputs[1])
            midpoint = self.config["solver_type"] == "midpoint"
            terms.append((weights.d1_midpoint if midpoint else weights.d1_heun, d1))
        elif order == 3:
            s1, s2 = self._level(index - 1), self._level(index - 2)
            r0, r1 = (s0.lam - s1.lam) / h, (s1.lam - s2.lam) / h
            d1_0, d1_1 = (1.0 / r0) * (outputs[0] - outputs[1]), (1.0 / r1) * (outputs[1] - outputs[2])
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
            terms += [(weights.d1_heun, d1), (weights.d2, d2)]
        if noise is not None:
            terms.append((weights.noise, noise))
        return weighted_sum(terms)
