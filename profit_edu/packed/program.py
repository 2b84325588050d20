"""The integer program: what a packed model *is*, independent of how it is run or stored.

:func:`~profit_edu.packed.convert.to_program` turns a quantization-aware-trained (QAT) MobileNet into a
:class:`Program`: a list of integer operations on named tensors of integer codes. Three things read it:
the :class:`~profit_edu.packed.engine.IntegerEngine` (integer arithmetic), the
:class:`~profit_edu.packed.deploy.DeployableModel` (the same network with real numbers: fake quantization) and the
ONNX exporter; the packed file format stores it.

Every tensor has integer codes ``k`` and a *scale* and *offset* that say which real number a code stands for::

    real = scale * k - offset

``image``
    the input: the normalised image ``(x / 255 - mean) / std`` rounded to signed 8-bit codes with a fixed scale
    (2**-5 by default: codes -128..127 cover -4..3.97, all of CIFAR-10's and ImageNet's normalised range).
    Code 0 is the real 0 that the float model pads with, so the stem pads with integer zero.
``codes``
    the output of a DuQ quantizer: scale ``c / K``; offset 3/8 on h-swish grids (code 0 = -3/8), else 0.
``stream``
    a residual stream (block outputs, which PROFIT keeps in float): a fine grid 2**P times finer than the step of
    the quantizer that reads it next (P = 8), so the skip path keeps 8 more bits than the branch.
``fine``
    the input of a global average pool (the last conv's activation, float in PROFIT): a grid 2**P times finer
    than the pooled quantizer's step, so pooling loses nothing before the pooled value is quantized.
``gate``
    SE's hard-sigmoid gate, in steps of 1/G (G = 255): ``gate = k / 255``.
``logits``
    the classifier's int32 accumulator plus bias; scale = input step times weight step.

Operations (all integer; "requant" is :func:`~profit_edu.packed.fixedpoint.requantize` with round half to even):

:class:`Conv`
    ``n = conv(k_in, w, zero padding) + bias`` (int32), then ``clamp(requant(n), lo, hi)``, or for h-swish the
    table of :class:`~profit_edu.packed.fixedpoint.HSwishTable`. BatchNorm, the weight and input scales, and any
    offset are folded into the per-channel ``(m0, shift)`` and ``bias`` (see :mod:`profit_edu.packed.fold`).
    Linear layers are convs on a 1x1 image.
:class:`Rescale`
    ``clamp(requant(k), lo, hi)``: a stream read by a block's signed input quantizer.
:class:`Add`
    ``clamp(requant(k_skip) + k_branch, lo, hi)``: the residual add on the stream grid.
:class:`Pool`
    ``clamp(requant(sum over H, W of k), lo, hi)``: global average pooling (input and output offsets are equal).
:class:`SEMul`
    SE's ``x * gate`` re-quantized: ``clamp(requant(k * g * 2**Z + z * (G - g)), lo, hi)`` with
    ``z = round(offset / scale * 2**Z)`` the input's zero point in fixed point (Z = 8 bits).

:func:`check_program` validates a program before anything runs it: names, shapes, code ranges, and that every
accumulator provably fits in int32 (:class:`AccumulatorOverflowError` otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .bitpack import PACK_BITS
from .fixedpoint import M0_MAX, M0_MIN, SHIFT_MAX, SHIFT_MIN

__all__ = [
    "INT32_MAX",
    "MAX_INPUT_SIZE",
    "AccumulatorOverflowError",
    "Add",
    "Conv",
    "Op",
    "Pool",
    "Program",
    "Rescale",
    "SEMul",
    "TensorSpec",
    "UnsupportedBitsError",
    "UnsupportedModelError",
    "check_channel_values",
    "check_classes",
    "check_input_size",
    "check_program",
    "conv_accumulator_bound",
]

INT32_MAX = 2**31 - 1
MAX_INPUT_SIZE = 4096  # pixels a side: beyond it one image's codes alone take gigabytes
TENSOR_KINDS = ("image", "codes", "stream", "fine", "gate", "logits")
ACTS = ("clamp", "hswish")


class UnsupportedBitsError(ValueError):
    """A bit width the packed format or the integer engine cannot handle."""


class UnsupportedModelError(ValueError):
    """A model the converter cannot turn into an integer program (says what is missing)."""


class AccumulatorOverflowError(ValueError):
    """A layer whose int32 accumulator could overflow for some input codes."""


@dataclass(frozen=True)
class TensorSpec:
    """An integer tensor of the program: ``real = scale * code - offset``, codes in ``lo..hi``.

    Attributes:
        kind: one of "image", "codes", "stream", "fine", "gate", "logits" (see the module docstring).
        scale: the real value of one code step (> 0).
        offset: subtracted from ``scale * code`` (3/8 on h-swish grids).
        lo, hi: the code range.
        channels: the channel count.
        bits: the quantizer's bit width for "codes" (and 8 for "image"), else None.
        mode: the DuQ grid ("signed", "unsigned", "hswish") for "codes", else None.
    """

    kind: str
    scale: float
    offset: float
    lo: int
    hi: int
    channels: int
    bits: int | None = None
    mode: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "scale": self.scale, "offset": self.offset, "lo": self.lo, "hi": self.hi,
                "channels": self.channels, "bits": self.bits, "mode": self.mode}


@dataclass
class Conv:
    """A convolution (or linear layer) with folded BatchNorm and fixed-point requantization.

    Attributes:
        name: the QAT module's name (for messages).
        input, output: tensor names.
        weight: int64 weight codes, (O, I / groups, kh, kw); for linear layers (O, I, 1, 1).
        weight_bits: the weight quantizer's bit width (codes lie in -(2**(b-1)-1)..2**(b-1)-1).
        bias: int64 (O,), in accumulator units (int32 range).
        m0, shift: int64 (O,), the per-channel multiplier m0 * 2**-shift.
        pre_step: the real value of one unit of ``requant(n)`` (the output grid's step for "clamp"; the finer
            pre-activation step for "hswish"). So one accumulator unit of channel c is worth
            ``m0[c] * 2**-shift[c] * pre_step``.
        act: "clamp" or "hswish".
        frac_bits: for "hswish": the pre-activation grid is 2**frac_bits times finer than the output step.
        stride, padding, groups: as in ``nn.Conv2d`` (square).
        linear: input is (N, I), output (N, O).
    """

    name: str
    input: str
    output: str
    weight: Tensor
    weight_bits: int
    bias: Tensor
    m0: Tensor
    shift: Tensor
    pre_step: float
    act: str = "clamp"
    frac_bits: int = 0
    stride: int = 1
    padding: int = 0
    groups: int = 1
    linear: bool = False

    kind = "conv"


@dataclass
class Rescale:
    """``clamp(requant(k), lo, hi)`` elementwise (per-tensor m0, shift)."""

    name: str
    input: str
    output: str
    m0: int
    shift: int

    kind = "rescale"


@dataclass
class Add:
    """``clamp(requant(k_skip) + k_branch, lo, hi)``: a residual add on the output's grid."""

    name: str
    skip: str
    branch: str
    output: str
    m0: int
    shift: int

    kind = "add"


