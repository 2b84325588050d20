"""Quantizers: rounding with a straight-through estimator, DuQ, and the PACT and LSQ baselines.

PROFIT (Park & Yoo, ECCV 2020) trains every weight and activation quantizer with *DuQ*, a
"differentiable, unified quantizer" with two learnable scalars per tensor: a clip ``a`` that decides
which inputs are in range, and a scale ``c`` that decides how large the output levels are.

Glossary (symbols as in the paper and its official code):

``b``
    the bit width, ``bits`` in code: an int in 2..8; ``None`` means "not quantized".
``n``
    ``2**b``, the number of codes of an unsigned grid (``n_lv`` in the official code).
``K``
    steps from 0 to the top of the normalised grid: ``n - 1`` for ``"unsigned"`` and ``"hswish"``,
    ``n/2 - 1`` for ``"signed"`` (so a signed 4-bit grid is -7..7: 15 levels, code -8 unused).
``a``
    DuQ's clip: inputs are clipped to [0, a] (or [-a, a]); the input-side step is ``a / K``.
``c``
    DuQ's scale: output levels are ``c * k / K`` for integer codes ``k``.
``â, ĉ``
    the stored raw parameters (``a_hat``, ``c_hat``); ``a = softplus(â)``, ``c = softplus(ĉ)``, so both stay > 0.
``3/8``
    minus h-swish's minimum (h-swish(-1.5) = -0.375). The ``"hswish"`` grid is shifted down by 3/8 so its
    code 0 sits exactly on h-swish's floor.

Forward (``off`` = 3/8 for ``"hswish"``, else 0; ``lo`` = -1 for ``"signed"``, else 0)::

    u = clip((x + off) / a, lo, 1)          # normalised, clipped input
    y = c * round(u * K) / K - off          # round half to even (torch.round)

Backward (straight-through: rounding counts as the identity; "in range" means lo < u < 1 strictly)::

    dy/dx = c / a            in range, 0 when clipped  (clipped inputs get no gradient)
    dy/da = -c * u / a       in range, 0 when clipped  (a learns from in-range inputs only)
    dy/dc = round(u * K) / K everywhere                 (the clipped tail, at +-1, drives c)
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clip_init import ACT_INIT_PERCENTILE as ACT_INIT_PERCENTILE  # re-exported: profit_edu.quant.X stays importable
from .clip_init import MSE_CANDIDATES as MSE_CANDIDATES
from .clip_init import MSE_MAX_SAMPLES as MSE_MAX_SAMPLES
from .clip_init import WEIGHT_INIT_FRACTION, act_init_value, clip_range, mse_clip, sample_values
from .clip_init import InitStyle as InitStyle
from .grid import HSWISH_OFFSET, MODES, _check_mode, _offset, check_bits, code_range, num_steps
from .grid import MAX_BITS as MAX_BITS
from .grid import MIN_BITS as MIN_BITS
from .grid import Mode as Mode

__all__ = ["HSWISH_OFFSET", "MODES", "DuQ", "LSQQuantizer", "PACTQuantizer", "Quantizer", "check_bits", "clip_range",
           "code_range", "duq", "duq_codes", "duq_levels", "inverse_softplus", "lsq", "make_quantizer", "mse_clip",
           "num_steps", "pact", "round_ste", "sample_values"]


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def inverse_softplus(v: Tensor | float) -> Tensor:
    """â such that softplus(â) = v, for v > 0 (numerically stable for large and small v)."""
    v = torch.as_tensor(v, dtype=torch.get_default_dtype())
    if not bool((v > 0).all()):
        raise ValueError(f"inverse_softplus needs v > 0, got {v}")
    return v + torch.log(-torch.expm1(-v))


def _check_float_tensor(x: object, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (quantizers take real values), got dtype {x.dtype}")
    return x


def _check_positive_scalar(v: object, name: str, like: Tensor) -> Tensor:
    if isinstance(v, bool) or not isinstance(v, Tensor | numbers.Real):
        raise TypeError(f"{name} must be a positive scalar tensor or float, got {type(v).__name__}")
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device) if not isinstance(v, Tensor) else v
    if t.numel() != 1:
        raise ValueError(f"{name} must be a scalar (one value per tensor, as in DuQ), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {t.dtype}")
    if not bool((t.detach() > 0) & torch.isfinite(t.detach())):  # one check, one device sync
        raise ValueError(f"{name} must be finite and > 0 (DuQ keeps it positive through softplus), got {float(t):g}")
    return t


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------
def round_ste(x: Tensor) -> Tensor:
    """Round to the nearest integer (half to even); the backward pass treats it as the identity.

    >>> x = torch.tensor([0.4, 1.6], requires_grad=True)
    >>> round_ste(x).sum().backward(); x.grad
    tensor([1., 1.])
    """
    return x + (torch.round(x) - x).detach()


class _DuQFunction(torch.autograd.Function):
    """DuQ forward and its straight-through backward, with as few passes over memory as possible.

    Forward keeps ``v = (x + off) * K / a`` (the normalised input before clipping) and the output ``y``.
    Backward then needs four elementwise passes: the in-range mask is applied by ``hardtanh_backward``
    (gradient only where lo*K < v < K, the clip's own convention), and the scalar gradients of a and c
    are dot products:

        dL/da = sum(dL/dy * dy/da) = -(1/K) * <g_x, v>    (g_x: the gradient passed to x)
        dL/dc = sum(dL/dy * level / K) = (<g, y> + off * sum(g)) / c
    """

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, c: Tensor, k: int, signed: bool, off: float) -> Tensor:
        a_, c_ = a.to(x.dtype), c.to(x.dtype)
        s = k / a_
        v = torch.addcmul(off * s, x, s) if off else x * s  # (x + off) * K / a
        lo = -k if signed else 0
        y = v.clamp(lo, k).round_().mul_(c_ / k)
        if off:
            y.sub_(off)
        ctx.save_for_backward(v, y, a_, c_)
        ctx.k, ctx.lo, ctx.off = k, lo, off
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        v, y, a, c = ctx.saved_tensors
        k, off = ctx.k, ctx.off
        gx = ga = gc = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            gx = torch.ops.aten.hardtanh_backward(g * (c / a), v, ctx.lo, k)  # c/a in range, 0 when clipped
            if ctx.needs_input_grad[1]:
                ga = torch.vdot(gx.reshape(-1), v.reshape(-1)) / -k
        if ctx.needs_input_grad[2]:
            gc = torch.vdot(g.reshape(-1), y.reshape(-1))
            if off:
                gc = gc + off * g.sum()
            gc = gc / c
        return (gx if ctx.needs_input_grad[0] else None), ga, gc, None, None, None


def _duq(x: Tensor, a: Tensor, c: Tensor, bits: int, mode: str) -> Tensor:
    """DuQ without argument checks (the modules validate once, at construction)."""
    k = 2 ** (bits - 1) - 1 if mode == "signed" else 2**bits - 1
    y = _DuQFunction.apply(x, a, c, k, mode == "signed", _offset(mode))
    return y


def duq(x: Tensor, a: Tensor | float, c: Tensor | float, bits: int, mode: Mode) -> Tensor:
    """DuQ fake quantization: clip with ``a``, round to ``2**bits`` (or ``2**bits - 1``) levels, scale by ``c``.

    Math: y = c * round(clip((x + off) / a, lo, 1) * K) / K - off   (see the module docstring)

    Shapes: x: any shape -> same shape; a, c: scalars.

    Args:
        x: real-valued input (weights or activations).
        a: the clip, > 0 (a tensor to learn it, e.g. ``softplus(a_hat)``).
        c: the output scale, > 0.
        bits: 2..8. (Use no quantizer at all for float; ``duq`` itself needs a bit width.)
        mode: ``"signed"`` (weights, signed block inputs), ``"unsigned"`` (after ReLU/ReLU6) or
            ``"hswish"`` (after h-swish; the grid starts at -3/8).

    Raises:
        TypeError: non-tensor or integer ``x``; non-integer ``bits``.
        ValueError: ``bits`` outside 2..8 or None; unknown ``mode``; ``a`` or ``c`` not a positive scalar.

    >>> duq(torch.tensor([-1.0, 0.26, 0.9, 3.0]), 1.0, 1.0, 2, "unsigned")
    tensor([0.0000, 0.3333, 1.0000, 1.0000])
    """
    x = _check_float_tensor(x)
    b = check_bits(bits)
    if b is None:
        raise ValueError("duq needs bits in 2..8; for float, do not quantize (bits None in the modules)")
    mode = _check_mode(mode)
    a = _check_positive_scalar(a, "a", x)
    c = _check_positive_scalar(c, "c", x)
    return _duq(x, a.reshape(()), c.reshape(()), b, mode)


def duq_codes(x: Tensor, a: Tensor | float, bits: int, mode: Mode) -> Tensor:
    """The integer codes k that DuQ assigns to ``x`` (int64), so that ``duq(x) == c * k / K - off``.

    >>> duq_codes(torch.tensor([-2.0, -0.3, 0.0, 0.3, 2.0]), 1.0, 3, "signed")
    tensor([-3, -1,  0,  1,  3])
    """
    x = _check_float_tensor(x)
    mode = _check_mode(mode)
    k = num_steps(bits, mode)
    a = _check_positive_scalar(a, "a", x).to(x.dtype)
    lo, hi = code_range(bits, mode)
    v = (x.detach() + _offset(mode)) * (k / a)
    return v.clamp(lo, hi).round().to(torch.int64)


def duq_levels(c: Tensor | float, bits: int, mode: Mode) -> Tensor:
    """All real output levels of a DuQ grid, ascending (float64).

    >>> duq_levels(1.0, 2, "hswish")
    tensor([-0.3750, -0.0417,  0.2917,  0.6250], dtype=torch.float64)
    """
    mode = _check_mode(mode)
    k = num_steps(bits, mode)
    c = float(c)
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")
    lo, hi = code_range(bits, mode)
    codes = torch.arange(lo, hi + 1, dtype=torch.float64)
    return codes * (c / k) - _offset(mode)


class _PACTFunction(torch.autograd.Function):
    """PACT (Choi et al. 2018): clip at a learnable alpha, uniform levels in [0, alpha] (or [-alpha, alpha]).

    The gradient to alpha is the PACT paper's straight-through one: 1 for inputs at or beyond the clip
    (-1 below -alpha in the signed form), 0 in range.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, k: int, signed: bool) -> Tensor:
        al = alpha.to(x.dtype)
        lo = -al if signed else torch.zeros_like(al)
        above, below = x >= al, x <= lo
        y = torch.minimum(torch.maximum(x, lo), al).mul_(k / al).round_().mul_(al / k)
        ctx.save_for_backward(above, below)
        ctx.signed = signed
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        above, below = ctx.saved_tensors
        gx = g * ~(above | below)
        galpha = (g * above).sum()
        if ctx.signed:
            galpha = galpha - (g * below).sum()
        return gx, galpha, None, None


