"""The integer engine: runs a :class:`~profit_edu.packed.program.Program` on integer codes, in pure PyTorch.

Every value the engine computes is an integer, and every operation is exact integer arithmetic:
int32 accumulators, integer biases, fixed-point multipliers (:mod:`.fixedpoint`), clamps, table lookups, sums.
Two ways to carry out that arithmetic give the same bits:

``arithmetic="int64"`` (the reference)
    activations are int64 tensors; requantization is :func:`~profit_edu.packed.fixedpoint.requantize` in int64.
    PyTorch has no integer convolution on the CPU, so convolutions run in float64 on the integer codes, which
    is exact: every partial sum is an integer below 2**31 (checked per layer), far below float64's 2**53.
``arithmetic="fast"`` (the default)
    activations are integer-valued float32 tensors (exact below 2**24) and convolutions run in float32 when the
    layer's worst-case |accumulator| is below 2**24, else float64 (the bias is added inside the float32 conv when
    that stays below 2**24 too, else in float64 afterwards); maps are kept channels-last, oneDNN's native layout.
    Requantization is a cast to float64, one multiply and ``torch.round``, which equals the int64 reference
    whenever ``2**(53 - shift) >= bound + 2`` (:func:`~profit_edu.packed.fixedpoint.float64_is_exact`, checked
    per layer; layers that fail it use int64).

So float here is only a container for integers, used because PyTorch's fast kernels are float kernels; the
tests check ``fast == int64`` bit for bit. (This relies on the CPU convolution summing products directly, as
oneDNN does for these layers; a Winograd or TF32 kernel, e.g. on a GPU, would not be exact. The engine is CPU-only.)

Where the time goes (MobileNet-v2, 224x224, batch 1, one thread; ``benchmarks/packed.py``): about 55% in the
convolutions (the same oneDNN and GEMM kernels as FP32 eager PyTorch) and about 40% in the elementwise
requantization: casting each conv output to float64 and back (about 24%), the multiply, round and clamp. These
passes are memory-bound and cost more than FP32 eager's two float32 passes per layer (BatchNorm, ReLU6), so the
engine runs at about 1.05-1.2x the time of FP32 eager. (Avoid mixing float32 and float64 in one broadcast
multiply: PyTorch then takes a path about 20x slower than a cast followed by a float64 multiply.)

The input is the image as signed 8-bit codes (:func:`quantize_image`): the normalised image
``(pixels / 255 - mean) / std`` rounded to multiples of the program's input scale (2**-5 by default).

>>> import profit_edu as pe
>>> from profit_edu.packed import to_program
>>> net = pe.quantize_model(pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True), 4, 4)
>>> _ = pe.calibrate(net.eval(), torch.randn(4, 3, 32, 32))
>>> engine = IntegerEngine(to_program(net))
>>> engine(quantize_image(torch.randn(2, 3, 32, 32), engine.program)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .fixedpoint import FLOAT32_EXACT, HSwishTable, float64_is_exact, multiplier_value, requantize
from .program import Add, Conv, Pool, Program, Rescale, SEMul, TensorSpec, check_program

__all__ = ["ARITHMETIC", "IntegerEngine", "apply_requant", "conv_table", "quantize_image"]

log = logging.getLogger(__name__)

ARITHMETIC = ("fast", "int64")


def quantize_image(x: Tensor, program: Program) -> Tensor:
    """Normalised images (float) -> the program's int64 input codes: ``clamp(round(x / scale), -128, 127)``.

    Shapes: x: (N, 3, H, W) with (H, W) = ``program.input_size`` -> the same, int64.

    Raises:
        TypeError: ``x`` is not a float tensor.
        ValueError: wrong shape.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"expected normalised float images, got {x.dtype if isinstance(x, Tensor) else type(x)}")
    _check_image_shape(x, program)
    spec = program.input
    return torch.round(x.double() / spec.scale).clamp_(spec.lo, spec.hi).to(torch.int64)


def _check_image_shape(x: Tensor, program: Program) -> None:
    h, w = program.input_size
    if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (h, w):
        raise ValueError(f"expected images of shape (N, 3, {h}, {w}) (the program was compiled for {h}x{w}), "
                         f"got {tuple(x.shape)}")


def conv_table(op: Conv, out: TensorSpec) -> HSwishTable | None:
    """The h-swish table of a conv with ``act == "hswish"`` (None otherwise)."""
    if op.act != "hswish":
        return None
    return HSwishTable(op.pre_step, op.frac_bits, out.offset, out.lo, out.hi)


def apply_requant(n: Tensor, m0: Tensor | int, shift: Tensor | int, spec: TensorSpec,
                  table: HSwishTable | None = None) -> Tensor:
    """The int64 reference of every op's last step: ``clamp(requant(n), lo, hi)``, or the h-swish table."""
    v = requantize(n, m0, shift)
    if table is not None:
        return table(v)
    return v.clamp_(spec.lo, spec.hi)


