"""The deployable model: the integer program read with real numbers (fake quantization, BatchNorm folded).

The QAT model and the integer engine differ in more than arithmetic: BatchNorm is folded, residual streams, the
pooled input and SE's gate are quantized, the input image is rounded (see :mod:`.convert`). The
:class:`DeployableModel` is the QAT network *with those deployment choices made*, still written as a float
network over real values, like the QAT model:

* tensors hold real values ``scale * code - offset`` (float64);
* convolutions use real, BatchNorm-folded weights ``A_c / s_in * q`` and biases, and pad with the real value of
  the input's code 0 (-3/8 after h-swish: negative padding), as the QAT model does;
* each layer's output is re-quantized with the engine's rule. The real pre-activation ``y`` equals
  ``A_c * (acc + bias)`` for an integer ``acc + bias`` (one accumulator unit is worth ``A_c``); the model
  recovers that integer as ``round(y / A_c)``, checks that ``y / A_c`` was within 1e-4 of it (float64 rounding
  is about 1e-9 here), and applies the fixed-point requantization of :mod:`.fixedpoint`.

So the deployable model and the engine agree bit for bit by design; the test that they do checks the engine's
*integer* side: packed weights, zero padding with the offset folded into the bias, int32 sums, table lookups.
The deployable model is what you compare with the QAT model to see what deployment costs in accuracy
(:func:`top1_agreement`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engine import _check_image_shape, apply_requant, conv_table, quantize_image
from .fixedpoint import multiplier_value
from .program import Add, Conv, Pool, Program, Rescale, SEMul, TensorSpec, check_program

__all__ = ["SNAP_TOLERANCE", "DeployableModel", "top1_agreement"]

SNAP_TOLERANCE = 1e-4


def _snap(v: Tensor, what: str) -> Tensor:
    """The integer that a real-valued computation landed on (within float64 rounding), as int64."""
    r = torch.round(v)
    if v.numel():
        err = float((v - r).abs().max())
        if err > SNAP_TOLERANCE:
            raise RuntimeError(f"{what}: value is {err:g} away from the integer grid; the program is inconsistent")
    return r.to(torch.int64)


class DeployableModel(nn.Module):
    """A float64 fake-quantized network equal, code for code, to the integer engine (see the module docstring).

    ``model(x)`` takes normalised float images and returns real logits (float64);
    :meth:`codes` returns every tensor's integer codes.

    Args:
        program: an integer program (from :func:`~profit_edu.packed.convert.to_program` or a packed file).
    """

    def __init__(self, program: Program) -> None:
        super().__init__()
        self.program = program
        self.shapes = check_program(program)
        self._folded: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for op in program.ops:
            if isinstance(op, Conv):
                self._folded[op.name] = self._real_weights(op, program.tensors[op.input])

    @staticmethod
    def _real_weights(op: Conv, spec_in: TensorSpec) -> tuple[Tensor, Tensor, Tensor]:
        """(W, b, A): real folded weights and bias with conv(x padded with -o_in, W) + b = A * (acc + bias)."""
        a_unit = multiplier_value(op.m0, op.shift) * op.pre_step  # (O,) real value of one accumulator unit
        q = op.weight.double()
        w = (a_unit / spec_in.scale).view(-1, 1, 1, 1) * q
        b = a_unit * op.bias.double() + spec_in.offset * (a_unit / spec_in.scale) * q.flatten(1).sum(1)
        return w, b, a_unit

    def _real(self, codes: Tensor, spec: TensorSpec) -> Tensor:
        return spec.scale * codes.double() - spec.offset

    def _codes(self, real: Tensor, spec: TensorSpec, what: str) -> Tensor:
        return _snap((real + spec.offset) / spec.scale, what)

    def _conv(self, op: Conv, x: Tensor) -> Tensor:
        spec_in, spec_out = self.program.tensors[op.input], self.program.tensors[op.output]
        w, b, a_unit = self._folded[op.name]
        if op.linear:
            y = F.linear(x, w.flatten(1), b)
            a = a_unit
        else:
            p = op.padding
            x = F.pad(x, (p, p, p, p), value=-spec_in.offset)  # pad with the real value of code 0
            y = F.conv2d(x, w, b, op.stride, 0, 1, op.groups)
            a = a_unit.view(-1, 1, 1)
        n = _snap(y / a, f"conv {op.name!r}")
        m0 = op.m0 if op.linear else op.m0.view(-1, 1, 1)
        shift = op.shift if op.linear else op.shift.view(-1, 1, 1)
        return self._real(apply_requant(n, m0, shift, spec_out, conv_table(op, spec_out)), spec_out)

    def _run(self, x: Tensor) -> dict[str, Tensor]:
        prog = self.program
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("DeployableModel takes normalised float images")
        _check_image_shape(x, prog)
        env = {"image": self._real(quantize_image(x, prog), prog.input)}
        t = prog.tensors
        for op in prog.ops:
            spec = t[op.output]
            if isinstance(op, Conv):
                env[op.output] = self._conv(op, env[op.input])
            elif isinstance(op, Rescale):
                k = self._codes(env[op.input], t[op.input], op.name)
                env[op.output] = self._real(apply_requant(k, op.m0, op.shift, spec), spec)
            elif isinstance(op, Add):
                skip = apply_requant(self._codes(env[op.skip], t[op.skip], op.name), op.m0, op.shift,
                                     TensorSpec(spec.kind, spec.scale, 0.0, -(2**31 - 1), 2**31 - 1, spec.channels))
                k = (skip + self._codes(env[op.branch], t[op.branch], op.name)).clamp_(spec.lo, spec.hi)
                env[op.output] = self._real(k, spec)
            elif isinstance(op, Pool):
                total = self._codes(env[op.input], t[op.input], op.name).sum(dim=(2, 3))
                env[op.output] = self._real(apply_requant(total, op.m0, op.shift, spec), spec)
            elif isinstance(op, SEMul):
                k = self._codes(env[op.input], t[op.input], op.name)
                g = self._codes(env[op.gate], t[op.gate], op.name).view(k.shape[0], k.shape[1], 1, 1)
                num = k * g * 2**op.zero_bits + op.zero * (t[op.gate].hi - g)
                env[op.output] = self._real(apply_requant(num, op.m0, op.shift, spec), spec)
        return env

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Real logits (float64) for normalised float images (N, 3, H, W)."""
        return self._run(x)[self.program.output]

    @torch.no_grad()
    def codes(self, x: Tensor) -> dict[str, Tensor]:
        """Every tensor's int64 codes for normalised float images (the image included)."""
        env = self._run(x)
        return {name: self._codes(v, self.program.tensors[name], name) for name, v in env.items()}


