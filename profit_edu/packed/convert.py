"""From a QAT MobileNet to an integer :class:`~profit_edu.packed.program.Program`.

The quantized model (``quantize_model(mobilenet_v2(...))``, trained or calibrated) already has integer codes for
every weight and every quantized activation. Four things in it are still float, and the deployable network
chooses integer versions of them (section G.16 of the notes: PROFIT keeps them float):

* **BatchNorm** is folded into per-channel integer biases and fixed-point multipliers (:mod:`.fold`).
* **Residual streams.** PROFIT's blocks compute ``x + F(Q(x))`` with a float skip ``x``. Here every block output
  is a *stream* tensor on a grid 2**8 times finer than the step of the quantizer that reads it next (the next
  block's signed ``quant_in`` or the head's ``quant_head``); the skip is rescaled onto the new stream's grid and
  added in integers. Reading a stream with ``quant_in`` is then a rounding shift by 8 bits.
* **The last activation and global pooling.** ``relu6`` / ``hardswish`` after the last conv is float in PROFIT;
  here it writes a *fine* tensor 2**8 times finer than the pooled quantizer's step, which is summed over H x W
  in int32 and requantized onto the pooled quantizer's grid.
* **SE's hard-sigmoid gate and product** (MobileNet-v3): the gate is requantized from fc2's accumulator onto
  steps of 1/255 (``hardsigmoid(y) = clamp((y + 3) / 6, 0, 1)``: the +3 joins fc2's bias), and ``x * gate`` is
  requantized onto SE's ``quant_out`` grid with the input's zero point in 8-bit fixed point.

The input image is quantized to signed 8-bit codes with a fixed scale (2**-5 by default) before the stem; the float
model never sees that rounding (one step is 1/32 of a standard deviation, about half a pixel level).

Supported: :func:`~profit_edu.models.mobilenet_v1`, ``mobilenet_v2``, ``mobilenet_v3_large`` and
``mobilenet_v3_small``, quantized with :func:`~profit_edu.layers.quantize_model` (DuQ) with every weight and
activation quantizer on, weight bits 2, 3, 4 or 8 and activation bits 2..8.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.constants import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD
from ..layers import QAct, QConv2d, QLinear
from ..models import MobileNetV1, MobileNetV2, MobileNetV3
from ..quant import HSWISH_OFFSET, DuQ, code_range, duq_codes, num_steps
from .fixedpoint import HSwishTable, quantize_multiplier
from .fold import bn_affine, fold_integer
from .program import (
    INT32_MAX,
    Add,
    Conv,
    Pool,
    Program,
    Rescale,
    SEMul,
    TensorSpec,
    UnsupportedModelError,
    check_channel_values,
    check_input_size,
    check_program,
)

__all__ = ["DEFAULTS", "ConvertOptions", "infer_arch", "to_program"]

log = logging.getLogger(__name__)

STREAM_LIMIT = 2**20  # stream codes are clamped to +-2**20 fine steps = +-4096 steps of the next quantizer


@dataclass(frozen=True)
class ConvertOptions:
    """The integer scales the deployable network chooses (see the module docstring).

    Attributes:
        input_scale: real value of one input-image code (the normalised image is rounded to int8 codes).
        stream_bits: P, residual streams are 2**P times finer than the next quantizer's step.
        pool_bits: the pooled input is 2**pool_bits times finer than the pooled quantizer's step.
        gate_levels: G, SE gates are multiples of 1/G (255: a gate code fits a uint8).
        zero_bits: Z, SE's input zero point is kept with Z fractional bits.
        max_frac_bits: the largest F for h-swish tables (pre-activation grid 2**F finer than the output step).
    """

    input_scale: float = 2.0**-5
    stream_bits: int = 8
    pool_bits: int = 8
    gate_levels: int = 255
    zero_bits: int = 8
    max_frac_bits: int = 8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.input_scale) and self.input_scale > 0):
            raise ValueError(f"input_scale must be a positive number, got {self.input_scale}")
        for name in ("stream_bits", "pool_bits", "zero_bits", "max_frac_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v <= 12:
                raise ValueError(f"{name} must be an int in 0..12, got {v!r}")
        if not isinstance(self.gate_levels, int) or not 1 <= self.gate_levels <= 2**12:
            raise ValueError(f"gate_levels must be an int in 1..4096, got {self.gate_levels!r}")


DEFAULTS = ConvertOptions()


@dataclass
class _Target:
    """Where a conv's output goes: the pre-activation step, the activation and the output tensor's spec."""

    spec: TensorSpec
    pre_step: float
    act: str = "clamp"
    frac_bits: int = 0
    extra: float = 0.0


def _duq(q: object, where: str) -> DuQ:
    if not isinstance(q, DuQ):
        raise UnsupportedModelError(f"{where}: the packed engine handles DuQ quantizers only (quantize_model's "
                                    f"method='duq'), got {type(q).__name__}")
    if q.bits is None:
        raise UnsupportedModelError(f"{where}: quantizer is off (bits=None); every weight and activation quantizer "
                                    "must be on: set_bits(model, weight_bits=..., act_bits=...)")
    if not bool(q.initialized):
        raise UnsupportedModelError(f"{where}: quantizer was never initialised; run the model on data (or "
                                    "profit_edu.calibrate) before packing")
    return q


class _Converter:
    def __init__(self, options: ConvertOptions) -> None:
        self.opt = options
        self.tensors: dict[str, TensorSpec] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.ops: list[Any] = []
        self.constant_channels = 0

    # ---------------------------------------------------------------- tensors and targets
    def new(self, name: str, spec: TensorSpec, shape: tuple[int, ...]) -> str:
        if name in self.tensors:
            raise AssertionError(f"tensor {name} written twice")
        self.tensors[name], self.shapes[name] = spec, shape
        return name

    @staticmethod
    def codes_spec(q: DuQ, channels: int) -> TensorSpec:
        k = num_steps(q.bits, q.mode)
        lo, hi = code_range(q.bits, q.mode)
        off = HSWISH_OFFSET if q.mode == "hswish" else 0.0
        return TensorSpec("codes", float(q.c.detach()) / k, off, lo, hi, channels, q.bits, q.mode)

    @staticmethod
    def in_step(q: DuQ) -> float:
        """t = a / K: the step with which the quantizer rounds its input."""
        return float(q.a.detach()) / num_steps(q.bits, q.mode)

    def hswish_frac_bits(self, step: float, offset: float, lo: int, hi: int) -> int:
        """The largest F (<= max_frac_bits) whose table of pre-activations u_min..u_sat has at most 2**16 entries."""
        for f in range(self.opt.max_frac_bits, 0, -1):
            try:
                table = HSwishTable(step / 2**f, f, offset, lo, hi)
            except ValueError:  # far too many entries at this F
                continue
            if table.u_sat - table.u_min < 2**16:
                return f
        return 0

    def quant_target(self, qact: QAct, channels: int, where: str) -> _Target:
        q = _duq(qact.quantizer, where)
        spec, t = self.codes_spec(q, channels), self.in_step(q)
        act = qact.act
        if act is None:  # a quantizer alone: round((y + offset) / t)
            return _Target(spec, t, extra=spec.offset)
        if isinstance(act, (nn.ReLU, nn.ReLU6)) and q.mode == "unsigned":
            return _Target(spec, t)  # the unsigned grid clips at 0 and at a: it replaces ReLU/ReLU6
        if isinstance(act, nn.Hardswish) and q.mode == "hswish":
            f = self.hswish_frac_bits(t, spec.offset, spec.lo, spec.hi)
            return _Target(spec, t / 2**f, act="hswish", frac_bits=f)
        raise UnsupportedModelError(f"{where}: activation {type(act).__name__} with a {q.mode!r} quantizer is not "
                                    "supported (ReLU/ReLU6 + unsigned, Hardswish + hswish, or no activation)")

    def stream_target(self, next_q: QAct, channels: int, where: str) -> _Target:
        q = _duq(next_q.quantizer, where)
        if next_q.act is not None or q.mode != "signed":
            raise UnsupportedModelError(f"{where}: a block output must be read by a signed quantization point")
        step = self.in_step(q) / 2**self.opt.stream_bits
        return _Target(TensorSpec("stream", step, 0.0, -STREAM_LIMIT, STREAM_LIMIT, channels), step)

    def fine_target(self, pool_q: QAct, act: str, channels: int, hw: int, where: str) -> _Target:
        q = _duq(pool_q.quantizer, where)
        step = self.in_step(q) / 2**self.opt.pool_bits
        # Fine codes are >= 0. A value of hw * (K + 1) pooled steps saturates the pooled code by itself, so capping
        # there changes nothing after pooling, and keeps the pooled sum far inside int32.
        cap = hw * (num_steps(q.bits, q.mode) + 1) * 2**self.opt.pool_bits
        if act == "relu6" and q.mode == "unsigned":
            return _Target(TensorSpec("fine", step, 0.0, 0, min(round(6.0 / step), cap), channels), step)
        if act == "hswish" and q.mode == "hswish":
            return _Target(TensorSpec("fine", step, HSWISH_OFFSET, 0, cap, channels), step, act="hswish",
                           frac_bits=0)
        raise UnsupportedModelError(f"{where}: a {act} before pooling needs a "
                                    f"{'unsigned' if act == 'relu6' else 'hswish'} pooled quantizer, got {q.mode!r}")

    def gate_target(self, channels: int) -> _Target:
        g = self.opt.gate_levels
        return _Target(TensorSpec("gate", 1.0 / g, 0.0, 0, g, channels), 6.0 / g, extra=3.0)

    # ---------------------------------------------------------------- operations
    def conv(self, name: str, layer: nn.Module, bn: nn.BatchNorm2d | None, x: str, target: _Target) -> str:
        where = f"layer {name!r}"
        linear = isinstance(layer, QLinear)
        if not isinstance(layer, (QConv2d, QLinear)):
            raise UnsupportedModelError(f"{where}: expected a quantized conv or linear layer, got "
                                        f"{type(layer).__name__}; call quantize_model(model, ...) first")
        wq = _duq(layer.weight_quant, f"{where} weight quantizer")
        spec_in = self.tensors[x]
        shape_in = self.shapes[x]
        weight = layer.weight.detach()
        if linear or (isinstance(layer, QConv2d) and len(shape_in) == 1):
            weight = weight.reshape(weight.shape[0], -1, 1, 1)
            if isinstance(layer, QConv2d) and layer.kernel_size != (1, 1):
                raise UnsupportedModelError(f"{where}: a conv on a pooled vector must be 1x1")
            linear, stride, padding, groups = True, 1, 0, 1
        else:
            stride, padding, groups = self._geometry(layer, spec_in, where)
        codes = duq_codes(weight, wq.a.detach(), wq.bits, "signed")
        w_step = float(wq.c.detach()) / num_steps(wq.bits, "signed")
        g, h = bn_affine(bn, weight.shape[0])
        try:
            folded = fold_integer(codes, w_step, spec_in.scale, spec_in.offset, target.pre_step, g, h,
                                  layer.bias, target.extra)
        except ValueError as err:
            raise UnsupportedModelError(f"{where}: {err}") from err
        self.constant_channels += int(folded.constant.sum())
        op = Conv(name, x, name, folded.weight, wq.bits, folded.bias, folded.m0, folded.shift, target.pre_step,
                  target.act, target.frac_bits, stride, padding, groups, linear)
        if linear:
            shape = (weight.shape[0],)
        else:
            _, hh, ww = shape_in
            k = weight.shape[-1]
            shape = (weight.shape[0], (hh + 2 * padding - k) // stride + 1, (ww + 2 * padding - k) // stride + 1)
        self.ops.append(op)
        return self.new(name, target.spec, shape)

    @staticmethod
    def _geometry(conv: QConv2d, spec_in: TensorSpec, where: str) -> tuple[int, int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        if kh != kw or sh != sw or ph != pw or (dh, dw) != (1, 1) or isinstance(conv.padding, str):
            raise UnsupportedModelError(f"{where}: only square kernels, strides and paddings without dilation")
        if ph and abs(conv.pad_value + spec_in.offset) > 1e-12:
            raise UnsupportedModelError(
                f"{where}: pads with {conv.pad_value} but its input's code 0 stands for {-spec_in.offset}; the integer "
                "engine pads with code 0, so the QAT model must pad with the real value of code 0 (negative padding, "
                "which quantize_model sets up when it can trace the model)")
        return sh, ph, conv.groups

    def rescale(self, name: str, x: str, qact: QAct) -> str:
        where = f"quantization point {name!r}"
        q = _duq(qact.quantizer, where)
        spec_in = self.tensors[x]
        spec = self.codes_spec(q, spec_in.channels)
        if abs(spec_in.offset - spec.offset) > 1e-12:
            raise UnsupportedModelError(f"{where}: input and output offsets differ")
        m0, shift = quantize_multiplier(spec_in.scale / self.in_step(q))
        self.ops.append(Rescale(name, x, name, m0, shift))
        return self.new(name, spec, self.shapes[x])

    def pool(self, name: str, x: str, qact: QAct) -> str:
        where = f"pooled quantizer {name!r}"
        q = _duq(qact.quantizer, where)
        if qact.act is not None:
            raise UnsupportedModelError(f"{where}: expected a quantizer without activation")
        spec_in, (c, hh, ww) = self.tensors[x], self.shapes[x]
        spec = self.codes_spec(q, c)
        if abs(spec_in.offset - spec.offset) > 1e-12:
            raise UnsupportedModelError(f"{where}: pooling a {spec_in.offset}-offset grid into a {spec.offset}-offset "
                                        "grid is not supported")
        m0, shift = quantize_multiplier(spec_in.scale / (hh * ww * self.in_step(q)))
        self.ops.append(Pool(name, x, name, m0, shift))
        return self.new(name, spec, (c,))

    def se_mul(self, name: str, x: str, gate: str, qact: QAct) -> str:
        where = f"SE output quantizer {name!r}"
        q = _duq(qact.quantizer, where)
        spec_in, spec_g = self.tensors[x], self.tensors[gate]
        spec = self.codes_spec(q, spec_in.channels)
        if abs(spec_in.offset - spec.offset) > 1e-12:
            raise UnsupportedModelError(f"{where}: SE input and output grids must have the same offset")
        zb = self.opt.zero_bits
        zero = round(spec_in.offset / spec_in.scale * 2**zb)
        m0, shift = quantize_multiplier(spec_in.scale / (spec_g.hi * self.in_step(q) * 2**zb))
        self.ops.append(SEMul(name, x, gate, name, zero, zb, m0, shift))
        return self.new(name, spec, self.shapes[x])

    # ---------------------------------------------------------------- building blocks
    def conv_bn_act(self, name: str, seq: nn.Sequential, x: str) -> str:
        if len(seq) != 3 or not isinstance(seq[2], QAct):
            raise UnsupportedModelError(f"{name}: expected conv, BatchNorm, quantized activation; got "
                                        f"{[type(m).__name__ for m in seq]} (was every activation quantized by "
                                        "quantize_model?)")
        spec_channels = seq[0].out_channels
        return self.conv(name, seq[0], seq[1], x, self.quant_target(seq[2], spec_channels, name))

    def block_output(self, name: str, conv: nn.Module, bn: nn.BatchNorm2d, branch_in: str, skip: str | None,
                     next_q: QAct) -> str:
        """The projection conv of a block, writing the next stream (plus the skip, when the block has one)."""
        target = self.stream_target(next_q, conv.out_channels, f"{name} (the quantizer after it)")
        if skip is None:
            return self.conv(name, conv, bn, branch_in, target)
        target.extra = -self.tensors[skip].offset  # the skip's offset joins the branch's bias
        branch = self.conv(name, conv, bn, branch_in, target)
        m0, shift = quantize_multiplier(self.tensors[skip].scale / target.pre_step)
        out = name + ".add"
        self.ops.append(Add(out, skip, branch, out, m0, shift))
        return self.new(out, target.spec, self.shapes[branch])


def _classifier_linear(seq: Sequence[nn.Module]) -> list[nn.Module]:
    return [m for m in seq if not isinstance(m, nn.Dropout)]


# ---------------------------------------------------------------- the walkers, one per architecture
def _walk_v1(cv: _Converter, model: MobileNetV1) -> str:
    feats = list(model.features)
    x = cv.conv_bn_act("features.0", feats[0], "image")
    for i, blk in enumerate(feats[1:], start=1):
        x = cv.conv_bn_act(f"features.{i}.dw", blk.dw, x)
        if len(blk.pw) == 3:
            x = cv.conv_bn_act(f"features.{i}.pw", blk.pw, x)
        else:  # the last block: relu6 (float in PROFIT) before pooling
            hh, ww = cv.shapes[x][1:]
            target = cv.fine_target(model.quant_pool, "relu6", blk.pw[0].out_channels, hh * ww, "quant_pool")
            x = cv.conv(f"features.{i}.pw", blk.pw[0], blk.pw[1], x, target)
    x = cv.pool("quant_pool", x, model.quant_pool)
    return cv.conv("classifier", model.classifier, None, x, _logits_target(cv, x, model.classifier))


def _logits_target(cv: _Converter, x: str, linear: nn.Module) -> _Target:
    wq = _duq(linear.weight_quant, "classifier weight quantizer")
    step = cv.tensors[x].scale * float(wq.c.detach()) / num_steps(wq.bits, "signed")
    return _Target(TensorSpec("logits", step, 0.0, -INT32_MAX, INT32_MAX, linear.out_features), step)


def _walk_v2(cv: _Converter, model: MobileNetV2) -> str:
    feats = list(model.features)
    blocks = feats[1:-1]
    x = cv.conv_bn_act("features.0", feats[0], "image")
    for j, blk in enumerate(blocks, start=1):
        next_q = blocks[j].quant_in if j < len(blocks) else model.quant_head
        block_in = x
        if blk.quant_in is not None:
            x = cv.rescale(f"features.{j}.quant_in", x, blk.quant_in)
        *acts, proj, bn = list(blk.conv)
        for i, seq in enumerate(acts):
            x = cv.conv_bn_act(f"features.{j}.conv.{i}", seq, x)
        x = cv.block_output(f"features.{j}.conv.{len(acts)}", proj, bn, x,
                            block_in if blk.use_res_connect else None, next_q)
    x = cv.rescale("quant_head", x, model.quant_head)
    last = feats[-1]
    hh, ww = cv.shapes[x][1:]
    target = cv.fine_target(model.quant_pool, "relu6", last[0].out_channels, hh * ww, "quant_pool")
    x = cv.conv(f"features.{len(feats) - 1}", last[0], last[1], x, target)
    x = cv.pool("quant_pool", x, model.quant_pool)
    (linear,) = _classifier_linear(model.classifier)
    return cv.conv("classifier", linear, None, x, _logits_target(cv, x, linear))


def _walk_v3(cv: _Converter, model: MobileNetV3) -> str:
    from ..models.mobilenet_v3 import SqueezeExcitation

    feats = list(model.features)
    blocks = feats[1:-1]
    x = cv.conv_bn_act("features.0", feats[0], "image")
    for j, blk in enumerate(blocks, start=1):
        next_q = blocks[j].quant_in if j < len(blocks) else model.quant_head
        block_in = x
        if blk.quant_in is not None:
            x = cv.rescale(f"features.{j}.quant_in", x, blk.quant_in)
        *body, proj = list(blk.block)
        for i, layer in enumerate(body):
            name = f"features.{j}.block.{i}"
            if isinstance(layer, SqueezeExcitation):
                x = _se(cv, name, layer, x)
            else:
                x = cv.conv_bn_act(name, layer, x)
        x = cv.block_output(f"features.{j}.block.{len(body)}", proj[0], proj[1], x,
                            block_in if blk.use_res_connect else None, next_q)
    x = cv.rescale("quant_head", x, model.quant_head)
    last = feats[-1]
    hh, ww = cv.shapes[x][1:]
    target = cv.fine_target(model.quant_pool, "hswish", last[0].out_channels, hh * ww, "quant_pool")
    x = cv.conv(f"features.{len(feats) - 1}", last[0], last[1], x, target)
    x = cv.pool("quant_pool", x, model.quant_pool)
    fc1, act, fc2 = _classifier_linear(model.classifier)
    x = cv.conv("classifier.0", fc1, None, x, cv.quant_target(act, fc1.out_features, "classifier.1"))
    return cv.conv("classifier.3", fc2, None, x, _logits_target(cv, x, fc2))


def _se(cv: _Converter, name: str, se: nn.Module, x: str) -> str:
    p = cv.pool(f"{name}.quant_pool", x, se.quant_pool)
    r = cv.conv(f"{name}.fc1", se.fc1, None, p, cv.quant_target(se.activation, se.fc1.out_channels, f"{name}.act"))
    g = cv.conv(f"{name}.fc2", se.fc2, None, r, cv.gate_target(se.fc2.out_channels))
    return cv.se_mul(f"{name}.quant_out", x, g, se.quant_out)


def infer_arch(model: nn.Module) -> dict[str, Any]:
    """A best-effort ``{"builder", "kwargs"}`` for a model (kwargs: what the module tree shows).

    Pass the exact builder arguments to :func:`to_program` when you have them (the CLI does).
    """
    if isinstance(model, MobileNetV1):
        return {"builder": "mobilenet_v1", "kwargs": {"num_classes": model.classifier.out_features}}
    if isinstance(model, MobileNetV2):
        return {"builder": "mobilenet_v2", "kwargs": {"num_classes": _classifier_linear(model.classifier)[-1]
                                                      .out_features}}
    if isinstance(model, MobileNetV3):
        builder = "mobilenet_v3_large" if len(model.features) == 17 else "mobilenet_v3_small"
        return {"builder": builder, "kwargs": {"num_classes": model.classifier[-1].out_features}}
    raise UnsupportedModelError(f"cannot pack a {type(model).__name__}: supported are MobileNetV1, V2 and V3")


def _is_cifar_model(model: nn.Module) -> bool:
    """Whether the network was built for 32x32 inputs (``cifar_stem``): its total stride is 16 or less.

    The stock networks downsample 32-fold; the CIFAR stems 8-fold (stem stride 1) or 16-fold (stem stride 2).
    Every MobileNet block has one strided convolution, so the total stride is the product of all of them.
    """
    total = 1
    for m in model.features.modules():
        if isinstance(m, nn.Conv2d):
            total *= m.stride[0]
    return total <= 16


@torch.no_grad()
def to_program(
    model: nn.Module,
    *,
    input_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    arch: dict[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    options: ConvertOptions = DEFAULTS,
) -> Program:
    """Convert a quantized MobileNet into an integer :class:`~profit_edu.packed.program.Program`.

    Args:
        model: ``quantize_model(mobilenet_v1/v2/v3_large/v3_small(...))`` after training or calibration. Its
            BatchNorm running statistics are used (eval-mode semantics); the model is not modified.
        input_size: the (H, W) the program is compiled for; default 32 for CIFAR stems (stride-1 stem), else 224.
        mean, std: per-channel normalisation of [0, 1] pixels; default CIFAR-10's for stride-1 stems, else
            ImageNet's.
        arch: ``{"builder": ..., "kwargs": {...}}`` to record; default :func:`infer_arch`.
        classes: class names to record, or None.
        options: the integer scales (:class:`ConvertOptions`).

    Returns:
        A validated program.

    Raises:
        UnsupportedModelError: the model is not a supported quantized MobileNet (the message says what to change).
        UnsupportedBitsError, AccumulatorOverflowError: from :func:`~profit_edu.packed.program.check_program`.
        ValueError: ``input_size`` is not an int (or two) in 1..4096, or ``mean``/``std`` are not 3 finite numbers
            (``std`` > 0), or ``classes`` does not hold one name per output.
    """
    walkers = {MobileNetV1: _walk_v1, MobileNetV2: _walk_v2, MobileNetV3: _walk_v3}
    walker = next((w for cls, w in walkers.items() if isinstance(model, cls)), None)
    if walker is None:
        raise UnsupportedModelError(f"cannot pack a {type(model).__name__}: supported are profit_edu's MobileNetV1, "
                                    "V2 and V3 after quantize_model")
    if not any(isinstance(m, (QConv2d, QLinear)) for m in model.modules()):
        raise UnsupportedModelError(f"{type(model).__name__} is not quantized: call quantize_model(model, weight_bits, "
                                    "act_bits), train or calibrate it, then pack it")
    cifar = _is_cifar_model(model)
    size = check_input_size((32 if cifar else 224) if input_size is None else input_size)
    mean = check_channel_values("mean", mean if mean is not None else (CIFAR10_MEAN if cifar else IMAGENET_MEAN))
    std = check_channel_values("std", std if std is not None else (CIFAR10_STD if cifar else IMAGENET_STD),
                               positive=True)
    cv = _Converter(options)
    cv.new("image", TensorSpec("image", options.input_scale, 0.0, -128, 127, 3, 8, "signed"), (3, *size))
    output = walker(cv, model)
    if cv.constant_channels:
        log.info("%d channel(s) have a vanishing BatchNorm scale and are stored as constants", cv.constant_channels)
    program = Program(cv.tensors, cv.ops, output, size, mean, std, arch or infer_arch(model),
                      list(classes) if classes is not None else None)
    shapes = check_program(program)
    assert shapes == cv.shapes, "converter and checker disagree on shapes"
    return program
