"""What diffusers' multistep ODE solvers (DPM-Solver(++), single- and multistep, UniPC, DEIS) share, in numpy.

They walk a variance-preserving schedule through ``alpha_t``, ``sigma_t`` and ``lambda_t = log(alpha_t / sigma_t)``
derived from float32 sigmas, convert the model output to a data (x0) or noise prediction, keep the last few of
those, and find their place in ``timesteps`` on the first ``step``.

diffusers computes the schedule in float64 numpy, as this port does, and steps with 0-dim float32 torch tensors
(DEIS's third-order weights with numpy's float32 ``log``). This port steps in float64, with diffusers' expressions
on the float32 sigmas, model output and sample, and rounds the new sample to float32 once. A float32 port cannot
agree with diffusers on every CPU: float32 ``exp``/``log``/``sqrt`` are not correctly rounded, in torch (MKL) nor
numpy (SIMD), and their last bit differs between CPUs; steps that subtract nearly equal large terms amplify that
a thousandfold. Such are the first step from the top of the schedule of the noise-prediction
solvers (DEIS, ``dpmsolver``) with v-prediction or thresholding, whose two terms are far larger than the result,
and DEIS's third-order weights, differences of nearly equal integrals. In float64 every step is the exact
algorithm's result to float32 precision, on every CPU.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .base import Scheduler, threshold_sample
from .sigmas import SIGMA_CONVERSIONS, converted_sigmas, interpolated_sigmas, sigma_to_t, train_alphas_cumprod
from .sigmas import train_sigmas as sigmas_of

if TYPE_CHECKING:
    from ..random import TorchGenerator

F64 = np.float64
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


class Level(NamedTuple):
    """A noise level of the VP schedule: ``x_t = alpha * x0 + sigma * noise``, ``lam = log(alpha / sigma)``."""

    alpha: np.float64
    sigma: np.float64
    lam: np.float64


def level_of(sigma: float) -> Level:
    """diffusers' ``_sigma_to_alpha_sigma_t`` and ``lambda_t`` for a sigma of the float32 schedule, in float64
    (``lam`` is ``inf`` at a final zero sigma, as in diffusers)."""
    sigma = F64(sigma)
    alpha = 1.0 / np.sqrt(sigma * sigma + 1.0)
    sigma_t = sigma * alpha
    return Level(alpha, sigma_t, np.log(alpha) - np.log(sigma_t))


def weighted_sum(terms: Sequence[tuple[np.float64, np.ndarray]]) -> np.ndarray:
    """``c0 * x0 + c1 * x1 + ...``, the form of diffusers' update expressions, in float64."""
    (coefficient, value), *rest = terms
    total: np.ndarray = coefficient * value
    for coefficient, value in rest:
        total = total + coefficient * value
    return total


class DpmCoefficients(NamedTuple):
    """The scalar weights of one DPM-Solver update from ``base`` to ``target``, per term of the update.

    ``d1_midpoint`` weighs the first difference in second-order midpoint updates; ``d1_heun`` in second-order
    Heun updates and in all third-order ones; ``noise`` is zero for the ODE solvers.
    """

    sample: np.float64
    d0: np.float64
    d1_midpoint: np.float64
    d1_heun: np.float64
    d2: np.float64
    noise: np.float64