@dataclass
class Pool:
    """``clamp(requant(sum over H, W of k), lo, hi)``: global average pooling, (N, C, H, W) -> (N, C)."""

    name: str
    input: str
    output: str
    m0: int
    shift: int

    kind = "pool"


@dataclass
class SEMul:
    """``clamp(requant(k * g * 2**zero_bits + zero * (G - g)), lo, hi)``: SE's gating, re-quantized.

    ``G`` is the gate tensor's ``hi``; ``zero = round(offset / scale * 2**zero_bits)`` of the input.
    """

    name: str
    input: str
    gate: str
    output: str
    zero: int
    zero_bits: int
    m0: int
    shift: int

    kind = "semul"


Op = Conv | Rescale | Add | Pool | SEMul


@dataclass
class Program:
    """An integer MobileNet: tensors, operations in execution order, and how to make the input.

    Attributes:
        tensors: every tensor's :class:`TensorSpec`, by name; "image" is the input.
        ops: the operations in the order they run.
        output: the name of the logits tensor.
        input_size: (H, W) the program was compiled for (pooling and bounds depend on it).
        mean, std: the per-channel normalisation of [0, 1] pixels the model was trained with.
        arch: how to rebuild the float model: ``{"builder": "mobilenet_v2", "kwargs": {...}}``.
        classes: class names, or None.
    """

    tensors: dict[str, TensorSpec]
    ops: list[Op]
    output: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    arch: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None

    @property
    def input(self) -> TensorSpec:
        return self.tensors["image"]

    def convs(self) -> list[Conv]:
        return [op for op in self.ops if isinstance(op, Conv)]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-image shape of every tensor: (C, H, W) for maps, (C,) for vectors (checked by :func:`check_program`)."""
        return check_program(self)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def conv_accumulator_bound(op: Conv, spec_in: TensorSpec) -> int:
    """The largest |acc + bias| of a conv for *any* weights of its bit width and any input codes in range.

    Math: fan_in * K_w * max(|lo_in|, |hi_in|) + max|bias|, with K_w = 2**(b-1) - 1.
    """
    k_w = 2 ** (op.weight_bits - 1) - 1
    fan_in = op.weight.shape[1] * op.weight.shape[2] * op.weight.shape[3]
    x_max = max(abs(spec_in.lo), abs(spec_in.hi))
    b_max = int(op.bias.abs().max()) if op.bias.numel() else 0
    return fan_in * k_w * x_max + b_max


def _fail(cls: type[ValueError], where: str, msg: str) -> None:
    raise cls(f"{where}: {msg}")


def _check_mult(where: str, m0: Tensor | int, shift: Tensor | int) -> None:
    m0 = torch.as_tensor(m0)
    shift = torch.as_tensor(shift)
    if m0.numel() and (int(m0.min()) < M0_MIN or int(m0.max()) >= M0_MAX):
        _fail(ValueError, where, f"m0 must lie in [2**30, 2**31), got {int(m0.min())}..{int(m0.max())}")
    if shift.numel() and (int(shift.min()) < SHIFT_MIN or int(shift.max()) > SHIFT_MAX):
        _fail(ValueError, where,
              f"shift must lie in {SHIFT_MIN}..{SHIFT_MAX}, got {int(shift.min())}..{int(shift.max())}")


def _check_conv(op: Conv, spec_in: TensorSpec, spec_out: TensorSpec, shape_in: tuple[int, ...]) -> tuple[int, ...]:
    where = f"conv {op.name!r}"
    if op.weight_bits not in PACK_BITS:
        _fail(UnsupportedBitsError, where, f"weight bits {op.weight_bits} are not supported by the packed format "
                                           f"and engine (one of {PACK_BITS}); set_bits(model, weight_bits=4) first")
    w = op.weight
    if w.dtype != torch.int64 or w.dim() != 4:
        _fail(ValueError, where, f"weight must be int64 (O, I/groups, kh, kw), got {w.dtype} {tuple(w.shape)}")
    k_w = 2 ** (op.weight_bits - 1) - 1
    if w.numel() and int(w.abs().max()) > k_w:
        _fail(ValueError, where, f"weight codes must lie in -{k_w}..{k_w} for {op.weight_bits} bits, "
                                 f"got max |code| {int(w.abs().max())}")
    out_ch = w.shape[0]
    for name, t in (("bias", op.bias), ("m0", op.m0), ("shift", op.shift)):
        if t.dtype != torch.int64 or tuple(t.shape) != (out_ch,):
            _fail(ValueError, where, f"{name} must be int64 of shape ({out_ch},), got {t.dtype} {tuple(t.shape)}")
    _check_mult(where, op.m0, op.shift)
    if not (math.isfinite(op.pre_step) and op.pre_step > 0):
        _fail(ValueError, where, f"pre_step must be a positive finite number, got {op.pre_step}")
    if op.act not in ACTS:
        _fail(ValueError, where, f"act must be one of {ACTS}, got {op.act!r}")
    if op.groups < 1 or op.stride < 1 or op.padding < 0:
        _fail(ValueError, where, f"bad stride/padding/groups {op.stride}/{op.padding}/{op.groups}")
    if spec_out.channels != out_ch or spec_in.channels != w.shape[1] * op.groups or out_ch % op.groups:
        _fail(ValueError, where, f"weight {tuple(w.shape)} with groups {op.groups} does not map {spec_in.channels} "
                                 f"to {spec_out.channels} channels")
    bound = conv_accumulator_bound(op, spec_in)
    if bound > INT32_MAX:
        _fail(AccumulatorOverflowError, where,
              f"the int32 accumulator could overflow: fan-in {w.shape[1] * w.shape[2] * w.shape[3]} x "
              f"{k_w} (largest {op.weight_bits}-bit weight code) x {max(abs(spec_in.lo), abs(spec_in.hi))} (largest "
              f"input code) + max|bias| = {bound} > 2**31 - 1; use fewer bits for this layer or split it")
    if op.linear:
        if len(shape_in) != 1 or w.shape[2:] != (1, 1):
            _fail(ValueError, where, f"a linear layer needs a (C,) input and (O, I, 1, 1) weight, got input "
                                     f"{shape_in} and weight {tuple(w.shape)}")
        return (out_ch,)
    if len(shape_in) != 3:
        _fail(ValueError, where, f"a conv needs a (C, H, W) input, got {shape_in}")
    _, h, wd = shape_in
    kh, kw = w.shape[2:]
    oh = (h + 2 * op.padding - kh) // op.stride + 1
    ow = (wd + 2 * op.padding - kw) // op.stride + 1
    if oh < 1 or ow < 1:
        _fail(ValueError, where, f"input {h}x{wd} is too small for kernel {kh}x{kw}")
    return (out_ch, oh, ow)


def check_input_size(value: object) -> tuple[int, int]:
    """An input size as (H, W): an int S (for SxS) or two ints, each in 1..:data:`MAX_INPUT_SIZE`.

    Raises:
        ValueError: anything else (a bool, 0, a negative number, a string, three numbers, ...).

    >>> check_input_size(32), check_input_size([224, 160])
    ((32, 32), (224, 160))
    """
    pair = tuple(value) if isinstance(value, (list, tuple)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_INPUT_SIZE
                                 for v in pair):
        raise ValueError(f"input_size must be an int, or two ints (H, W), in 1..{MAX_INPUT_SIZE}, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_channel_values(name: str, value: object, *, positive: bool = False) -> tuple[float, float, float]:
    """The normalisation ``mean`` or ``std``: three finite numbers, one per RGB channel (``positive``: each > 0).

    Raises:
        ValueError: naming ``name``, what it must be and the value received.
    """
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in value)
    if not ok:
        raise ValueError(f"{name} must be 3 finite numbers (R, G, B){', each > 0' if positive else ''}, "
                         f"got {value!r}")
    return tuple(float(v) for v in value)  # type: ignore[return-value,union-attr]


def check_classes(classes: object, outputs: int) -> None:
    """Class names: None, or one string per model output, in output order (the engine indexes them by output).

    Raises:
        ValueError: not a list of strings, or another number of names than ``outputs``.
    """
    if classes is None:
        return
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"classes must be a list of class names (strings), got {classes!r:.80}")
    if len(classes) != outputs:
        raise ValueError(f"classes has {len(classes)} names, but the model has {outputs} outputs: give one name per "
                         "output, in output order (or none)")


def _check_specs(tensors: dict[str, TensorSpec]) -> None:
    """Every tensor's kind, scale, offset, range and channels; a 3-channel ``image`` input."""
    if "image" not in tensors or tensors["image"].kind != "image" or tensors["image"].channels != 3:
        raise ValueError("program must have a 3-channel 'image' input tensor")
    for name, spec in tensors.items():
        if spec.kind not in TENSOR_KINDS:
            raise ValueError(f"tensor {name!r}: kind must be one of {TENSOR_KINDS}, got {spec.kind!r}")
        if not (math.isfinite(spec.scale) and spec.scale > 0 and math.isfinite(spec.offset)):
            raise ValueError(f"tensor {name!r}: scale must be finite and > 0 and offset finite, got "
                             f"{spec.scale}, {spec.offset}")
        if not (-INT32_MAX <= spec.lo <= spec.hi <= INT32_MAX) or spec.channels < 1:
            raise ValueError(f"tensor {name!r}: need -2**31 < lo <= hi < 2**31 and channels >= 1, got "
                             f"{spec.lo}..{spec.hi}, {spec.channels} channels")


