"""Fixed-point requantization: how an integer engine multiplies by a real number, and the h-swish lookup table.

A quantized layer computes an integer accumulator ``n = acc + bias`` (int32). Its output code needs
``round(n * M)`` for a real multiplier ``M`` (the ratio of the accumulator's scale to the output's step, with
BatchNorm folded in). Integer stacks (gemmlowp, QNNPACK, TFLite) store ``M`` as a 31-bit integer and a shift::

    M = m0 * 2**-shift,   2**30 <= m0 < 2**31,   1 <= shift <= 62

and compute the product exactly in 64 bits. Glossary:

``n``
    the int32 accumulator plus bias (|n| < 2**31, asserted per layer from code ranges and fan-in).
``m0, shift``
    the fixed-point multiplier: 31 significant bits, so M is kept to a relative error below 2**-31.
``round``
    **round half to even**, the rule of ``torch.round``, of DuQ's quantizers and of ONNX QuantizeLinear. (gemmlowp
    rounds half away from zero, TFLite half up; ties are rare and any fixed rule works if everyone uses it.)

:func:`requantize` is the reference, in int64 (|n * m0| < 2**62). :func:`requantize_float` is the engine's fast
path: the same result from one float64 multiply and ``torch.round``, *provably* exact when
``2**(53 - shift) >= bound + 2`` for the output range ``|code| <= bound`` (:func:`float64_is_exact`):

* ``v = n * M`` is a multiple of 2**-shift, so a ``v`` that is not a tie lies at least 2**-shift from every tie;
* float64 rounds the product with relative error <= 2**-53, i.e. by less than 2**-shift while |v| < 2**(53-shift),
  so it never crosses a tie, and an exact tie is representable and computed exactly;
* larger |v| lie beyond the clamp bounds both before and after rounding.

*H-swish by table.* h-swish is not monotone below -1.5, so it cannot be applied as thresholds on the accumulator.
The engine requantizes to a fixed-point pre-activation ``u`` on a grid ``delta`` that is 2**F times finer than the
output step, looks up ``h(u) = round(hswish(u * delta) / delta)`` on that grid, adds the offset 3/8 as the integer
``z = round(3/8 / delta)`` and shifts back by F bits. For ``u * delta >= 3`` h-swish is the identity, so the table
only spans ``-3 .. 3`` (about ``6 / delta`` entries) and ``h(u) = u`` beyond it.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

__all__ = [
    "FLOAT32_EXACT",
    "HSWISH_TABLE_LIMIT",
    "HSwishTable",
    "float64_is_exact",
    "hswish_table",
    "multiplier_value",
    "quantize_multiplier",
    "quantize_multipliers",
    "requantize",
    "requantize_float",
    "round_shift",
]

M0_MIN, M0_MAX = 2**30, 2**31  # m0 in [2**30, 2**31)
SHIFT_MIN, SHIFT_MAX = 1, 62
HSWISH_TABLE_LIMIT = 3.0  # h-swish(x) = 0 for x <= -3 and = x for x >= 3
#: float32 holds every integer of magnitude up to 2**24 (24-bit significand), so a float32 conv over integer codes
#: is exact while every partial sum stays below this (the engine's "fast" arithmetic and the ONNX export use it).
FLOAT32_EXACT = 2**24


def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """Write a real ``M > 0`` as ``m0 * 2**-shift`` with ``2**30 <= m0 < 2**31`` (m0 rounded half to even).

    Raises:
        ValueError: ``M`` is not finite and positive, or needs a shift outside 1..62 (M >= 2**30 or M < 2**-32).

    >>> quantize_multiplier(0.75), quantize_multiplier(1.0)
    ((1610612736, 31), (1073741824, 30))
    """
    if isinstance(multiplier, bool) or not isinstance(multiplier, numbers.Real):
        raise TypeError(f"multiplier must be a real number, got {multiplier!r}")
    m0, shift = quantize_multipliers(torch.tensor([float(multiplier)], dtype=torch.float64))
    return int(m0[0]), int(shift[0])


def quantize_multipliers(multipliers: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`quantize_multiplier` for a float64 tensor of multipliers; returns int64 ``(m0, shift)``.

    >>> quantize_multipliers(torch.tensor([0.75, 3.0], dtype=torch.float64))
    (tensor([1610612736, 1610612736]), tensor([31, 29]))
    """
    m = multipliers.to(torch.float64)
    if m.numel() and not bool((torch.isfinite(m) & (m > 0)).all()):
        raise ValueError(f"multipliers must be finite and > 0, got {m[~(torch.isfinite(m) & (m > 0))][:3].tolist()}")
    frac, exp = torch.frexp(m)  # m = frac * 2**exp, 0.5 <= frac < 1
    m0 = torch.round(frac * 2.0**31).to(torch.int64)  # half to even
    shift = 31 - exp.to(torch.int64)
    carry = m0 == M0_MAX  # frac rounded up to 1.0
    m0 = torch.where(carry, M0_MIN, m0)
    shift = shift - carry.to(torch.int64)
    bad = (shift < SHIFT_MIN) | (shift > SHIFT_MAX)
    if bool(bad.any()):
        v = float(m[bad][0])
        raise ValueError(f"multiplier {v:g} needs a shift outside {SHIFT_MIN}..{SHIFT_MAX}: the accumulator scale and "
                         "the output step differ by more than 2**30 (a broken scale?)")
    return m0, shift