@torch.no_grad()
def top1_agreement(reference: nn.Module, other: nn.Module | object, images: Tensor, *, batch_size: int = 256,
                   labels: Tensor | None = None) -> dict[str, float]:
    """How often two models pick the same class (and, with labels, each one's top-1 accuracy), in percent.

    Args:
        reference: e.g. the QAT model (run in eval mode; its mode is restored).
        other: e.g. a :class:`DeployableModel` or an engine's ``predict``; called on normalised images.
        images: normalised float images (N, 3, H, W).
        labels: optional int64 labels (N,).
    """
    was_training = getattr(reference, "training", False)
    if isinstance(reference, nn.Module):
        reference.eval()
    agree, correct_ref, correct_other = 0, 0, 0
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size]
            a = reference(x).argmax(1)
            b = other(x).argmax(1)
            agree += int((a == b).sum())
            if labels is not None:
                y = labels[start:start + batch_size]
                correct_ref += int((a == y).sum())
                correct_other += int((b == y).sum())
    finally:
        if isinstance(reference, nn.Module):
            reference.train(was_training)
    n = images.shape[0]
    out = {"agreement": 100.0 * agree / n, "images": float(n)}
    if labels is not None:
        out |= {"top1_reference": 100.0 * correct_ref / n, "top1_other": 100.0 * correct_other / n}
    return out
