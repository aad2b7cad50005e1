"""DEIS (https://huggingface.co/papers/2204.13902): a port of diffusers' DEISMultistepScheduler, the log-rho
multistep exponential integrator of the noise prediction, up to third order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import BETA_SCHEDULES, TIMESTEP_SPACINGS
from .multistep import F64, PREDICTION_TYPES, MultistepScheduler, dpm_coefficients, weighted_sum

if TYPE_CHECKING:
    from ..random import TorchGenerator


class DEISMultistepScheduler(MultistepScheduler):
    name = "DEISMultistepScheduler"
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
        "algorithm_type": "deis",
        "solver_type": "logrho",
        "lower_order_final": True,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "solver_order": (1, 2, 3),
        "prediction_type": PREDICTION_TYPES,
        # diffusers takes the other solvers' names for its only algorithm and solver.
        "algorithm_type": ("deis", "dpmsolver", "dpmsolver++"),
        "solver_type": ("logrho", "midpoint", "heun", "bh1", "bh2"),
        "use_beta_sigmas": (False,),
        "use_flow_sigmas": (False,),
        "timestep_spacing": TIMESTEP_SPACINGS,
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.config["algorithm_type"], self.config["solver_type"] = "deis", "logrho"

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps = self._spaced(num_inference_steps)
        respaced = self._respaced(num_inference_steps, round_timesteps=True)
        if respaced is None:
            sigmas, final = self._interpolated(timesteps), float(self.train_sigmas[0])
        else:
            timesteps, sigmas = respaced
            final = float(sigmas[-1])
        self._set_schedule(timesteps, sigmas, final)

    def _advance(self, model_output: np.ndarray, sample: np.ndarray, generator: TorchGenerator | None) -> np.ndarray:
        assert self.step_index is not None
        index, steps = self.step_index, len(self.timesteps)
        few = self.config["lower_order_final"] and steps < 15
        alpha_t, sigma_t, _ = self._level(index)
        self._remember((sample - alpha_t * self._data_prediction(model_output, sample)) / sigma_t)

        solver_order = int(self.config["solver_order"])
        if solver_order == 1 or self.lower_order_nums < 1 or (few and index == steps - 1):
            order = 1
        elif solver_order == 2 or self.lower_order_nums < 2 or (few and index == steps - 2):
            order = 2
        else:
            order = 3
        prev_sample = self._update(order, sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, solver_order)
        return prev_sample

    def _update(self, order: int, sample: np.ndarray) -> np.ndarray:
        """diffusers' DEIS update of ``order``: the first order is DDIM's (DPM-Solver's); the higher ones
        integrate the Lagrange polynomial through the last outputs in log rho, rho = sigma / alpha."""
        assert self.step_index is not None
        index = self.step_index
        target, s0 = self._level(index + 1), self._level(index)
        outputs = self._history(order)
        if order == 1:
            weights = dpm_coefficients("dpmsolver", target, s0, target.lam - s0.lam)
            return weighted_sum([(weights.sample, sample), (weights.d0, outputs[0])])
        rhos = [level.sigma / level.alpha for level in (target, *(self._level(index - k) for k in range(order)))]
        rho_t, knots = rhos[0], rhos[1:]
        total = sample / s0.alpha
        for k, output in enumerate(outputs):
            others = knots[k + 1 :] + knots[:k]
            total = total + (_integral(rho_t, knots[k], others) - _integral(knots[0], knots[k], others)) * output
        return target.alpha * total


def _integral(t: np.float64, b: np.float64, others: list[np.float64]) -> np.float64:
    """diffusers' ``ind_fn``: an antiderivative in ``t`` of the Lagrange basis polynomial (in log) that is 1 at
    ``b`` and 0 at ``others``."""
    log_t, log_b = np.log(t), np.log(b)
    if len(others) == 1:
        log_c = np.log(others[0])
        return F64(t * (-log_c + log_t - 1) / (log_b - log_c))
    log_c, log_d = np.log(others[0]), np.log(others[1])
    numerator = t * (log_c * (log_d - log_t + 1) - log_d * log_t + log_d + log_t * log_t - 2 * log_t + 2)
    return F64(numerator / ((log_b - log_c) * (log_b - log_d)))
