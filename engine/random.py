"""torch's CPU random generator in numpy, so that ``seed=s`` gives diffusers' noise for
``torch.Generator("cpu").manual_seed(s)`` without torch at run time.

What torch does, and this module replicates bit for bit:

* ``manual_seed(s)`` seeds a standard MT19937 with the low 32 bits of ``s`` (Knuth's initialisation).
* ``torch.randn(shape, dtype=float32)`` with 16 or more elements (``normal_fill_AVX2`` in ATen's
  ``DistributionTemplates.h``, the kernel x86-64 builds run on AVX2 and AVX-512 CPUs): first one float
  uniform per element, ``(u32 & 0xFFFFFF) * 2**-24``; then Box-Muller on each block of 16, pairing element
  ``j`` with ``j + 8``, with the Cephes ``log``/``sincos`` polynomials of ``avx_mathfun.h`` compiled with
  fused multiply-adds; if the size is not a multiple of 16, 16 fresh uniforms replace the last 16 elements
  and are transformed the same way.
* Fewer than 16 elements: one ``at::normal_distribution<double>`` sample per element (53-bit uniforms from
  two 32-bit draws, ``sqrt(-2 log1p(-u2)) * cos(2 pi u1)``, the ``sin`` twin kept for the next sample),
  rounded to float32.
"""

from __future__ import annotations

import math
import secrets

import numpy as np

_MT_STATE_SIZE = 624
_SEED_LOW = -(2**63)
_SEED_HIGH = 2**64 - 1


def fresh_seed() -> int:
    """A random seed in torch's ``manual_seed`` range, for runs the caller did not seed."""
    return secrets.randbits(63)


def check_seed(seed: object) -> int:
    """``seed`` as an int if torch's ``manual_seed`` takes it; ValueError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not _SEED_LOW <= seed <= _SEED_HIGH:
        raise ValueError(f"seed must be in [-2**63, 2**64 - 1] like torch's manual_seed, got {seed}")
    return seed


class TorchGenerator:
    """The stream of ``torch.Generator("cpu").manual_seed(seed)``; ``randn`` continues it as torch does."""

    def __init__(self, seed: int) -> None:
        seed = check_seed(seed)
        self.seed = seed
        self._mt = np.random.MT19937()
        self._mt.state = {"bit_generator": "MT19937", "state": {"key": _mt19937_key(seed), "pos": _MT_STATE_SIZE}}
        self._cached_normal: float | None = None

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """``torch.randn(shape, generator=self, dtype=torch.float32)``."""
        size = math.prod(shape)
        if size < 16:
            return np.array([self._normal_double() for _ in range(size)], dtype=np.float32).reshape(shape)
        values = self._uniform_float(size)
        whole = size - size % 16
        values[:whole] = _box_muller_16(values[:whole].reshape(-1, 16)).reshape(-1)
        if whole != size:
            values[-16:] = _box_muller_16(self._uniform_float(16).reshape(1, 16)).reshape(-1)
        return values.reshape(shape)

    def _uint32(self, count: int) -> np.ndarray:
        return self._mt.random_raw(count).astype(np.uint32)

    def _uniform_float(self, count: int) -> np.ndarray:
        return (self._uint32(count) & np.uint32(0xFFFFFF)).astype(np.float32) * np.float32(2.0**-24)

    def _normal_double(self) -> float:
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        high, low, high2, low2 = (int(v) for v in self._uint32(4))
        u1 = (((high << 32) | low) & (2**53 - 1)) * 2.0**-53
        u2 = (((high2 << 32) | low2) & (2**53 - 1)) * 2.0**-53
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = radius * math.sin(theta)
        return radius * math.cos(theta)


def _mt19937_key(seed: int) -> np.ndarray:
    """MT19937's state after Knuth's initialisation with the low 32 bits of ``seed`` (torch's ``mt19937``)."""
    key = [seed & 0xFFFFFFFF]
    for i in range(1, _MT_STATE_SIZE):
        previous = key[-1]
        key.append((1812433253 * (previous ^ (previous >> 30)) + i) & 0xFFFFFFFF)
    return np.array(key, dtype=np.uint32)


# --- Box-Muller as torch's normal_fill_16_AVX2 computes it, lane for lane -------------------------------------

_F32 = np.float32
_TWO_PI = _F32(2.0 * math.pi)
_LOG_POLYNOMIAL = tuple(
    _F32(c)
    for c in (
        7.0376836292e-2,
        -1.1514610310e-1,
        1.1676998740e-1,
        -1.2420140846e-1,
        1.4249322787e-1,
        -1.6668057665e-1,
        2.0000714765e-1,
        -2.4999993993e-1,
        3.3333331174e-1,
    )
)
_COS_POLYNOMIAL = (_F32(2.443315711809948e-5), _F32(-1.388731625493765e-3), _F32(4.166664568298827e-2))
_SIN_POLYNOMIAL = (_F32(-1.9515295891e-4), _F32(8.3321608736e-3), _F32(-1.6666654611e-1))
_MINUS_PI_OVER_4_PARTS = (_F32(-0.78515625), _F32(-2.4187564849853515625e-4), _F32(-3.77489497744594108e-8))


def _box_muller_16(blocks: np.ndarray) -> np.ndarray:
    """Normal samples from uniform ``blocks`` of shape (n, 16), as ``normal_fill_16_AVX2`` (mean 0, std 1)."""
    u1 = _F32(1.0) - blocks[:, :8]
    u2 = blocks[:, 8:]
    radius = np.sqrt(_F32(-2.0) * _cephes_log(u1))
    sin, cos = _cephes_sincos(_TWO_PI * u2)
    # torch stores fmadd(n, std=1, mean=0): adding +0.0 turns -0.0 into +0.0 exactly as that does.
    return np.concatenate([radius * cos + _F32(0.0), radius * sin + _F32(0.0)], axis=1)


def _fma(a: np.ndarray | np.float32, b: np.ndarray | np.float32, c: np.ndarray | np.float32) -> np.ndarray:
    """float32 fused multiply-add ``a * b + c`` with a single rounding.

    The float64 product of two float32 values is exact; the float64 sum is rounded once more, which can only
    mislead the final rounding to float32 when it lands exactly halfway between two float32 values. There the
    exact remainder of the sum (two-sum) says which way the exact result lies.
    """
    product = np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)
    addend = np.asarray(c, dtype=np.float64)
    total = product + addend
    addend_part = total - product
    remainder = (product - (total - addend_part)) + (addend - addend_part)
    halfway = (total.view(np.uint64) & np.uint64((1 << 29) - 1)) == np.uint64(1 << 28)
    ambiguous = halfway & (remainder != 0)
    if ambiguous.any():
        total = np.where(ambiguous, np.nextafter(total, total + remainder), total)
    return total.astype(np.float32)