def dpm_coefficients(algorithm_type: str, target: Level, base: Level, h: np.float64) -> DpmCoefficients:
    """The weights of diffusers' DPM-Solver updates (https://huggingface.co/papers/2211.01095) for a step of
    log-SNR length ``h``, negated where diffusers subtracts the term (negation is exact)."""
    alpha_t, sigma_t = target.alpha, target.sigma
    if algorithm_type == "dpmsolver++":
        decay = np.exp(-h) - 1.0
        return DpmCoefficients(
            sample=sigma_t / base.sigma,
            d0=-(alpha_t * decay),
            d1_midpoint=-(0.5 * (alpha_t * decay)),
            d1_heun=alpha_t * (decay / h + 1.0),
            d2=-(alpha_t * ((decay + h) / (h * h) - 0.5)),
            noise=F64(0.0),
        )
    if algorithm_type == "dpmsolver":
        growth = np.exp(h) - 1.0
        return DpmCoefficients(
            sample=alpha_t / base.alpha,
            d0=-(sigma_t * growth),
            d1_midpoint=-(0.5 * (sigma_t * growth)),
            d1_heun=-(sigma_t * (growth / h - 1.0)),
            d2=-(sigma_t * ((growth - h) / (h * h) - 0.5)),
            noise=F64(0.0),
        )
    if algorithm_type == "sde-dpmsolver++":
        kept = 1.0 - np.exp(-2.0 * h)
        return DpmCoefficients(
            sample=sigma_t / base.sigma * np.exp(-h),
            d0=alpha_t * kept,
            d1_midpoint=0.5 * (alpha_t * kept),
            d1_heun=alpha_t * (kept / (-2.0 * h) + 1.0),
            d2=alpha_t * ((kept - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5),
            noise=sigma_t * np.sqrt(kept),
        )
    # sde-dpmsolver: diffusers has no third-order update for it (the schedulers reject that order).
    growth = np.exp(h) - 1.0
    return DpmCoefficients(
        sample=alpha_t / base.alpha,
        d0=-(2.0 * (sigma_t * growth)),
        d1_midpoint=-(sigma_t * growth),
        d1_heun=-(2.0 * (sigma_t * (growth / h - 1.0))),
        d2=F64(np.nan),
        noise=sigma_t * np.sqrt(np.exp(2.0 * h) - 1.0),
    )


def adopt_dpm_aliases(config: dict[str, Any], name: str) -> None:
    """diffusers' DPM-Solver ``__init__`` checks and renames, applied to ``config`` in place.

    A final sigma of zero needs a data-prediction algorithm; the other solvers' names (``deis``, ``logrho``,
    ``bh1``, ``bh2``) are taken for ``dpmsolver++`` and ``midpoint``, so configs copied across schedulers work.
    """
    if config["algorithm_type"] not in ("dpmsolver++", "sde-dpmsolver++") and config["final_sigmas_type"] == "zero":
        raise ValueError(
            f"{name}: final_sigmas_type='zero' is not supported with algorithm_type={config['algorithm_type']!r}"
            " (as in diffusers); use final_sigmas_type='sigma_min'"
        )
    if config["algorithm_type"] == "deis":
        config["algorithm_type"] = "dpmsolver++"
    if config["solver_type"] in ("logrho", "bh1", "bh2"):
        config["solver_type"] = "midpoint"


def multistep_timesteps(
    spacing: str, num_inference_steps: int, last_timestep: int, num_train_timesteps: int, steps_offset: int
) -> np.ndarray:
    """The int64 timesteps, descending, for ``timestep_spacing`` as the multistep solvers space them: from
    ``num_inference_steps + 1`` points, dropping the last, below ``last_timestep`` (the ``lambda_min_clipped``
    bound of DPM-Solver, else ``num_train_timesteps``)."""
    n = num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, last_timestep - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last_timestep // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + steps_offset
    return np.arange(last_timestep, 0, -num_train_timesteps / n).round().astype(np.int64) - 1


def index_for_timestep(timesteps: np.ndarray, timestep: float) -> int:
    """diffusers' ``index_for_timestep``: the second match when ``timestep`` repeats, the last step if absent."""
    matches = np.flatnonzero(timesteps == timestep)
    if not len(matches):
        return len(timesteps) - 1
    return int(matches[1 if len(matches) > 1 else 0])


class MultistepScheduler(Scheduler):
    """The schedule, step counter and output history of the exponential-integrator solvers.

    ``sigmas`` (float32) has one more entry than ``timesteps``: the level each step lands on. The step index
    is found on the first ``step`` of a run, then advances by one per ``step``.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        chosen = [key for key in SIGMA_CONVERSIONS if self.config.get(key)]
        if len(chosen) > 1:
            raise ValueError(f"{self.name}: only one of {', '.join(chosen)} can be set")
        self.alphas_cumprod = train_alphas_cumprod(self.config)
        self.train_sigmas = sigmas_of(self.alphas_cumprod)
        self.sigmas = np.zeros(0, dtype=np.float32)
        self.timesteps = np.zeros(0, dtype=np.int64)
        self.num_inference_steps = 0
        self.step_index: int | None = None
        self.lower_order_nums = 0
        self.model_outputs: list[np.ndarray | None] = []

    def _respaced(self, num_inference_steps: int, *, round_timesteps: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """The (timesteps, float64 sigmas) of the configured Karras/exponential/Lu respacing, or None.

        Karras and Lu timesteps are rounded when ``round_timesteps``; exponential ones never (diffusers).
        """
        log_train = np.log(self.train_sigmas)
        respaced: tuple[np.ndarray, np.ndarray] | None
        rounded = bool(self.config["use_karras_sigmas"])
        if self.config.get("use_lu_lambdas") and not rounded:
            # "lambdas" in diffusers, but log sigmas: uniform steps in log-SNR.
            log_max, log_min = float(log_train[-1]), float(log_train[0])
            ramp = np.linspace(0, 1, num_inference_steps)
            sigmas = np.exp(log_max + ramp * (log_min - log_max))
            respaced = sigma_to_t(sigmas, log_train), sigmas
            rounded = True
        else:
            respaced = converted_sigmas(self.config, self.train_sigmas[::-1], log_train, num_inference_steps)
        if respaced is None:
            return None
        timesteps, sigmas = respaced
        return (timesteps.round() if round_timesteps and rounded else timesteps), sigmas

    def _set_schedule(self, timesteps: np.ndarray, sigmas: np.ndarray, final_sigma: float) -> None:
        """Install ``timesteps`` (truncated to int64, as torch casts) and ``sigmas`` plus the final level."""
        timesteps = timesteps.astype(np.int64)
        if np.count_nonzero(timesteps == timesteps[0]) > 1:
            # e.g. Karras sigmas over the squaredcos_cap_v2 schedule. diffusers starts at the second occurrence of
            # the first timestep and steps past its last sigma.
            raise ValueError(
                f"{self.name}: this config repeats the first timestep at {len(timesteps)} steps, which diffusers"
                " cannot run either; change use_karras_sigmas/use_exponential_sigmas or beta_schedule"
            )
        self.timesteps = timesteps
        self.sigmas = np.concatenate([sigmas, [final_sigma]]).astype(np.float32)
        self.num_inference_steps = len(self.timesteps)
        self.model_outputs = [None] * int(self.config["solver_order"])
        self.lower_order_nums = 0
        self.step_index = None
        self.begin_index = None  # as diffusers' set_timesteps

    def _spaced(self, num_inference_steps: int, last_timestep: int | None = None) -> np.ndarray:
        """The configured spacing of ``num_inference_steps`` timesteps below ``last_timestep`` (default: all)."""
        train_steps = int(self.config["num_train_timesteps"])
        return multistep_timesteps(
            self.config.get("timestep_spacing", "linspace"),
            num_inference_steps,
            train_steps if last_timestep is None else last_timestep,
            train_steps,
            int(self.config.get("steps_offset", 0)),
        )

    def _clipped_end(self) -> int:
        """DPM-Solver's timestep bound: ``num_train_timesteps`` less the steps whose training ``lambda_t`` is below
        ``lambda_min_clipped`` (critical for the cosine schedule, diffusers says)."""
        alpha = np.sqrt(self.alphas_cumprod).astype(np.float64)
        sigma = np.sqrt(np.float32(1.0) - self.alphas_cumprod).astype(np.float64)
        with np.errstate(divide="ignore"):
            lambdas = np.log(alpha).astype(np.float32) - np.log(sigma).astype(np.float32)
        clipped = np.searchsorted(lambdas[::-1].astype(np.float64), float(self.config["lambda_min_clipped"]))
        return int(self.config["num_train_timesteps"]) - int(clipped)

    def _interpolated(self, timesteps: np.ndarray) -> np.ndarray:
        """The float64 training sigmas at integer ``timesteps``."""
        return interpolated_sigmas(timesteps, self.train_sigmas)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """``alpha_t x + sigma_t noise`` at the level of step ``index`` (see ``Scheduler.add_noise``), in float32
        as diffusers' ``_sigma_to_alpha_sigma_t`` computes it."""
        sigma = np.float32(self.sigmas[index])
        alpha_t = np.float32(1.0) / np.sqrt(sigma * sigma + np.float32(1.0))
        return np.asarray(alpha_t * original + (sigma * alpha_t) * noise, dtype=np.float32)

    def _level(self, index: int) -> Level:
        return level_of(float(self.sigmas[index]))

    def _data_prediction(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """The predicted clean sample x0 at the current step, dynamically thresholded if configured."""
        prediction_type = self.config["prediction_type"]
        if prediction_type == "sample":
            x0 = model_output
        else:
            assert self.step_index is not None
            alpha_t, sigma_t, _ = self._level(self.step_index)
            if prediction_type == "epsilon":
                x0 = (sample - sigma_t * model_output) / alpha_t
            else:  # v_prediction
                x0 = alpha_t * sample - sigma_t * model_output
        if self.config["thresholding"]:
            x0 = threshold_sample(x0, self.config["dynamic_thresholding_ratio"], self.config["sample_max_value"])
        return x0

    def _noise_prediction(self, model_output: np.ndarray, sample: np.ndarray, *, threshold: bool) -> np.ndarray:
        """The predicted noise at the current step; with ``threshold`` (DPM-Solver's way) through a thresholded x0."""
        assert self.step_index is not None
        alpha_t, sigma_t, _ = self._level(self.step_index)
        prediction_type = self.config["prediction_type"]
        if prediction_type == "epsilon":
            epsilon = model_output
        elif prediction_type == "sample":
            epsilon = (sample - alpha_t * model_output) / sigma_t
        else:  # v_prediction
            epsilon = alpha_t * model_output + sigma_t * sample
        if threshold and self.config["thresholding"]:
            x0 = threshold_sample(
                (sample - sigma_t * epsilon) / alpha_t,
                self.config["dynamic_thresholding_ratio"],
                self.config["sample_max_value"],
            )
            epsilon = (sample - alpha_t * x0) / sigma_t
        return epsilon

    def _remember(self, converted: np.ndarray) -> None:
        """Push the newest converted model output, dropping the oldest."""
        self.model_outputs = [*self.model_outputs[1:], converted]

    def _history(self, count: int) -> list[np.ndarray]:
        """The ``count`` newest converted model outputs, newest first."""
        outputs = [output for output in self.model_outputs[-count:][::-1] if output is not None]
        assert len(outputs) == count, "the solver order outran the model outputs"
        return outputs

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        generator: TorchGenerator | None = None,
    ) -> np.ndarray:
        """One solver step, in float64 (see the module's docstring); ``eta`` is not a parameter of these solvers
        and is ignored, as diffusers does."""
        if not self.num_inference_steps:
            raise ValueError(f"{self.name}: call set_timesteps before step")
        if self.step_index is None:
            self.step_index = (
                index_for_timestep(self.timesteps, timestep) if self.begin_index is None else self.begin_index
            )
        # The last step may land on sigma 0 (lambda = inf): torch computes through the infinities silently.
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            prev_sample = self._advance(
                np.asarray(model_output, dtype=np.float64), np.asarray(sample, dtype=np.float64), generator
            )
        self.step_index += 1
        return prev_sample.astype(np.float32)

    @abstractmethod
    def _advance(self, model_output: np.ndarray, sample: np.ndarray, generator: TorchGenerator | None) -> np.ndarray:
        """The sample at the next level (float64), from the model output at ``self.step_index``."""


def sde_noise(generator: TorchGenerator | None, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The step noise of the SDE solvers: ``randn_tensor`` with the run's generator, as diffusers draws it."""
    if generator is None:
        raise ValueError(f"{name} with an SDE algorithm_type needs a generator for its noise")
    return generator.randn(shape)
