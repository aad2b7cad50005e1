"""The multistep solver ports (DPM-Solver multi/singlestep, UniPC, DEIS) stepped side by side with diffusers.

Each case runs both schedulers through a whole schedule on the same random float32 latents, each feeding its
own samples to one fixed function of (sample, t) standing in for the UNet, so that differences propagate as in
the real loop; every step must agree to 1e-5 (of the sample's magnitude).

The reference is diffusers' scheduler stepping in float64 (its float32 schedule, float64 samples and model
outputs), not in float32: torch's float32 exp/log/sqrt differ in the last bit between CPUs, and the steps that
subtract two nearly equal large terms (one step from the top of the schedule with v-prediction, DEIS's
third-order weights) amplify that to 1e-4, so float32 diffusers gives different answers on different CPUs.
Against float64 the port must be as exact as float32 allows, on every CPU. The pipeline-level parity against
float32 AudioLDMPipeline is tests/test_scheduler_parity.py.
"""

from __future__ import annotations

import inspect
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers.schedulers import scheduling_dpmsolver_singlestep
from diffusers.utils.torch_utils import randn_tensor

from audioldm_trt.engine.random import TorchGenerator
from audioldm_trt.engine.schedulers import SCHEDULERS, Scheduler
from audioldm_trt.engine.schedulers.deis_multistep import DEISMultistepScheduler
from audioldm_trt.engine.schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler
from audioldm_trt.engine.schedulers.dpmsolver_singlestep import DPMSolverSinglestepScheduler
from audioldm_trt.engine.schedulers.multistep import MultistepScheduler
from audioldm_trt.engine.schedulers.unipc_multistep import UniPCMultistepScheduler