def _bcast(t: Tensor, linear: bool) -> Tensor:
    """(O,) -> broadcastable over (N, O) or (N, O, H, W)."""
    return t if linear else t.view(-1, 1, 1)


@dataclass
class _Prepared:
    """A conv's tensors in the dtypes the engine computes with, and its exactness decisions."""

    weight: Tensor
    bias: Tensor | None
    late_bias: Tensor | None
    mult: Tensor
    m0: Tensor
    shift: Tensor
    table: HSwishTable | None
    fast_requant: bool


class IntegerEngine:
    """Run an integer program. ``engine(codes)`` returns the int64 logit codes; see the module docstring.

    Args:
        program: the program (validated here).
        arithmetic: "fast" (default) or "int64" (the reference); both give the same integers.

    Attributes:
        program: the program.
        shapes: every tensor's per-image shape.
        logit_scale: the real value of one logit code.
    """

    def __init__(self, program: Program, *, arithmetic: str = "fast") -> None:
        if arithmetic not in ARITHMETIC:
            raise ValueError(f"arithmetic must be one of {ARITHMETIC}, got {arithmetic!r}")
        self.program = program
        self.shapes = check_program(program)
        self.arithmetic = arithmetic
        self.logit_scale = program.tensors[program.output].scale
        self._dtype = {name: self._container(spec) for name, spec in program.tensors.items()}
        self._prepared = {id(op): self._prepare(op) for op in program.ops if isinstance(op, Conv)}
        self._elementwise_fast = {id(op): self._elementwise_fast_ok(op) for op in program.ops
                                  if not isinstance(op, Conv)}

    # ---------------------------------------------------------------- preparation
    def _container(self, spec: TensorSpec) -> torch.dtype:
        if self.arithmetic == "int64":
            return torch.int64
        return torch.float32 if max(abs(spec.lo), abs(spec.hi)) < FLOAT32_EXACT else torch.float64

    def _fast_ok(self, shift: Tensor | int, spec: TensorSpec, table: HSwishTable | None = None) -> bool:
        bound = table.bound if table is not None else max(abs(spec.lo), abs(spec.hi))
        return self.arithmetic == "fast" and float64_is_exact(shift, bound)

    def _elementwise_fast_ok(self, op: Rescale | Add | Pool | SEMul) -> bool:
        if isinstance(op, Add):  # the skip is requantized without a clamp: bound it by its input range
            skip = self.program.tensors[op.skip]
            bound = int(max(abs(skip.lo), abs(skip.hi)) * multiplier_value(op.m0, op.shift)) + 1
            return self.arithmetic == "fast" and float64_is_exact(op.shift, bound)
        return self._fast_ok(op.shift, self.program.tensors[op.output])

    def _prepare(self, op: Conv) -> _Prepared:
        spec_in, spec_out = self.program.tensors[op.input], self.program.tensors[op.output]
        table = conv_table(op, spec_out)
        x_max = max(abs(spec_in.lo), abs(spec_in.hi))
        acc_worst = int((op.weight.abs().flatten(1).sum(1) * x_max).max())
        exact32 = self.arithmetic == "fast" and acc_worst < FLOAT32_EXACT and self._dtype[op.input] == torch.float32
        dtype = torch.float32 if exact32 else torch.float64
        weight = op.weight.to(dtype)
        if op.linear:
            weight = weight.flatten(1)
        elif self.arithmetic == "fast":
            weight = weight.contiguous(memory_format=torch.channels_last)  # oneDNN's native layout: no reorders
        mult = _bcast(multiplier_value(op.m0, op.shift), op.linear)
        bias, late_bias = op.bias.to(dtype), None
        if exact32 and acc_worst + int(op.bias.abs().max()) >= FLOAT32_EXACT:  # add it in float64, after the conv
            bias, late_bias = None, _bcast(op.bias.to(torch.float64), op.linear)
        return _Prepared(weight, bias, late_bias, mult, _bcast(op.m0, op.linear), _bcast(op.shift, op.linear),
                         table, self._fast_ok(op.shift, spec_out, table))

    # ---------------------------------------------------------------- the operations
    def _finish(self, n: Tensor, fast: bool, mult: Tensor | float, m0: Tensor | int, shift: Tensor | int,
                spec: TensorSpec, out_dtype: torch.dtype, table: HSwishTable | None = None) -> Tensor:
        """clamp(requant(n)) (or the h-swish table) on integer-valued n, in the container dtype of the output."""
        if fast:
            # float64 (see the module docstring for why this is exact); cast first: PyTorch's mixed-dtype broadcast
            # multiply (float32 x float64) takes a slow path, about 20x slower than a cast plus a float64 multiply
            v = n.to(torch.float64, copy=True).mul_(mult).round_()
            if table is None:  # clamping after the cast is the same (monotone) and half the bytes in float32
                return v.to(out_dtype).clamp_(spec.lo, spec.hi)
            return table(v.to(torch.int64)).to(out_dtype)
        return apply_requant(n.to(torch.int64), m0, shift, spec, table).to(out_dtype)

    def _conv(self, op: Conv, x: Tensor) -> Tensor:
        p = self._prepared[id(op)]
        x = x.to(p.weight.dtype)
        if op.linear:
            y = F.linear(x, p.weight, p.bias)
        else:
            y = F.conv2d(x, p.weight, p.bias, op.stride, op.padding, 1, op.groups)  # zero padding = code 0
        if p.late_bias is not None:
            y = y.to(torch.float64).add_(p.late_bias)  # float64: exact below 2**53
        return self._finish(y, p.fast_requant, p.mult, p.m0, p.shift, self.program.tensors[op.output],
                            self._dtype[op.output], p.table)

    def _elementwise(self, op: Rescale | Add | Pool | SEMul, env: dict[str, Tensor]) -> Tensor:
        spec = self.program.tensors[op.output]
        fast = self._elementwise_fast[id(op)]
        mult = multiplier_value(op.m0, op.shift)
        out_dtype = self._dtype[op.output]
        if isinstance(op, Rescale):
            return self._finish(env[op.input], fast, mult, op.m0, op.shift, spec, out_dtype)
        if isinstance(op, Add):
            skip = self._finish(env[op.skip], fast, mult, op.m0, op.shift, _unclamped(spec), torch.float64
                                if fast else torch.int64)
            out = skip + env[op.branch].to(skip.dtype)
            return out.clamp_(spec.lo, spec.hi).to(out_dtype)
        if isinstance(op, Pool):
            x = env[op.input]
            total = x.to(torch.float64 if fast else torch.int64).sum(dim=(2, 3))  # exact: |sum| < 2**31 (checked)
            return self._finish(total, fast, mult, op.m0, op.shift, spec, out_dtype)
        # SEMul: x * g re-quantized, with the input's zero point in fixed point (|numerator| < 2**31, checked)
        big_g = self.program.tensors[op.gate].hi
        wide = torch.float64 if fast else torch.int64
        x = env[op.input].to(wide)
        g = env[op.gate].to(wide).reshape(x.shape[0], x.shape[1], 1, 1)
        num = x * g * 2**op.zero_bits + op.zero * (big_g - g)
        return self._finish(num, fast, mult, op.m0, op.shift, spec, out_dtype)

    # ---------------------------------------------------------------- running
    def run(self, image: Tensor, *, keep_all: bool = False) -> dict[str, Tensor]:
        """Run the program on int8 image codes; return the output (or every tensor) as int64, by name.

        Raises:
            TypeError: ``image`` is not an integer tensor.
            ValueError: wrong shape, or codes outside -128..127.
        """
        if not isinstance(image, Tensor) or image.is_floating_point() or image.dtype == torch.bool:
            raise TypeError("the engine takes integer image codes; use quantize_image(x, program) on normalised "
                            f"float images first (got {image.dtype if isinstance(image, Tensor) else type(image)})")
        _check_image_shape(image, self.program)
        spec = self.program.input
        if image.numel() and (int(image.min()) < spec.lo or int(image.max()) > spec.hi):
            raise ValueError(f"image codes must lie in {spec.lo}..{spec.hi}")
        x = image.to(self._dtype["image"])
        if self.arithmetic == "fast":
            x = x.contiguous(memory_format=torch.channels_last)
        env: dict[str, Tensor] = {"image": x}
        with torch.no_grad():
            for op in self.program.ops:
                if isinstance(op, Conv):
                    env[op.output] = self._conv(op, env[op.input])
                else:
                    env[op.output] = self._elementwise(op, env)
        if keep_all:
            return {k: v.to(torch.int64).contiguous() for k, v in env.items()}
        return {self.program.output: env[self.program.output].to(torch.int64)}

    def __call__(self, image: Tensor) -> Tensor:
        """The int64 logit codes (N, classes) for int image codes (N, 3, H, W)."""
        return self.run(image)[self.program.output]

    def logits(self, image: Tensor) -> Tensor:
        """Real logits (float64): logit codes times :attr:`logit_scale`."""
        return self(image).double() * self.logit_scale

    def predict(self, x: Tensor) -> Tensor:
        """Real logits for normalised float images (quantized with :func:`quantize_image` first)."""
        return self.logits(quantize_image(x, self.program))


def _unclamped(spec: TensorSpec) -> TensorSpec:
    """A spec with int32 bounds: the skip of an Add is clamped only after the sum."""
    return TensorSpec(spec.kind, spec.scale, spec.offset, -(2**31 - 1), 2**31 - 1, spec.channels)
