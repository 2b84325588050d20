"""What every exercise check does with a student's answer: call it safely, compare tensors and numbers with a
message that says where they differ. Shared by :mod:`.checks` and the chapter-specific check modules it gathers
(:mod:`.recipe_checks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__: list[str] = []  # private helpers: the checks are the API (profit_edu.book.checks)


def _call(fn: Callable[..., Any], *args: Any, what: str) -> Any:
    """Call the student's function; turn a crash into an AssertionError that names the inputs."""
    if not callable(fn):
        raise AssertionError(f"expected a function for {what}, got {type(fn).__name__}")
    try:
        return fn(*args)
    except (NotImplementedError, AssertionError):
        raise
    except Exception as err:  # the student's code may raise anything; report it with its inputs
        raise AssertionError(f"{what} raised {type(err).__name__}: {err}") from err


def _as_tensor(value: Any, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except Exception as err:
        raise AssertionError(f"{what} should return a tensor (or numbers), got {type(value).__name__}") from err


def _close(got: Tensor, want: Tensor, what: str, *, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    got64, want64 = got.detach().double(), want.detach().double()
    bad = ~torch.isclose(got64, want64, atol=atol, rtol=rtol)
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} values differ; first at flat index {i}: "
            f"got {float(got64.reshape(-1)[i]):.6g}, expected {float(want64.reshape(-1)[i]):.6g}"
        )


def _number(value: Any, what: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise AssertionError(f"{what} should be one number, got a tensor of shape {tuple(value.shape)}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AssertionError(f"{what} should be a number, got {type(value).__name__}")
    return float(value)