CLASSES: tuple[type[MultistepScheduler], ...] = (
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    UniPCMultistepScheduler,
    DEISMultistepScheduler,
)
BY_NAME = {cls.name: cls for cls in CLASSES}
RTOL = 1e-5
#: AudioLDM's training schedule.
AUDIOLDM = {"beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195}
SHAPE = (2, 8, 5, 4)
#: Every case runs one and two steps: the first step, from the top of the schedule, is the least well-conditioned.
ALL_STEPS = (1, 2, 5, 10, 25, 50)
FEW_STEPS = (1, 2, 3, 10, 25)

DPM = "DPMSolverMultistepScheduler"
SINGLE = "DPMSolverSinglestepScheduler"
UNIPC = "UniPCMultistepScheduler"
DEIS = "DEISMultistepScheduler"
SIGMA_MIN = {"final_sigmas_type": "sigma_min"}

#: (scheduler, config, step counts): configs are on top of AudioLDM's betas unless they set their own.
CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    *[(DPM, {"solver_order": order}, ALL_STEPS) for order in (1, 2, 3)],
    *[(DPM, {"solver_order": order, "algorithm_type": "dpmsolver", **SIGMA_MIN}, ALL_STEPS) for order in (1, 2, 3)],
    (DPM, {"solver_order": 3, "solver_type": "heun", "lower_order_final": False}, ALL_STEPS),
    (DPM, {"solver_type": "heun", "algorithm_type": "dpmsolver", **SIGMA_MIN}, FEW_STEPS),
    (DPM, {"use_karras_sigmas": True, "solver_order": 3}, ALL_STEPS),
    (DPM, {"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1, "solver_order": 3}, ALL_STEPS),
    (DPM, {"use_lu_lambdas": True}, FEW_STEPS),
    (DPM, {"use_exponential_sigmas": True, **SIGMA_MIN}, FEW_STEPS),
    (DPM, {"euler_at_final": True, **SIGMA_MIN, "solver_order": 3}, FEW_STEPS),
    (DPM, {"timestep_spacing": "leading", "steps_offset": 1}, ALL_STEPS),
    (DPM, {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}, ALL_STEPS),
    (DPM, {"prediction_type": "v_prediction", "solver_order": 3}, ALL_STEPS),
    (DPM, {"prediction_type": "v_prediction", "algorithm_type": "dpmsolver", **SIGMA_MIN}, FEW_STEPS),
    (DPM, {"prediction_type": "sample", "thresholding": True, "sample_max_value": 1.5}, FEW_STEPS),
    (DPM, {"thresholding": True, "sample_max_value": 1.2, "algorithm_type": "dpmsolver", **SIGMA_MIN}, FEW_STEPS),
    (DPM, {"algorithm_type": "deis", **SIGMA_MIN}, FEW_STEPS),
    (DPM, {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "solver_order": 3}, FEW_STEPS),
    *[(DPM, {"algorithm_type": "sde-dpmsolver++", "solver_order": order}, FEW_STEPS) for order in (1, 2, 3)],
    (DPM, {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, FEW_STEPS),
    *[
        (DPM, {"algorithm_type": "sde-dpmsolver", "solver_type": kind, **SIGMA_MIN}, FEW_STEPS)
        for kind in ("midpoint", "heun")
    ],
    *[(SINGLE, {"solver_order": order}, ALL_STEPS) for order in (1, 2, 3)],
    *[(SINGLE, {"solver_order": order, "solver_type": "heun", **SIGMA_MIN}, (1, 6, 12, 24)) for order in (2, 3)],
    (SINGLE, {"solver_order": 3, "algorithm_type": "dpmsolver", **SIGMA_MIN}, ALL_STEPS),
    (SINGLE, {"solver_order": 3, "lower_order_final": True, "use_karras_sigmas": True}, ALL_STEPS),
    (SINGLE, {"use_exponential_sigmas": True, "prediction_type": "v_prediction"}, FEW_STEPS),
    (SINGLE, {"prediction_type": "v_prediction", "lambda_min_clipped": -5.1}, ALL_STEPS),
    (SINGLE, {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, FEW_STEPS),
    (
        SINGLE,
        {"prediction_type": "v_prediction", "algorithm_type": "dpmsolver", "solver_order": 3, **SIGMA_MIN},
        FEW_STEPS,
    ),
    *[(UNIPC, {"solver_order": order}, ALL_STEPS) for order in (1, 2, 3)],
    *[(UNIPC, {"solver_order": order, "solver_type": "bh1", **SIGMA_MIN}, ALL_STEPS) for order in (1, 2, 3)],
    (UNIPC, {"solver_order": 3, "predict_x0": False, **SIGMA_MIN}, ALL_STEPS),
    (UNIPC, {"solver_order": 3, "disable_corrector": [0, 3], "lower_order_final": False, **SIGMA_MIN}, FEW_STEPS),
    (UNIPC, {"solver_order": 2, "disable_corrector": [1], "lower_order_final": False, **SIGMA_MIN}, FEW_STEPS),
    (UNIPC, {"use_karras_sigmas": True, "solver_order": 3}, ALL_STEPS),
    (UNIPC, {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 40.0, **SIGMA_MIN}, FEW_STEPS),
    (UNIPC, {"use_exponential_sigmas": True, **SIGMA_MIN}, FEW_STEPS),
    (UNIPC, {"timestep_spacing": "leading", "steps_offset": 1, "solver_type": "midpoint"}, ALL_STEPS),
    (UNIPC, {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True}, FEW_STEPS),
    (UNIPC, {"prediction_type": "v_prediction", "solver_order": 3}, ALL_STEPS),
    (UNIPC, {"prediction_type": "v_prediction", "predict_x0": False, "solver_order": 3, **SIGMA_MIN}, FEW_STEPS),
    (UNIPC, {"prediction_type": "sample", "thresholding": True, "sample_max_value": 1.5}, FEW_STEPS),
    *[(DEIS, {"solver_order": order}, ALL_STEPS) for order in (1, 2, 3)],
    (DEIS, {"solver_order": 3, "lower_order_final": False, "algorithm_type": "dpmsolver++"}, FEW_STEPS),
    (DEIS, {"use_karras_sigmas": True, "solver_order": 3}, ALL_STEPS),
    (DEIS, {"use_exponential_sigmas": True}, FEW_STEPS),
    (DEIS, {"timestep_spacing": "leading", "steps_offset": 1}, FEW_STEPS),
    (DEIS, {"timestep_spacing": "trailing", "solver_order": 3}, FEW_STEPS),
    (DEIS, {"prediction_type": "v_prediction", "solver_order": 3}, ALL_STEPS),
    (DEIS, {"prediction_type": "v_prediction", "use_karras_sigmas": True, "lower_order_final": False}, FEW_STEPS),
    (DEIS, {"prediction_type": "sample", "thresholding": True, "sample_max_value": 1.5}, FEW_STEPS),
]


def _model(sample: np.ndarray, t: float, weights: np.ndarray) -> np.ndarray:
    """A stand-in UNet: a fixed smooth function of the sample and the timestep, in float64."""
    return np.tanh(sample.astype(np.float64) * 0.8 + t / 1000) + weights


def _case_id(case: tuple[str, dict[str, Any], tuple[int, ...]]) -> str:
    name, config, _ = case
    return name.removesuffix("Scheduler") + "-" + ",".join(f"{k}={v}" for k, v in config.items())


def _float32_noise(shape: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
    """``randn_tensor`` drawn in float32, as a float32 run draws it, then widened to the requested dtype."""
    return randn_tensor(shape, **{**kwargs, "dtype": torch.float32}).to(kwargs["dtype"])


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_steps_match_diffusers(
    case: tuple[str, dict[str, Any], tuple[int, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, overrides, step_counts = case
    config = {**AUDIOLDM, **overrides}
    # DPMSolverSinglestep draws its SDE noise in the sample's dtype.
    monkeypatch.setattr(scheduling_dpmsolver_singlestep, "randn_tensor", _float32_noise)
    for steps in step_counts:
        ours = BY_NAME[name](config)
        theirs = getattr(diffusers, name)(**config)
        ours.set_timesteps(steps)
        theirs.set_timesteps(steps)
        np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy(), err_msg=f"{steps} steps")
        np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=RTOL, err_msg=f"{steps} steps")
        # From here diffusers steps in float64, but for DPMSolverMultistep's sample term: its step casts the sample
        # to float32, and a float64 scalar times a float32 tensor is float32 in torch.
        theirs.sigmas = theirs.sigmas.double()

        rng = np.random.default_rng(steps)
        ours_sample = rng.standard_normal(SHAPE, dtype=np.float32)
        theirs_sample = torch.from_numpy(ours_sample.astype(np.float64))
        weights = np.float32(0.3) * rng.standard_normal(SHAPE, dtype=np.float32)
        generator, torch_generator = TorchGenerator(steps), torch.Generator().manual_seed(steps)
        stochastic = "generator" in inspect.signature(theirs.step).parameters
        for i, t in enumerate(ours.timesteps):
            output = _model(ours_sample, t, weights).astype(np.float32)
            ours_sample = ours.step(output, t, ours_sample, generator=generator)
            output = torch.from_numpy(_model(theirs_sample.numpy(), t, weights))
            extra = {"generator": torch_generator} if stochastic else {}
            theirs_sample = theirs.step(output, theirs.timesteps[i], theirs_sample, **extra).prev_sample
            expected = theirs_sample.numpy()
            assert ours_sample.dtype == np.float32
            assert expected.dtype == np.float64
            np.testing.assert_allclose(
                ours_sample, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max(), err_msg=f"{steps} steps, step {i}"
            )


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.name)
def test_unknown_key_is_an_error(cls: type[Scheduler]) -> None:
    with pytest.raises(ValueError, match="clip_sample_typo"):
        cls({"clip_sample_typo": True})


REJECTED: list[tuple[type[Scheduler], dict[str, Any], str]] = [
    *[(cls, {"use_beta_sigmas": True}, "use_beta_sigmas") for cls in CLASSES],
    *[(cls, {"use_flow_sigmas": True}, "use_flow_sigmas") for cls in CLASSES],
    *[(cls, {"prediction_type": "flow_prediction"}, "prediction_type") for cls in CLASSES],
    *[(cls, {"solver_order": 4}, "solver_order") for cls in CLASSES],
    *[(cls, {"beta_schedule": "exp"}, "beta_schedule") for cls in CLASSES],
    *[(cls, {"use_karras_sigmas": True, "use_exponential_sigmas": True}, "use_exponential_sigmas") for cls in CLASSES],
    (DPMSolverMultistepScheduler, {"variance_type": "learned"}, "variance_type"),
    (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver"}, "final_sigmas_type"),
    (DPMSolverMultistepScheduler, {"algorithm_type": "deis"}, "final_sigmas_type"),
    (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver", "solver_order": 3, **SIGMA_MIN}, "solver_order"),
    (DPMSolverMultistepScheduler, {"timestep_spacing": "karras"}, "timestep_spacing"),
    (DPMSolverSinglestepScheduler, {"algorithm_type": "sde-dpmsolver"}, "algorithm_type"),
    (DPMSolverSinglestepScheduler, {"variance_type": "learned_range"}, "variance_type"),
    (DPMSolverSinglestepScheduler, {"algorithm_type": "dpmsolver", "thresholding": True, **SIGMA_MIN}, "thresholding"),
    (UniPCMultistepScheduler, {"solver_p": object()}, "solver_p"),
    (UniPCMultistepScheduler, {"use_dynamic_shifting": True}, "use_dynamic_shifting"),
    (UniPCMultistepScheduler, {"shift_terminal": 0.1}, "shift_terminal"),
    (UniPCMultistepScheduler, {"solver_type": "bh1"}, "final_sigmas_type"),
    (UniPCMultistepScheduler, {"predict_x0": False}, "final_sigmas_type"),
    (UniPCMultistepScheduler, {"lower_order_final": False}, "final_sigmas_type"),
    (DEISMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
]


@pytest.mark.parametrize(("cls", "config", "key"), REJECTED, ids=[f"{c.name}-{k}" for c, _, k in REJECTED])
def test_unsupported_value_is_an_error_naming_the_key(cls: type[Scheduler], config: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        cls(config)


def test_sde_needs_a_generator() -> None:
    scheduler = DPMSolverMultistepScheduler({"algorithm_type": "sde-dpmsolver++"})
    scheduler.set_timesteps(5)
    sample = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="generator"):
        scheduler.step(sample, scheduler.timesteps[0], sample)


def test_step_before_set_timesteps_is_an_error() -> None:
    sample = np.zeros(SHAPE, dtype=np.float32)
    with pytest.raises(ValueError, match="set_timesteps"):
        UniPCMultistepScheduler().step(sample, 999, sample)


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_a_repeated_first_timestep_is_an_error_not_a_crash(name: str) -> None:
    """diffusers runs past its last sigma on this config; the port says so before any step."""
    config = {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}
    reference = getattr(diffusers, name)(**config)
    reference.set_timesteps(10)
    sample = torch.ones(1, 2, 4, 4)
    with pytest.raises((IndexError, AssertionError)):
        for t in reference.timesteps:
            sample = reference.step(sample * 0.1, t, sample).prev_sample
    with pytest.raises(ValueError, match="repeats the first timestep"):
        SCHEDULERS[name](config).set_timesteps(10)
