"""DPM-Solver and DPM-Solver++ (https://huggingface.co/papers/2206.00927), singlestep: a port of diffusers'
DPMSolverSinglestepScheduler, which restarts each group of ``solver_order`` steps from the group's first sample."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import BETA_SCHEDULES
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


class DPMSolverSinglestepScheduler(MultistepScheduler):
    name = "DPMSolverSinglestepScheduler"
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
        "lower_order_final": False,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "final_sigmas_type": "zero",
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "solver_order": (1, 2, 3),
        "prediction_type": PREDICTION_TYPES,
        "algorithm_type": ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "deis"),
        "solver_type": ("midpoint", "heun", "logrho", "bh1", "bh2"),
        "use_beta_sigmas": (False,),
        "use_flow_sigmas": (False,),
        "final_sigmas_type": ("zero", "sigma_min"),
        "variance_type": (None,),
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        adopt_dpm_aliases(self.config, self.name)
        if self.config["algorithm_type"] == "dpmsolver" and self.config["thresholding"]:
            # diffusers indexes its alpha table with a None timestep there and fails.
            raise ValueError(f"{self.name}: thresholding is not supported with algorithm_type='dpmsolver'")
        self.order_list: list[int] = []
        self.sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps = self._spaced(num_inference_steps, self._clipped_end())  # always "linspace" here
        respaced = self._respaced(num_inference_steps, round_timesteps=True)
        if respaced is None:
            sigmas = self._interpolated(timesteps)
        else:
            timesteps, sigmas = respaced
        final = float(self.train_sigmas[0]) if self.config["final_sigmas_type"] == "sigma_min" else 0.0
        self._set_schedule(timesteps, sigmas, final)
        self.sample = None
        # diffusers switches lower_order_final on for uneven groups and a zero final sigma (for good: in the config).
        order = int(self.config["solver_order"])
        if num_inference_steps % order or self.config["final_sigmas_type"] == "zero":
            self.config["lower_order_final"] = True
        self.order_list = self._orders(num_inference_steps)

    def _orders(self, steps: int) -> list[int]:
        """diffusers' ``get_order_list``: the solver order of each step, cycling 1..solver_order per group."""
        order = int(self.config["solver_order"])
        cycle = list(range(1, order + 1))
        if not self.config["lower_order_final"]:
            orders = cycle * (steps // order)
        elif order == 3:
            tails = {0: [1, 2, 1], 1: [1], 2: [1, 2]}
            orders = cycle * (steps // 3 - (steps % 3 == 0)) + tails[steps % 3]
        elif order == 2:
            orders = cycle * (steps // 2 - (steps % 2 == 0)) + ([1, 1] if steps % 2 == 0 else [1])
        else:
            orders = [1] * steps
        if self.config["final_sigmas_type"] == "zero":
            orders[-1] = 1
        return orders

    def _advance(self, model_output: np.ndarray, sample: np.ndarray, generator: TorchGenerator | None) -> np.ndarray:
        assert self.step_index is not None
        algorithm = self.config["algorithm_type"]
        if algorithm in ("dpmsolver++", "sde-dpmsolver++"):
            converted = self._data_prediction(model_output, sample)
        else:
            converted = self._noise_prediction(model_output, sample, threshold=False)
        self._remember(converted)
        noise = sde_noise(generator, model_output.shape, self.name) if algorithm == "sde-dpmsolver++" else None
        order = self.order_list[self.step_index]
        while self.model_outputs[-order] is None:  # a run that starts mid-schedule warms up again
            order -= 1
        if order == 1:
            self.sample = sample
        assert self.sample is not None
        return self._update(order, self.sample, noise)

    def _update(self, order: int, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """diffusers' singlestep update of ``order`` from the group's first ``sample`` to the next level."""
        assert self.step_index is not None
        index = self.step_index
        target = self._level(index + 1)
        levels = [self._level(index - k) for k in range(order)]  # s0 (newest), s1, s2
        base = levels[-1]
        h = target.lam - base.lam
        weights = dpm_coefficients(self.config["algorithm_type"], target, base, h)
        outputs = self._history(order)
        terms = [(weights.sample, sample), (weights.d0, outputs[-1])]
        midpoint = self.config["solver_type"] == "midpoint"
        if order == 2:
            r0 = (levels[0].lam - base.lam) / h
            d1 = (1.0 / r0) * (outputs[0] - outputs[1])
            terms.append((weights.d1_midpoint if midpoint else weights.d1_heun, d1))
        elif order == 3:
            r0, r1 = (levels[0].lam - base.lam) / h, (levels[1].lam - base.lam) / h
            d1_0, d1_1 = (1.0 / r1) * (outputs[1] - outputs[2]), (1.0 / r0) * (outputs[0] - outputs[2])
            if midpoint:
                terms.append((weights.d1_heun, d1_1))
            else:
                d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
                d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
                terms += [(weights.d1_heun, d1), (weights.d2, d2)]
        if noise is not None:
            terms.append((weights.noise, noise))
        return weighted_sum(terms)