def multiplier_value(m0: int | Tensor, shift: int | Tensor) -> float | Tensor:
    """The real multiplier ``m0 * 2**-shift`` (exact in float64)."""
    if isinstance(m0, Tensor) or isinstance(shift, Tensor):
        return torch.as_tensor(m0, dtype=torch.float64) * torch.pow(2.0, -torch.as_tensor(shift, dtype=torch.float64))
    return math.ldexp(float(m0), -int(shift))


def requantize(n: Tensor, m0: Tensor | int, shift: Tensor | int) -> Tensor:
    """``round(n * m0 / 2**shift)`` with round half to even, exactly, in int64 (the reference).

    Math: q = floor((n * m0 + 2**(shift-1)) / 2**shift), minus 1 where that was an exact tie and q is odd.

    Shapes: n: any integer tensor; m0, shift: ints or tensors broadcastable to n (e.g. (C, 1, 1) per channel).

    Raises:
        ValueError: |n| >= 2**32 (then n * m0 could overflow int64).

    >>> requantize(torch.tensor([-3, -1, 1, 2, 3, 5]), 2**30, 31)  # n / 2: -1.5, -0.5, 0.5, 1, 1.5, 2.5
    tensor([-2,  0,  0,  1,  2,  2])
    """
    n = torch.as_tensor(n)
    if n.is_floating_point():
        raise TypeError(f"requantize takes integer tensors, got dtype {n.dtype}")
    n = n.to(torch.int64)
    if n.numel() and int(n.abs().max()) >= 2**32:
        raise ValueError("requantize needs |n| < 2**32 so that n * m0 fits in int64")
    m0 = torch.as_tensor(m0, dtype=torch.int64, device=n.device)
    shift = torch.as_tensor(shift, dtype=torch.int64, device=n.device)
    prod = n * m0
    half = torch.ones_like(shift) << (shift - 1)
    q = (prod + half) >> shift  # arithmetic shift: floor division by 2**shift
    tie = (prod & ((half << 1) - 1)) == half
    return q - (tie & (q & 1).bool()).to(torch.int64)


def float64_is_exact(shift: Tensor | int, bound: int) -> bool:
    """Whether :func:`requantize_float` equals :func:`requantize` for outputs clamped to ``|code| <= bound``.

    The condition is ``2**(53 - shift) >= bound + 2`` for every shift (see the module docstring).
    """
    worst = int(torch.as_tensor(shift).max())
    return 53 - worst >= 63 or 2 ** (53 - worst) >= bound + 2


def requantize_float(n: Tensor, multiplier: Tensor) -> Tensor:
    """``torch.round(n * M)`` in float64: equals :func:`requantize` after clamping when :func:`float64_is_exact`.

    Args:
        n: integer-valued float32 or float64 tensor (exact integers).
        multiplier: float64 ``m0 * 2**-shift`` (exact), broadcastable to n.

    Returns:
        float64 integer values (not yet clamped).
    """
    return torch.round(torch.mul(n, multiplier))