def pact(x: Tensor, alpha: Tensor | float, bits: int, mode: Literal["signed", "unsigned"] = "unsigned") -> Tensor:
    """PACT fake quantization: y = round(clip(x, 0, alpha) * K / alpha) * alpha / K.

    Unlike DuQ, one parameter is both the clip and the scale, and it learns only from clipped inputs.

    >>> pact(torch.tensor([-1.0, 0.5, 2.0]), 1.0, 2)
    tensor([0.0000, 0.6667, 1.0000])
    """
    x = _check_float_tensor(x)
    mode = _check_mode(mode, ("signed", "unsigned"))
    k = num_steps(bits, mode)
    alpha = _check_positive_scalar(alpha, "alpha", x)
    return _PACTFunction.apply(x, alpha.reshape(()), k, mode == "signed")


def _lsq_bounds(bits: int, mode: str) -> tuple[int, int]:
    # LSQ uses the full two's-complement range for signed data: -2^(b-1)..2^(b-1)-1.
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if mode == "signed" else (0, 2**bits - 1)


def _scale_grad(s: Tensor, factor: float) -> Tensor:
    """Value ``s``, gradient multiplied by ``factor`` (LSQ's gradient scale)."""
    return (s - s * factor).detach() + s * factor


def lsq(
    x: Tensor,
    s: Tensor | float,
    bits: int,
    mode: Literal["signed", "unsigned"] = "signed",
    grad_scale: float | None = None,
) -> Tensor:
    """LSQ fake quantization (Esser et al. 2020): y = round(clip(x / s, Qn, Qp)) * s with a learnable step s.

    Gradient to s (before the gradient scale): round(x/s) - x/s in range, Qn or Qp when clipped.
    ``grad_scale`` defaults to LSQ's 1 / sqrt(numel(x) * Qp).

    >>> lsq(torch.tensor([-1.0, 0.26, 5.0]), 0.25, 3)
    tensor([-1.0000,  0.2500,  0.7500])
    """
    x = _check_float_tensor(x)
    mode = _check_mode(mode, ("signed", "unsigned"))
    b = check_bits(bits)
    if b is None:
        raise ValueError("lsq needs bits in 2..8")
    qn, qp = _lsq_bounds(b, mode)
    s = _check_positive_scalar(s, "s", x).reshape(()).to(x.dtype)
    if grad_scale is None:
        grad_scale = 1.0 / math.sqrt(x.numel() * qp)
    s = _scale_grad(s, grad_scale)
    return round_ste(torch.clamp(x / s, qn, qp)) * s


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------
class Quantizer(nn.Module):
    """Base class of the fake quantizers: ``bits=None`` is the identity; otherwise the subclass quantizes.

    A quantizer initialises its parameters from the first tensor it sees (weights: from the weight;
    activations: from one batch), unless they were set or loaded before. ``initialized`` is a buffer, so
    checkpoints carry it.

    Attributes:
        mode: the grid: "signed", "unsigned" or "hswish".
        role: "weight" or "act" (decides how the first tensor initialises the parameters).
        init_style: "fixed" (default) or "reference" (the official code's behaviour, see ``act_init_value``).
    """

    modes: tuple[str, ...] = MODES

    def __init__(
        self, mode: str, bits: int | None = None, *, role: Literal["weight", "act"] = "act", init_style: str = "fixed"
    ) -> None:
        super().__init__()
        self.mode = _check_mode(mode, self.modes)
        if role not in ("weight", "act"):
            raise ValueError(f"role must be 'weight' or 'act', got {role!r}")
        if init_style not in ("fixed", "reference"):
            raise ValueError(f"init_style must be 'fixed' or 'reference', got {init_style!r}")
        self.role = role
        self.init_style = init_style
        self.bits = bits
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False  # python mirror of `initialized`: no device sync in forward
        self.where: str | None = None  # which layer, for error messages (quantize_model sets it)
        self.register_load_state_dict_post_hook(_sync_ready)

    @property
    def bits(self) -> int | None:
        return self._bits

    @bits.setter
    def bits(self, value: int | None) -> None:
        self._bits = check_bits(value)

    @property
    def zero_value(self) -> float:
        """The real value that integer code 0 stands for (what a following conv must pad with)."""
        return 0.0

    def init_from(self, x: Tensor, *, cap: float | None = None, high: float | None = None) -> None:
        """Initialise the parameters from a tensor: the weight itself, or (a sample of) activations.

        ``init_style="fixed"``: the clip that minimises the quantization MSE of ``x`` at the current bit width
        (:func:`mse_clip`), for every method. ``"reference"``: the official code's rules, a = c = 0.9 max|W| for
        weights and the percentile rule of :func:`act_init_value` for activations. ``cap`` (6 after ReLU6)
        bounds an activation clip; ``high`` overrides the top of the search when ``x`` is a sample of a larger
        tensor whose range is known (see :func:`clip_range`).

        Raises:
            ValueError: ``x`` is empty or holds NaN or inf; the quantizer has no bit width (``bits=None``).
        """
        if x.numel() == 0:
            raise ValueError("cannot initialise a quantizer from an empty tensor")
        bad = int((~torch.isfinite(x.detach())).sum())
        if bad:
            raise ValueError(f"cannot initialise a quantizer from a tensor with {bad} NaN or inf values "
                             f"(of {x.numel()})")
        if self._bits is None:
            raise ValueError("a quantizer with bits=None (float) has nothing to initialise: set its bits first")
        if self.init_style == "reference":
            value = self._reference_value(x, cap)
        else:
            top = clip_range(x, self.mode) if high is None else high
            value = mse_clip(x, self._quantize_at, min(top, cap) if cap is not None else top)
        self._set_from_value(value, x)
        self.initialized.fill_(True)
        self._ready = True

    def _reference_value(self, x: Tensor, cap: float | None) -> float:
        """The official code's initial a = c (DuQ's rules; LSQ overrides it with its own paper's rule)."""
        if self.role == "weight":
            value = WEIGHT_INIT_FRACTION * float(x.detach().abs().max())
            return value if value > 0 else 1e-3
        return act_init_value(x, self.mode, style="reference", cap=cap)

    def _quantize_at(self, x: Tensor, clip: float) -> Tensor:
        """``x`` fake-quantized at the current bits with clip ``clip`` (the search of :func:`mse_clip`)."""
        raise NotImplementedError

    def _set_from_value(self, value: float, x: Tensor) -> None:
        raise NotImplementedError

    def quantize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self._bits is None:
            return x
        if not self._ready:
            self.init_on_first_use(x)
        return self.quantize(x)

    def init_on_first_use(self, x: Tensor, **kwargs) -> None:
        """``init_from`` for the first tensor a quantizer meets outside :func:`~profit_edu.layers.calibrate`; an
        error names the layer (``where``, set by :func:`~profit_edu.layers.quantize_model`)."""
        try:
            self.init_from(x, **kwargs)
        except ValueError as err:
            raise ValueError(f"{self.where or 'a quantizer'}, initialising from the first batch it saw: {err}") \
                from err

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, bits={self._bits}, role={self.role!r}"