class _Flow:
    """The tensors written so far and their per-image shapes: each is read only after it is written, and written
    once, with the channels its :class:`TensorSpec` declares."""

    def __init__(self, tensors: dict[str, TensorSpec], image_shape: tuple[int, ...]) -> None:
        self.tensors = tensors
        self.shapes: dict[str, tuple[int, ...]] = {"image": image_shape}

    def read(self, name: str, where: str) -> tuple[TensorSpec, tuple[int, ...]]:
        if name not in self.shapes:
            raise ValueError(f"{where} reads tensor {name!r}, which is not written before it")
        return self.tensors[name], self.shapes[name]

    def write(self, name: str, shape: tuple[int, ...], where: str) -> None:
        if name not in self.tensors:
            raise ValueError(f"{where} writes tensor {name!r}, which has no TensorSpec")
        if name in self.shapes:
            raise ValueError(f"{where} writes tensor {name!r} a second time")
        if shape[0] != self.tensors[name].channels:
            raise ValueError(f"{where}: tensor {name!r} has {self.tensors[name].channels} channels, the op makes "
                             f"{shape[0]}")
        self.shapes[name] = shape


def _pool_shape(op: Pool, spec_in: TensorSpec, shape_in: tuple[int, ...], where: str) -> tuple[int, ...]:
    if len(shape_in) != 3:
        raise ValueError(f"{where}: pooling needs a (C, H, W) input, got {shape_in}")
    _check_mult(where, op.m0, op.shift)
    total = shape_in[1] * shape_in[2] * max(abs(spec_in.lo), abs(spec_in.hi))
    if total > INT32_MAX:
        raise AccumulatorOverflowError(f"{where}: the pooled sum could reach {total} > 2**31 - 1")
    return (shape_in[0],)