def round_shift(x: Tensor, bits: int) -> Tensor:
    """``round(x / 2**bits)`` with round half to even, for an integer tensor x (bits >= 0).

    >>> round_shift(torch.tensor([-6, -2, 2, 6, 7]), 2)  # -1.5, -0.5, 0.5, 1.5, 1.75
    tensor([-2,  0,  0,  2,  2])
    """
    if bits == 0:
        return x
    return requantize(x, M0_MIN, 30 + bits)


def _hswish(x: Tensor) -> Tensor:
    return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


class HSwishTable:
    """The h-swish lookup of one layer: fixed-point pre-activation ``u`` -> output code.

    Math (``delta``: pre-activation step; ``F``: extra bits; ``z = round(offset / delta)``)::

        u    = clamp(u, u_min, u_sat)
        h(u) = round(hswish(u * delta) / delta)  for u <= u_lin (the table),   h(u) = u  above (identity)
        code = clamp(round((h + z) / 2**F), lo, hi)

    Attributes:
        delta, frac_bits, zero, lo, hi: as above.
        u_min, u_lin, u_sat: the table covers u_min..u_lin; pre-activations are clamped to u_min..u_sat (beyond
            u_sat the code is ``hi`` anyway).
        table: int64 (u_lin - u_min + 1,), the values h(u).
    """

    def __init__(self, delta: float, frac_bits: int, offset: float, lo: int, hi: int) -> None:
        if not (math.isfinite(delta) and delta > 0):
            raise ValueError(f"h-swish table needs a positive step, got {delta}")
        if not 0 <= frac_bits <= 16:
            raise ValueError(f"frac_bits must be in 0..16, got {frac_bits}")
        self.delta, self.frac_bits, self.lo, self.hi = float(delta), int(frac_bits), int(lo), int(hi)
        self.zero = round(offset / delta)
        self.u_min = math.floor(-HSWISH_TABLE_LIMIT / delta) - 1
        self.u_lin = math.ceil(HSWISH_TABLE_LIMIT / delta) + 1
        self.u_sat = max(self.u_lin, ((self.hi + 1) << self.frac_bits) - self.zero + 1)
        if self.u_lin - self.u_min > 2**22:
            raise ValueError(f"h-swish step {delta:g} needs a table of {self.u_lin - self.u_min} entries (> 2**22): "
                             "the output step is too small for this layer")
        u = torch.arange(self.u_min, self.u_lin + 1, dtype=torch.float64)
        self.table = torch.round(_hswish(u * self.delta) / self.delta).to(torch.int64)

    @property
    def bound(self) -> int:
        """The largest |u| after clamping (for the float64 exactness test)."""
        return max(abs(self.u_min), abs(self.u_sat))

    def __call__(self, u: Tensor) -> Tensor:
        """Map int64 pre-activations to int64 codes."""
        u = u.clamp(self.u_min, self.u_sat)
        table = self.table.to(u.device)
        h = torch.where(u > self.u_lin, u, table[u.clamp(max=self.u_lin) - self.u_min])
        return round_shift(h + self.zero, self.frac_bits).clamp_(self.lo, self.hi)

    def code_table(self) -> Tensor:
        """The whole map u_min..u_sat -> code as one int64 table (ONNX uses it with a Gather)."""
        return self(torch.arange(self.u_min, self.u_sat + 1, dtype=torch.int64))


def hswish_table(delta: float, frac_bits: int, offset: float, lo: int, hi: int) -> HSwishTable:
    """Build the :class:`HSwishTable` of a layer (see there).

    >>> t = hswish_table(1 / 16, 0, 0.375, 0, 15)  # output step 1/16, offset 3/8 = 6 steps
    >>> t(torch.tensor([-100, -24, 0, 4, 100])).tolist()  # u * delta = -6.25, -1.5, 0, 0.25, 6.25
    [6, 0, 6, 8, 15]
    """
    return HSwishTable(delta, frac_bits, offset, lo, hi)