def _sync_ready(module: Quantizer, incompatible_keys: object) -> None:
    module._ready = bool(module.initialized)


class DuQ(Quantizer):
    """DuQ with learnable clip ``a`` and scale ``c``, stored as ``a_hat``, ``c_hat`` under softplus.

    >>> q = DuQ("unsigned", bits=2); q.set_a_c(1.0, 2.0)
    >>> q(torch.tensor([0.2, 0.5, 7.0]))
    tensor([0.6667, 1.3333, 2.0000], grad_fn=<_DuQFunctionBackward>)
    """

    def __init__(self, mode: str, bits: int | None = None, **kwargs) -> None:
        super().__init__(mode, bits, **kwargs)
        self.a_hat = nn.Parameter(inverse_softplus(1.0))
        self.c_hat = nn.Parameter(inverse_softplus(1.0))

    @property
    def a(self) -> Tensor:
        return F.softplus(self.a_hat)

    @property
    def c(self) -> Tensor:
        return F.softplus(self.c_hat)

    @property
    def zero_value(self) -> float:
        return -HSWISH_OFFSET if self.mode == "hswish" else 0.0

    def step(self) -> Tensor:
        """The output step c / K (the real value of one code)."""
        return self.c / num_steps(self._bits, self.mode)

    @torch.no_grad()
    def set_a_c(self, a: float, c: float) -> None:
        """Set a and c directly (both > 0) and mark the quantizer initialised."""
        self.a_hat.copy_(inverse_softplus(a))
        self.c_hat.copy_(inverse_softplus(c))
        self.initialized.fill_(True)
        self._ready = True

    def _set_from_value(self, value: float, x: Tensor) -> None:
        with torch.no_grad():
            self.a_hat.copy_(inverse_softplus(value))
            self.c_hat.copy_(inverse_softplus(value))

    def quantize(self, x: Tensor) -> Tensor:
        return _duq(x, F.softplus(self.a_hat), F.softplus(self.c_hat), self._bits, self.mode)

    def _quantize_at(self, x: Tensor, clip: float) -> Tensor:
        t = torch.tensor(clip, dtype=x.dtype, device=x.device)
        return _duq(x, t, t, self._bits, self.mode)

    def codes(self, x: Tensor) -> Tensor:
        """Integer codes of ``x`` under the current a (int64)."""
        return duq_codes(x, self.a.detach(), self._bits, self.mode)


