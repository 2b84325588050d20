"""The uniform grids every quantizer in this library rounds to: bit widths, modes, steps and integer codes.

A b-bit grid has integer codes ``k`` and real levels ``c * k / K`` (notes B; :mod:`profit_edu.quant` learns
``c`` and the clip ``a``). Three kinds of point need three grids (``mode``):

``"signed"``
    codes -K..K with K = 2**(b-1) - 1 (weights, residual-block inputs); a 4-bit grid is -7..7, code -8 unused.
``"unsigned"``
    codes 0..K with K = 2**b - 1 (after ReLU/ReLU6).
``"hswish"``
    codes 0..K as unsigned, every level shifted down by 3/8 = ``HSWISH_OFFSET`` (minus h-swish's minimum,
    h-swish(-1.5) = -0.375), so code 0 sits exactly on h-swish's floor (MobileNet-v3).

Bits are ints in 2..8; ``None`` means "not quantized" (:func:`check_bits`).
"""

from __future__ import annotations

import numbers
from typing import Literal

__all__ = ["HSWISH_OFFSET", "MAX_BITS", "MIN_BITS", "MODES", "check_bits", "code_range", "num_steps"]

Mode = Literal["signed", "unsigned", "hswish"]
MODES: tuple[str, ...] = ("signed", "unsigned", "hswish")
MIN_BITS, MAX_BITS = 2, 8
HSWISH_OFFSET = 0.375  # -min(h-swish) = 3/8


def check_bits(bits: object, name: str = "bits") -> int | None:
    """Return ``bits`` if it is an int in 2..8 or None; raise a clear error otherwise.

    Raises:
        TypeError: for non-integers (``3.5``, ``"4"``, ``True``).
        ValueError: for integers outside 2..8 (``0``, ``1``, ``9``, ``-1``).

    >>> check_bits(4), check_bits(None)
    (4, None)
    """
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(
            f"{name} must be an int in {MIN_BITS}..{MAX_BITS} or None (not quantized), "
            f"got {bits!r} of type {type(bits).__name__}"
        )
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise ValueError(f"{name} must be in {MIN_BITS}..{MAX_BITS} or None (not quantized), got {bits}")
    return int(bits)


def _check_mode(mode: object, allowed: tuple[str, ...] = MODES) -> str:
    if mode not in allowed:
        raise ValueError(f"mode must be one of {allowed}, got {mode!r}")
    return str(mode)


def num_steps(bits: int, mode: str) -> int:
    """K: the number of grid steps between code 0 and the largest code.

    >>> num_steps(4, "signed"), num_steps(4, "unsigned"), num_steps(4, "hswish")
    (7, 15, 15)
    """
    bits = check_bits(bits)
    if bits is None:
        raise ValueError("num_steps needs an int bit width in 2..8, got None")
    mode = _check_mode(mode)
    return 2 ** (bits - 1) - 1 if mode == "signed" else 2**bits - 1


def code_range(bits: int, mode: str) -> tuple[int, int]:
    """The smallest and largest integer code of a DuQ grid.

    >>> code_range(3, "signed"), code_range(3, "hswish")
    ((-3, 3), (0, 7))
    """
    k = num_steps(bits, mode)
    return (-k, k) if mode == "signed" else (0, k)


def _offset(mode: str) -> float:
    return HSWISH_OFFSET if mode == "hswish" else 0.0
