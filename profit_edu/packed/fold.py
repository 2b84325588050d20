"""Folding BatchNorm, scales and offsets into one integer bias and one fixed-point multiplier per channel.

*Float folding.* In eval mode BatchNorm is an affine map per channel, ``bn(z) = g * z + h`` with::

    g = gamma / sqrt(running_var + eps)        h = beta - running_mean * g

so conv-then-BN is one conv with weights ``g * w`` and bias ``g * b + h`` (:func:`fold_bn`).

*Integer folding* (:func:`fold_integer`). In a quantized layer the input is ``x = s_in * k - o_in`` (codes k,
step s_in, offset o_in = 3/8 after h-swish), the weight is ``w = s_w * q`` (signed DuQ codes q, step s_w = c / K).
With negative padding every tap of the convolution carries the offset, so for output channel c::

    conv(x, w) = s_in * s_w * acc  -  o_in * s_w * sum(q_c)          acc = sum(k * q)   (integer, zero padding)
    y          = g * (conv(x, w) + b) + h + e                        e: an extra constant (+3 for hard-sigmoid)
               = A * (acc + B)

    A = |g| * s_in * s_w                                             one accumulator unit, in real units
    B = -o_in * sum(q_c) / s_in  +  sign(g) * b / (s_in * s_w)  +  (h + e) / A

A negative ``g`` flips the sign of that channel's weight codes (DuQ's grid is symmetric, so they stay in range).
The layer then needs ``round(y / t)`` for the output's pre-activation step ``t``, which is::

    round(M * (acc + bias))     M = A / t = m0 * 2**-shift,   bias = round(B)   (int32)

``bias`` absorbs BatchNorm's shift, the conv bias and the ``-3/8 * sum(w)`` term of negative padding;
``M`` absorbs BatchNorm's scale and the three steps. Rounding B to an integer moves y by at most A / 2, a fraction
of an accumulator unit (which is usually 1/100 of an output step or less).

*Constant channels.* A channel whose BatchNorm scale ``g`` is 0 or so small that ``|B| > 2**30`` (it would not fit
an int32 bias next to the accumulator), or ``M < 2**-31``, outputs the constant ``y = h + e + g * (b - o_in s_w
sum(q))`` whatever its input. Such channels exist in trained MobileNets ("dead" channels). They are stored as
zero weights with ``M = 1`` and ``bias = round(y / t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .fixedpoint import M0_MIN, quantize_multipliers

__all__ = ["FoldedChannels", "bn_affine", "fold_bn", "fold_integer"]

BIAS_LIMIT = 2**30  # |bias| above this marks a constant channel (int32 with room for the accumulator)
MULT_MIN = 2.0**-31


def bn_affine(bn: nn.BatchNorm2d | None, channels: int) -> tuple[Tensor, Tensor]:
    """``(g, h)`` of an eval-mode BatchNorm in float64 (``(1, 0)`` when ``bn`` is None).

    Raises:
        ValueError: the BatchNorm has no running statistics or no affine parameters, or a wrong channel count.
    """
    if bn is None:
        return torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    if bn.num_features != channels:
        raise ValueError(f"BatchNorm has {bn.num_features} channels, the conv {channels}")
    mean, var = bn.running_mean.detach().double(), bn.running_var.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    g = gamma / torch.sqrt(var + bn.eps)
    return g, beta - mean * g


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A float64 ``nn.Conv2d`` equal to ``bn(conv(x))`` in eval mode: weights ``g * w``, bias ``g * b + h``.

    >>> conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4).eval()
    >>> x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    >>> torch.allclose(fold_bn(conv, bn)(x), bn.double()(conv.double()(x)))
    True
    """
    g, h = bn_affine(bn, conv.out_channels)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, dtype=torch.float64)
    with torch.no_grad():
        folded.weight.copy_(conv.weight.detach().double() * g.view(-1, 1, 1, 1))
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(g)
        folded.bias.copy_(g * b + h)
    return folded


@dataclass
class FoldedChannels:
    """The integer form of one layer (see the module docstring).

    Attributes:
        weight: int64 weight codes with the sign of negative BatchNorm scales applied (constant channels: 0).
        bias: int64 (O,), int32 range.
        m0, shift: int64 (O,), the multipliers M = m0 * 2**-shift.
        constant: bool (O,), the channels stored as constants.
    """

    weight: Tensor
    bias: Tensor
    m0: Tensor
    shift: Tensor
    constant: Tensor


def fold_integer(
    codes: Tensor,
    w_step: float,
    in_step: float,
    in_offset: float,
    pre_step: float,
    g: Tensor,
    h: Tensor,
    conv_bias: Tensor | None = None,
    extra: float = 0.0,
) -> FoldedChannels:
    """Fold a quantized conv (+ BatchNorm) into integer weights, int32 bias and per-channel (m0, shift).

    Math: y = A (acc + B); output pre-activation round(y / t) = round(M (acc + bias)), M = A / t (module docstring).

    Args:
        codes: int64 signed weight codes q, (O, ...).
        w_step: s_w, the real value of one weight code (c / K of the weight quantizer).
        in_step, in_offset: s_in and o_in of the input tensor (x = s_in * k - o_in).
        pre_step: t, the step of the output's pre-activation grid.
        g, h: the BatchNorm affine map (float64, (O,)); ones and zeros without BatchNorm.
        conv_bias: the float conv bias b (O,), or None.
        extra: a constant added after BatchNorm (+3 for the hard-sigmoid gate, -o_skip for a residual branch).

    Raises:
        ValueError: a multiplier M >= 2**30 (the output step is far smaller than the accumulator's).
    """
    out_ch = codes.shape[0]
    q = codes.to(torch.int64).reshape(out_ch, -1)
    b = conv_bias.detach().double() if conv_bias is not None else torch.zeros(out_ch, dtype=torch.float64)
    sign = torch.where(g < 0, -1, 1).to(torch.int64)
    q = q * sign[:, None]
    sum_q = q.sum(dim=1).double()
    a_unit = g.abs() * in_step * w_step  # A: one accumulator unit in real units, (O,)
    mult = a_unit / pre_step
    with torch.no_grad():
        big_b = (-in_offset * sum_q / in_step + sign.double() * b / (in_step * w_step)
                 + (h + extra) / torch.where(a_unit > 0, a_unit, 1.0))
    live = (a_unit > 0) & (big_b.abs() <= BIAS_LIMIT) & (mult >= MULT_MIN)
    m0 = torch.full((out_ch,), M0_MIN, dtype=torch.int64)
    shift = torch.full((out_ch,), 30, dtype=torch.int64)  # M = 1 for constant channels
    m0[live], shift[live] = quantize_multipliers(mult[live])
    # constant channels: y does not depend on the input (to within far less than one output step)
    y_const = h + extra + g * (b - in_offset * w_step * codes.to(torch.int64).reshape(out_ch, -1).sum(1).double())
    bias = torch.where(live, torch.round(big_b), torch.round(y_const / pre_step).clamp(-BIAS_LIMIT, BIAS_LIMIT))
    weight = torch.where(live[:, None], q, 0)
    return FoldedChannels(weight.reshape(codes.shape), bias.to(torch.int64), m0, shift, ~live)