def _cephes_log(x: np.ndarray) -> np.ndarray:
    """``log256_ps`` of ``avx_mathfun.h`` for x in (0, 1], with the fused multiply-adds of torch's build."""
    bits = x.view(np.uint32)
    exponent = (bits >> np.uint32(23)).astype(np.int32) - np.int32(127)
    e = exponent.astype(np.float32) + _F32(1.0)
    x = ((bits & np.uint32(~0x7F800000 & 0xFFFFFFFF)) | _F32(0.5).view(np.uint32)).view(np.float32)
    below = x < _F32(0.707106781186547524)
    tmp = np.where(below, x, _F32(0.0))
    x = x - _F32(1.0)
    e = e - below.astype(np.float32)
    x = x + tmp
    z = x * x
    y = np.full_like(x, _LOG_POLYNOMIAL[0])
    for coefficient in _LOG_POLYNOMIAL[1:]:
        y = _fma(y, x, coefficient)
    y = y * x
    y = _fma(y, z, e * _F32(-2.12194440e-4))
    y = _fma(z, _F32(-0.5), y)
    x = x + y
    return _fma(e, _F32(0.693359375), x)


def _cephes_sincos(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sincos256_ps`` of ``avx_mathfun.h`` for theta >= 0, with the fused multiply-adds of torch's build."""
    x = np.abs(theta)
    octant = (x * _F32(1.27323954473516)).astype(np.int32)
    octant = (octant + 1) & ~np.int32(1)
    y = octant.astype(np.float32)
    sin_negative = (octant & 4) != 0
    cos_negative = (~(octant - 2) & 4) != 0
    use_cos_polynomial_for_cos = (octant & 2) == 0
    for part in _MINUS_PI_OVER_4_PARTS:
        x = _fma(y, part, x)
    z = x * x

    cos_poly = _fma(_COS_POLYNOMIAL[0], z, _COS_POLYNOMIAL[1])
    cos_poly = _fma(cos_poly, z, _COS_POLYNOMIAL[2])
    cos_poly = cos_poly * z
    cos_poly = _fma(cos_poly, z, -(z * _F32(0.5))) + _F32(1.0)

    sin_poly = _fma(_SIN_POLYNOMIAL[0], z, _SIN_POLYNOMIAL[1])
    sin_poly = _fma(sin_poly, z, _SIN_POLYNOMIAL[2])
    sin_poly = sin_poly * z
    sin_poly = _fma(sin_poly, x, x)

    sin = np.where(use_cos_polynomial_for_cos, sin_poly, cos_poly)
    cos = np.where(use_cos_polynomial_for_cos, cos_poly, sin_poly)
    return np.where(sin_negative, -sin, sin), np.where(cos_negative, -cos, cos)