class PACTQuantizer(Quantizer):
    """PACT in the quantizer interface. PACT has no offset grid: an ``"hswish"`` point is quantized
    unsigned on [0, alpha], so h-swish's negative values collapse to 0 (the weakness Fig. 6 of PROFIT shows).
    """

    modes = ("signed", "unsigned")

    def __init__(self, mode: str, bits: int | None = None, **kwargs) -> None:
        super().__init__(mode, bits, **kwargs)
        self.alpha = nn.Parameter(torch.tensor(1.0))

    def _set_from_value(self, value: float, x: Tensor) -> None:
        with torch.no_grad():
            self.alpha.fill_(value)

    def quantize(self, x: Tensor) -> Tensor:
        return _PACTFunction.apply(x, self.alpha.abs(), num_steps(self._bits, self.mode), self.mode == "signed")

    def _quantize_at(self, x: Tensor, clip: float) -> Tensor:
        t = torch.tensor(clip, dtype=x.dtype, device=x.device)
        return _PACTFunction.apply(x, t, num_steps(self._bits, self.mode), self.mode == "signed")


class LSQQuantizer(Quantizer):
    """LSQ in the quantizer interface: one learnable step ``s``.

    Initialisation: ``init_style="reference"`` uses LSQ's own rule, s = 2 mean|x| / sqrt(Qp); ``"fixed"``
    the same MSE-optimal clip as every quantizer (:func:`mse_clip`), s = clip / Qp, so the three methods start
    from equally good grids and a comparison measures how they train.

    ``s`` is the step at the bit width it was initialised at (the buffer ``s_bits``). At another bit width the
    step is ``s * sqrt(Qp(s_bits) / Qp(bits))``: LSQ's own initialisation rule, step proportional to
    1 / sqrt(Qp), carried over, so lowering the bits with :func:`~profit_edu.layers.set_bits` starts from the
    step LSQ would have initialised at the new width, times what training taught ``s``. (Keeping the step as it
    is shrinks the clipping range with the bits, 127 s -> 7 s from 8 to 4 signed bits; keeping the clipping
    range instead, as PACT and DuQ do, makes the 4-bit step 3x LSQ's 4-bit initialisation and rounds most
    activations to zero: measured, that collapsed W4A4 MobileNetV2 to chance.) At the initialisation bit
    width, this is LSQ exactly.

    >>> q = LSQQuantizer("unsigned", 8, init_style="reference")
    >>> q.init_from(torch.full((4,), 1.0))        # s = 2 * 1 / sqrt(255) at 8 bits
    >>> q.bits = 4
    >>> round(q.step(), 4) == round(2 / math.sqrt(15), 4)   # = LSQ's initialisation at 4 bits
    True
    """

    modes = ("signed", "unsigned")

    def __init__(self, mode: str, bits: int | None = None, **kwargs) -> None:
        super().__init__(mode, bits, **kwargs)
        self.s = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("s_bits", torch.tensor(8, dtype=torch.int64))
        self._s_bits = 8  # python mirror of `s_bits`: no device sync in forward
        self.register_load_state_dict_post_hook(_sync_s_bits)

    def _reference_value(self, x: Tensor, cap: float | None) -> float:
        """LSQ's own rule, as a clip: s = 2 mean|x| / sqrt(Qp), so the clip is s * Qp."""
        qp = _lsq_bounds(self._bits, self.mode)[1]
        s = 2.0 * float(x.detach().abs().mean()) / math.sqrt(qp)
        return (s if s > 0 else 1e-3) * qp

    def _quantize_at(self, x: Tensor, clip: float) -> Tensor:
        qn, qp = _lsq_bounds(self._bits, self.mode)
        s = clip / qp
        return torch.clamp(x / s, qn, qp).round_() * s

    def _set_from_value(self, value: float, x: Tensor) -> None:
        """``value`` is a clip: the step is clip / Qp at the current bits, which become ``s_bits``."""
        qp = _lsq_bounds(self._bits, self.mode)[1]
        with torch.no_grad():
            self.s.fill_(value / qp)
            self.s_bits.fill_(self._bits)
        self._s_bits = self._bits

    def _step_ratio(self) -> float:
        ref = self._s_bits
        if ref == self._bits:
            return 1.0
        return math.sqrt(_lsq_bounds(ref, self.mode)[1] / _lsq_bounds(self._bits, self.mode)[1])

    def step(self) -> float:
        """The step size in use at the current bit width, as a float."""
        return float(self.s.detach().abs()) * self._step_ratio()

    def quantize(self, x: Tensor) -> Tensor:
        qn, qp = _lsq_bounds(self._bits, self.mode)
        s = _scale_grad(self.s.abs(), 1.0 / math.sqrt(x.numel() * qp)).to(x.dtype)
        ratio = self._step_ratio()
        if ratio != 1.0:
            s = s * ratio
        return round_ste(torch.clamp(x / s, qn, qp)) * s