def _semul_shape(op: SEMul, flow: _Flow, where: str) -> tuple[int, ...]:
    spec_in, shape_in = flow.read(op.input, where)
    spec_g, shape_g = flow.read(op.gate, where)
    if len(shape_in) != 3 or shape_g not in ((shape_in[0],), (shape_in[0], 1, 1)):
        raise ValueError(f"{where}: needs a (C, H, W) input and a (C,) gate, got {shape_in}, {shape_g}")
    if spec_g.kind != "gate" or spec_g.lo != 0 or not 0 <= op.zero_bits <= 16:
        raise ValueError(f"{where}: the gate must be a 'gate' tensor with lo 0, zero_bits in 0..16")
    big_g = spec_g.hi
    total = max(abs(spec_in.lo), abs(spec_in.hi)) * big_g * 2**op.zero_bits + abs(op.zero) * big_g
    if total > INT32_MAX:
        raise AccumulatorOverflowError(f"{where}: the SE numerator could reach {total} > 2**31 - 1")
    _check_mult(where, op.m0, op.shift)
    return shape_in


def _output_shape(op: Any, flow: _Flow, where: str) -> tuple[int, ...]:
    """Check one operation against the tensors it reads; return the per-image shape of what it writes."""
    if isinstance(op, Conv):
        spec_in, shape_in = flow.read(op.input, where)
        if op.output not in flow.tensors:
            raise ValueError(f"{where} writes tensor {op.output!r}, which has no TensorSpec")
        return _check_conv(op, spec_in, flow.tensors[op.output], shape_in)
    if isinstance(op, Rescale):
        _, shape_in = flow.read(op.input, where)
        _check_mult(where, op.m0, op.shift)
        return shape_in
    if isinstance(op, Add):
        _, shape_skip = flow.read(op.skip, where)
        _, shape_branch = flow.read(op.branch, where)
        if shape_skip != shape_branch:
            raise ValueError(f"{where}: skip {shape_skip} and branch {shape_branch} shapes differ")
        _check_mult(where, op.m0, op.shift)
        return shape_skip
    if isinstance(op, Pool):
        return _pool_shape(op, *flow.read(op.input, where), where)
    if isinstance(op, SEMul):
        return _semul_shape(op, flow, where)
    raise ValueError(f"unknown operation {op!r}")


def check_program(program: Program) -> dict[str, tuple[int, ...]]:
    """Validate a program; return every tensor's per-image shape.

    Checks names (each tensor written once, read after it is written), dtypes and shapes of the integer
    parameters, multipliers in range, code ranges, and int32 bounds of every accumulator, pooled sum and SE
    numerator, for *all* inputs in range.

    Raises:
        UnsupportedBitsError: a weight bit width outside 2, 3, 4, 8.
        AccumulatorOverflowError: an accumulator or sum that could leave int32.
        ValueError: anything else malformed (the message names the operation).
    """
    tensors = program.tensors
    _check_specs(tensors)
    h, w = check_input_size(program.input_size)
    check_channel_values("mean", program.mean)
    check_channel_values("std", program.std, positive=True)
    flow = _Flow(tensors, (3, h, w))
    for op in program.ops:
        where = f"{op.kind} {op.name!r}"
        flow.write(op.output, _output_shape(op, flow, where), where)
    shapes = flow.shapes
    if program.output not in shapes or tensors[program.output].kind != "logits":
        raise ValueError(f"output {program.output!r} must be a 'logits' tensor written by the program")
    check_classes(program.classes, tensors[program.output].channels)
    return shapes
