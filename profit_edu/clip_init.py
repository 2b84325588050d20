"""Initialising a quantizer from data: the clip ``a`` (and scale ``c``) a quantizer starts from.

A quantizer's first tensor (the weight, or one batch of activations) decides its starting clip. This library's
rule (``init_style="fixed"``) is the clip of least quantization error, :func:`mse_clip`, searched up to
:func:`clip_range`; the official code's rules (``init_style="reference"``) are a = c = 0.9 max|W| for weights
and a percentile of one batch for activations, :func:`act_init_value`. :meth:`profit_edu.quant.Quantizer.init_from`
applies them; :func:`profit_edu.layers.calibrate` runs them over a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from .grid import HSWISH_OFFSET

__all__ = ["ACT_INIT_PERCENTILE", "MSE_CANDIDATES", "MSE_MAX_SAMPLES", "WEIGHT_INIT_FRACTION", "act_init_value",
           "clip_range", "mse_clip", "sample_values"]

WEIGHT_INIT_FRACTION = 0.9  # a = c = 0.9 * max|W| (official code)
ACT_INIT_PERCENTILE = 0.95  # a = c = 95th percentile of the init quantity (official: eps = 0.05)
InitStyle = Literal["fixed", "reference"]


def _percentile_of_positive(v: Tensor, q: float) -> float:
    """The q-quantile of the strictly positive entries of v (1e-3 when there are none, as the official code)."""
    pos = v.detach().reshape(-1)
    pos = pos[pos > 0]
    if pos.numel() == 0:
        return 1e-3
    k = min(max(math.ceil(q * pos.numel()), 1), pos.numel())
    return float(pos.float().kthvalue(k).values)


def act_init_value(
    x: Tensor,
    mode: str,
    *,
    style: InitStyle = "fixed",
    percentile: float = ACT_INIT_PERCENTILE,
    cap: float | None = None,
) -> float:
    """The official code's percentile rule: a = c = the 95th percentile of the positive values of one batch.

    This is what ``init_style="reference"`` uses. ``style="fixed"`` takes the percentile of the quantity the
    official code *intends*: |x| for ``"signed"``, x + 3/8 for ``"hswish"``, x for ``"unsigned"``.
    ``style="reference"`` replays what the official code *does*: the positive values of whatever tensor it is
    given (the caller passes the pre-activation for fused h-swish quantizers), with no |x| and no offset.
    ``cap`` (6 for ReLU6) bounds the result. (The library's own ``"fixed"`` initialisation no longer uses a
    percentile at all but :func:`mse_clip`: clipping 5 % of every layer's activations cost 14 points of
    CIFAR-10 top-1 at 8 bits, before any training.)
    """
    if style == "fixed":
        quantity = x.abs() if mode == "signed" else (x + HSWISH_OFFSET if mode == "hswish" else x)
    elif style == "reference":
        quantity = x
    else:
        raise ValueError(f"init style must be 'fixed' or 'reference', got {style!r}")
    value = _percentile_of_positive(quantity, percentile)
    return min(value, cap) if cap is not None else value


#: Candidates of the coarse search of :func:`mse_clip` (then as many again between the best one's neighbours).
MSE_CANDIDATES = 100
#: :func:`mse_clip` measures the error on at most this many values (a seeded random sample of larger tensors).
MSE_MAX_SAMPLES = 2**18


def clip_range(x: Tensor, mode: str) -> float:
    """The largest clip worth trying for ``x`` on a ``mode`` grid: the clip that keeps every value in range.

    ``max|x|`` for ``"signed"``, ``max(x + 3/8)`` for ``"hswish"``, ``max(x)`` for ``"unsigned"``.
    """
    x = x.detach()
    if mode == "signed":
        return float(x.abs().max())
    return float((x + HSWISH_OFFSET).max() if mode == "hswish" else x.max())


def sample_values(x: Tensor, max_samples: int = MSE_MAX_SAMPLES, seed: int = 0) -> Tensor:
    """``x`` flattened, or a seeded random sample (with replacement) of ``max_samples`` of its values if larger."""
    flat = x.detach().reshape(-1).float()
    if flat.numel() <= max_samples:
        return flat
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(flat.numel(), (max_samples,), generator=gen).to(flat.device)
    return flat[idx]


@torch.no_grad()
def mse_clip(
    x: Tensor,
    quantize: Callable[[Tensor, float], Tensor],
    high: float,
    *,
    candidates: int = MSE_CANDIDATES,
    max_samples: int = MSE_MAX_SAMPLES,
    seed: int = 0,
) -> float:
    """The clip in (0, ``high``] that minimises the mean squared quantization error of ``x``.

    Math: clip* = argmin_t mean((Q_t(x) - x)^2), searched on t = high*k/G for k = 1..G (G = ``candidates``),
    then on G points between the best candidate's two neighbours, so the answer is within high/G^2 of the
    grid's best. The error is measured on all of ``x``, or on a seeded random sample of ``max_samples``
    values when ``x`` is larger (the candidates still span its true range ``high``).

    This is the initialisation of ``init_style="fixed"``: a clip that is too small clips the tail, one that
    is too large wastes levels on values that never occur; the MSE weighs both at the current bit width.

    Args:
        x: the tensor to quantize (weights, or one calibration batch of a quantizer's input).
        quantize: ``quantize(x, t)``, the fake quantizer with clip ``t`` at the bit width in use.
        high: the largest clip to try (see :func:`clip_range`); <= 0 gives 1e-3 (nothing to quantize).

    Raises:
        ValueError: ``x`` is empty or holds NaN or inf (the message says how many).

    >>> x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))   # max |x| is 4.56
    >>> signed4 = lambda v, t: t * torch.round(torch.clamp(v / t, -1, 1) * 7) / 7   # DuQ, 4 bits, a = c = t
    >>> t = mse_clip(x, signed4, float(x.abs().max()))
    >>> round(t, 1)   # a Gaussian's 4-bit (15-level) optimum: the tail beyond ~2.5 sigma is clipped
    2.5
    """
    if x.numel() == 0:
        raise ValueError("cannot choose a clip from an empty tensor")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"cannot choose a clip: {bad} of {x.numel()} values are NaN or inf")
    if not high > 0:
        return 1e-3
    v = sample_values(x, max_samples, seed)

    def err(t: float) -> float:
        return float((quantize(v, t) - v).pow_(2).mean())

    def best_of(ts: list[float]) -> int:
        errors = [err(t) for t in ts]
        return min(range(len(ts)), key=errors.__getitem__)

    coarse = [high * k / candidates for k in range(1, candidates + 1)]
    i = best_of(coarse)
    lo, hi = (coarse[i - 1] if i > 0 else coarse[i] / 2), (coarse[i + 1] if i + 1 < candidates else coarse[i])
    fine = [lo + (hi - lo) * k / candidates for k in range(candidates + 1)]
    return fine[best_of(fine)]

