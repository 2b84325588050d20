"""Argument checks shared by the library: "is this an int?", "is this a finite number?", "an int >= low".

Python's ``bool`` is a subclass of ``int`` (``True == 1``), so ``isinstance(True, int)`` holds; every check here
refuses bools, so that ``epochs=True`` is an error rather than one epoch. Bit widths have their own check,
:func:`profit_edu.grid.check_bits` (an int in 2..8, or None for "not quantized").

>>> is_int(3), is_int(True), is_int(3.0)
(True, False, False)
>>> is_real(0.5), is_real(float("nan")), is_real(False)
(True, False, False)
"""

from __future__ import annotations

import math

from .grid import check_bits

__all__ = ["check_int", "is_bits", "is_int", "is_real"]


def is_int(value: object) -> bool:
    """True for a Python ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """True for a finite ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value: object, low: int) -> int:
    """Return ``value`` if it is an int >= ``low``; else raise an error naming ``name``.

    Raises:
        TypeError: ``value`` is not an int (a bool, a float, a string).
        ValueError: ``value`` is an int below ``low``.

    >>> check_int("epochs", 3, 1)
    3
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:  # type: ignore[operator]  # is_int checked it
        raise ValueError(f"{name} must be an int >= {low}, got {value}")
    return value  # type: ignore[return-value]


def is_bits(value: object) -> bool:
    """True for a bit width :func:`profit_edu.grid.check_bits` accepts, None excluded (an int in 2..8).

    >>> is_bits(4), is_bits(9), is_bits(None), is_bits(4.0)
    (True, False, False, False)
    """
    try:
        return value is not None and check_bits(value) is not None
    except (TypeError, ValueError):
        return False