def _sync_s_bits(module: LSQQuantizer, incompatible_keys: object) -> None:
    module._s_bits = int(module.s_bits)


METHODS = ("duq", "pact", "lsq")


def make_quantizer(
    method: str,
    mode: str,
    bits: int | None = None,
    *,
    role: Literal["weight", "act"] = "act",
    init_style: str = "fixed",
) -> Quantizer:
    """Build a quantizer of ``method`` ("duq", "pact", "lsq") for a point of kind ``mode``.

    The baselines get the grid their own papers would choose where one exists, and a fair one where none does:

    * ``"unsigned"`` points (after ReLU/ReLU6): every method's unsigned grid, [0, clip].
    * ``"signed"`` points (residual-block inputs, weights): a signed grid for every method. PACT's paper quantizes
      only ReLU outputs, so a signed PACT is this project's extension (symmetric, clip at -alpha and alpha, alpha
      learning from both tails); clipping the block inputs at 0 instead would throw away half of every residual
      signal and make PACT a strawman.
    * ``"hswish"`` points: neither baseline has an offset grid, so PACT keeps its unsigned grid (h-swish's
      negatives are lost) and LSQ takes its signed grid (half the codes spent on h-swish's [-3/8, 0) range): the
      two weaknesses PROFIT's Fig. 6 shows, kept on purpose.

    ``init_style="fixed"`` initialises all three the same way (the clip of least quantization error), so a
    comparison of methods measures how they train, not how they start.
    """
    mode = _check_mode(mode)
    if method == "duq":
        return DuQ(mode, bits, role=role, init_style=init_style)
    if method == "pact":
        return PACTQuantizer("unsigned" if mode == "hswish" else mode, bits, role=role, init_style=init_style)
    if method == "lsq":
        return LSQQuantizer("signed" if mode == "hswish" else mode, bits, role=role, init_style=init_style)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
