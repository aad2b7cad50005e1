"""The numpy generator against torch's CPU generator, bit for bit (torch is imported only here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioldm_trt.engine.random import TorchGenerator, fresh_seed

SEEDS = (0, 1, 42, 2**31 - 1, 2**32 - 1, 2**32, 2**32 + 5, 2**63 - 1, 2**64 - 1, -1, -(2**63))
#: Below 16 elements, exactly 16, not multiples of 16, and latent shapes of the pipeline.
SHAPES = ((1,), (2,), (7,), (15,), (16,), (17,), (31,), (48,), (3, 5, 7), (1, 8, 125, 16), (2, 8, 64, 16))


def _bits(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("seed", SEEDS)
def test_randn_equals_torch_bit_for_bit(seed: int) -> None:
    for shape in SHAPES:
        expected = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).numpy()
        actual = TorchGenerator(seed).randn(shape)
        assert actual.dtype == np.float32 and actual.shape == shape
        np.testing.assert_array_equal(_bits(actual), _bits(expected), err_msg=f"seed {seed}, shape {shape}")


@pytest.mark.parametrize("seed", (0, 7, 2**63 - 1))
def test_later_draws_continue_the_same_stream(seed: int) -> None:
    """Draws after the first (DDIM eta noise, ancestral samplers) continue torch's stream, including the
    cached second sample of the small-size path."""
    shapes = ((1, 8, 25, 16), (3,), (1, 8, 25, 16), (5,), (2,), (17,), (1,), (40,))
    torch_generator = torch.Generator().manual_seed(seed)
    ours = TorchGenerator(seed)
    for shape in shapes:
        expected = torch.randn(shape, generator=torch_generator, dtype=torch.float32).numpy()
        np.testing.assert_array_equal(_bits(ours.randn(shape)), _bits(expected), err_msg=f"shape {shape}")


def test_many_seeds_on_a_latent() -> None:
    """Rare roundings (the fused multiply-adds of torch's polynomials) show only over many samples."""
    shape = (2, 8, 51, 16)
    for seed in range(0, 200_000, 1009):
        expected = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).numpy()
        np.testing.assert_array_equal(_bits(TorchGenerator(seed).randn(shape)), _bits(expected), f"seed {seed}")


@pytest.mark.parametrize("seed", (2**64, -(2**63) - 1, 1.5, True, "3"))
def test_bad_seed_is_a_value_error(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        TorchGenerator(seed)  # type: ignore[arg-type]


def test_fresh_seed_is_usable_by_torch() -> None:
    seed = fresh_seed()
    expected = torch.randn((20,), generator=torch.Generator().manual_seed(seed)).numpy()
    np.testing.assert_array_equal(_bits(TorchGenerator(seed).randn((20,))), _bits(expected))
