"""ONNX export of the deployable model: QuantizeLinear / DequantizeLinear around integer codes (QDQ format).

The graph is built directly from the integer :class:`~profit_edu.packed.program.Program` with ``onnx.helper``
(no tracing, so no ``torch.onnx``/``onnxscript`` dependency), in the QDQ form that onnxruntime recognises and
fuses into integer kernels (QLinearConv):

* every 8-bit tensor of the program is a uint8 ONNX tensor of codes (signed codes, the image included, offset
  by a zero point of 128: onnxruntime fuses QDQ convs into QLinearConv on x86 only for uint8 activations);
* a conv is ``DequantizeLinear(codes, s_in)`` -> ``Conv`` with ``DequantizeLinear(int8 weight codes, per-channel
  A_c / s_in)`` and ``DequantizeLinear(int32 bias, A_c)`` -> ``QuantizeLinear(y, pre_step)`` -> ``Clip`` to the
  code range. ``A_c = m0_c * 2**-shift_c * pre_step`` is one accumulator unit, so onnxruntime's requantization
  multiplier ``s_in * s_w / pre_step`` is the engine's ``M_c`` (rounded to float32);
* h-swish: ``Round(y / delta)``, the fixed-point pre-activation, then ``Gather`` from the engine's code table
  (:meth:`~profit_edu.packed.fixedpoint.HSwishTable.code_table`), or, before pooling, from its h-swish table
  with the identity above 3;
* residual streams and pooled inputs (wider than 8 bits) are float64 tensors of integer codes: the exact
  accumulator (a float32 ``Conv`` over integer codes, exact below 2**24 like the engine's, else ``ConvInteger``)
  plus the bias, requantized in float64 (or, with ``exact=False``, a float conv of real values rounded onto the
  grid: not always the engine's codes);
* residual adds, average pooling, SE gating and the signed block-input quantizers requantize exact integer codes
  in float64 with the engine's ``m0 * 2**-shift``, so they match the engine exactly.

Where onnxruntime rounds differently from the engine: the fused convolutions with 8-bit outputs (QLinearConv)
requantize with float32 multipliers (24 bits) instead of 31-bit ``m0``, so an accumulator within about 1e-7
(relative) of a rounding tie can land one code apart; :func:`compare_with_engine` measures how often that reaches
the logits.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_write_bytes
from .engine import IntegerEngine, conv_table
from .fixedpoint import FLOAT32_EXACT, multiplier_value
from .program import Add, Conv, Pool, Program, Rescale, SEMul, TensorSpec, check_program

__all__ = ["OPSET", "compare_with_engine", "export_onnx", "onnx_session", "run_onnx"]

OPSET = 17  # HardSwish needs opset 14; per-axis DequantizeLinear 13


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as err:  # pragma: no cover - onnx is a dev dependency
        raise ImportError("ONNX export needs the 'onnx' package: pip install onnx") from err
    return onnx, TensorProto, helper, numpy_helper


def _int_type(lo: int, hi: int) -> tuple[str, int]:
    """The ONNX container of a code range: uint8 with zero point 0 (unsigned codes) or 128 (signed codes).

    Signed codes are stored offset by 128 because onnxruntime fuses QDQ convolutions into its integer kernel
    (QLinearConv) on x86 only for uint8 activations.
    """
    if 0 <= lo and hi <= 255:
        return "uint8", 0
    if -128 <= lo and hi <= 127:
        return "uint8", 128
    raise ValueError(f"code range {lo}..{hi} does not fit an 8-bit ONNX QuantizeLinear type")


class _Graph:
    """Accumulates ONNX nodes and initializers; maps program tensors to ONNX values.

    A program tensor lives in ONNX either as an integer tensor of codes (8-bit ranges: ``int_value``) or as a
    float64 tensor of codes (wide ranges: streams, pooled inputs; ``code_value``), since every consumer of codes
    requantizes them in float64.
    The logits are the float real values.
    """

    def __init__(self, program: Program, exact: bool = True) -> None:
        self.onnx, self.tp, self.helper, self.nph = _onnx()
        self.program = program
        self.exact = exact
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.int_value: dict[str, str] = {}
        self.code_value: dict[str, str] = {}
        self.logits = ""
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        n = self.name(hint)
        self.inits.append(self.nph.from_array(np.ascontiguousarray(value), n))
        return n

    def node(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        return out

    def scalar(self, hint: str, v: float, dtype: str = "float32") -> str:
        return self.const(hint, np.array(v, dtype=dtype))

    def zero_point(self, tensor: str) -> int:
        spec = self.program.tensors[tensor]
        return _int_type(spec.lo, spec.hi)[1]

    def codes(self, tensor: str) -> str:
        """A float64 ONNX tensor of the codes of a program tensor."""
        if tensor not in self.code_value:
            v = self.node("Cast", [self.int_value[tensor]], "codes", to=self.tp.DOUBLE)
            zp = self.zero_point(tensor)
            self.code_value[tensor] = self.node("Sub", [v, self.scalar("zp", zp, "float64")], "codes") if zp else v
        return self.code_value[tensor]

    def quant(self, y: str, scale: float, spec: TensorSpec, hint: str) -> str:
        """``clamp(round(y / scale), lo, hi)`` as a uint8 ONNX tensor (QuantizeLinear rounds half to even)."""
        dtype, zp = _int_type(spec.lo, spec.hi)
        zero = self.const("zp", np.array(zp, dtype=dtype))
        q = self.node("QuantizeLinear", [y, self.scalar("qscale", scale), zero], hint)
        if (spec.lo + zp, spec.hi + zp) == (0, 255):
            return q  # QuantizeLinear already saturates to this range
        return self.node("Clip", [q, self.const("lo", np.array(spec.lo + zp, dtype=dtype)),
                                  self.const("hi", np.array(spec.hi + zp, dtype=dtype))], "clip")

    def requant(self, codes: str, op: Rescale | Add | Pool | SEMul, lo: float, hi: float) -> str:
        """The engine's ``clamp(round(n * m0 * 2**-shift), lo, hi)`` on exact integer codes ``n``, in float64.

        Float64 makes it exact, for the same reason as in the engine (:mod:`.fixedpoint`); QuantizeLinear would
        divide by a float32 scale and could land one code apart near rounding ties.
        """
        v = self.node("Mul", [codes, self.scalar("m", multiplier_value(op.m0, op.shift), "float64")], "v")
        return self.node("Clip", [self.node("Round", [v], "r"), self.scalar("lo", lo, "float64"),
                                  self.scalar("hi", hi, "float64")], "requant")

    def to_codes(self, tensor: str, v: str) -> None:
        """Store float64 codes: as uint8 codes when the range allows, else as they are."""
        spec = self.program.tensors[tensor]
        try:
            _, zp = _int_type(spec.lo, spec.hi)
        except ValueError:
            self.code_value[tensor] = v
            return
        if zp:
            v = self.node("Add", [v, self.scalar("zp", zp, "float64")], "offset")
        self.int_value[tensor] = self.node("Cast", [v], "codes", to=self.tp.UINT8)

    def round_clip(self, v: str, lo: float, hi: float, hint: str) -> str:
        """``clamp(round(v), lo, hi)`` in float (Round: half to even)."""
        return self.node("Clip", [self.node("Round", [v], hint), self.scalar("lo", lo), self.scalar("hi", hi)], hint)

    def store(self, tensor: str, float_codes: str) -> None:
        """Keep float32 codes: as uint8 codes when the range allows (convs read those), else as float64 codes."""
        spec = self.program.tensors[tensor]
        try:
            _, zp = _int_type(spec.lo, spec.hi)
        except ValueError:
            self.code_value[tensor] = self.node("Cast", [float_codes], "codes", to=self.tp.DOUBLE)
            return
        if zp:
            float_codes = self.node("Add", [float_codes, self.scalar("zp", zp)], "offset")
        self.int_value[tensor] = self.node("Cast", [float_codes], "int", to=self.tp.UINT8)

    # ---------------------------------------------------------------- operations
    def conv(self, op: Conv) -> None:
        t = self.program.tensors
        spec_in, spec_out = t[op.input], t[op.output]
        if op.input not in self.int_value:
            raise ValueError(f"conv {op.name!r} reads {op.input!r}, which has no 8-bit codes")
        if self.exact and spec_out.kind in ("stream", "fine") and not op.linear:
            self.conv_integer(op)
            return
        a_unit = (multiplier_value(op.m0, op.shift) * op.pre_step).numpy()  # (O,) float64
        x_zp = self.const("x_zp", np.array(self.zero_point(op.input), dtype=np.uint8))
        x = self.node("DequantizeLinear", [self.int_value[op.input], self.scalar("scale", spec_in.scale), x_zp],
                      "dq")
        w_scale = (a_unit / spec_in.scale).astype(np.float32)
        weight = op.weight.numpy().astype(np.int8)
        if op.linear:
            weight = weight.reshape(weight.shape[0], -1)
        w = self.node("DequantizeLinear", [self.const("w", weight), self.const("w_scale", w_scale),
                                           self.const("w_zp", np.zeros(len(w_scale), dtype=np.int8))], "w_dq", axis=0)
        b_scale = (spec_in.scale * w_scale.astype(np.float64)).astype(np.float32)  # what onnxruntime expects
        b = self.node("DequantizeLinear", [self.const("b", op.bias.numpy().astype(np.int32)),
                                           self.const("b_scale", b_scale),
                                           self.const("b_zp", np.zeros(len(b_scale), dtype=np.int32))],
                      "b_dq", axis=0)
        if op.linear:
            y = self.node("Gemm", [x, w, b], "gemm", transB=1)
        else:
            p = op.padding
            y = self.node("Conv", [x, w, b], "conv", strides=[op.stride] * 2, pads=[p] * 4, group=op.groups,
                          kernel_shape=list(op.weight.shape[2:]))
        if spec_out.kind == "logits":  # y = logit_step * (acc + bias): the real logits
            self.logits = y
            return
        if op.act == "clamp":
            try:
                self.int_value[op.output] = self.quant(y, op.pre_step, spec_out, op.output)
            except ValueError:  # a wide range (streams, pooled inputs): float codes
                u = self.node("Div", [y, self.scalar("step", op.pre_step)], "v")
                self.store(op.output, self.round_clip(u, spec_out.lo, spec_out.hi, op.output))
            return
        # h-swish: the fixed-point pre-activation u = round(y / delta), then the engine's table
        table = conv_table(op, spec_out)
        u = self.node("Div", [y, self.scalar("delta", op.pre_step)], "u_real")
        u = self.round_clip(u, table.u_min, table.u_sat, "u")
        if table.u_sat - table.u_min < 2**16 and spec_out.hi <= 255:  # one table: u -> code
            idx = self.node("Cast", [self.node("Sub", [u, self.scalar("u_min", table.u_min)], "idx")], "idx",
                            to=self.tp.INT64)
            codes = (table.code_table() + _int_type(spec_out.lo, spec_out.hi)[1]).numpy().astype(np.uint8)
            self.int_value[op.output] = self.node("Gather", [self.const("table", codes), idx], "lut", axis=0)
            return
        # a wide output (before pooling): h(u) from the table up to u_lin, h(u) = u above, then offset and shift
        self.store(op.output, self.hswish_wide(u, table, spec_out))

    def conv_integer(self, op: Conv) -> None:
        """A conv with a wide output (a residual stream, a pooled input): the exact accumulator plus the bias,
        requantized in float64 exactly as the engine does."""
        spec_in, spec_out = self.program.tensors[op.input], self.program.tensors[op.output]
        zp = _int_type(spec_in.lo, spec_in.hi)[1]
        p = op.padding
        attrs = {"strides": [op.stride] * 2, "pads": [p] * 4, "group": op.groups,
                 "kernel_shape": list(op.weight.shape[2:])}
        x_max = max(abs(spec_in.lo), abs(spec_in.hi))
        if int((op.weight.abs().flatten(1).sum(1) * x_max).max()) < FLOAT32_EXACT:
            # a float32 conv over integer codes is exact here (every partial sum is an integer below 2**24), and
            # onnxruntime's float conv is much faster than its ConvInteger
            x = self.node("Cast", [self.int_value[op.input]], "x", to=self.tp.FLOAT)
            if zp:
                x = self.node("Sub", [x, self.scalar("zp", zp)], "x")
            # int8 codes in the file; onnxruntime folds this Cast of a constant once, when the session is made
            w = self.node("Cast", [self.const("w", op.weight.numpy().astype(np.int8))], "w_float", to=self.tp.FLOAT)
            acc = self.node("Conv", [x, w], "acc", **attrs)
        else:
            zero_x = self.const("x_zp", np.array(zp, dtype=np.uint8))
            zero_w = self.const("w_zp", np.array(0, dtype=np.int8))
            w = self.const("w", op.weight.numpy().astype(np.int8))
            acc = self.node("ConvInteger", [self.int_value[op.input], w, zero_x, zero_w], "acc", **attrs)
        n = self.node("Add", [self.node("Cast", [acc], "wide", to=self.tp.DOUBLE),
                              self.const("b", op.bias.numpy().astype(np.float64).reshape(-1, 1, 1))], "n")
        mult = multiplier_value(op.m0, op.shift).numpy().reshape(-1, 1, 1)
        v = self.node("Mul", [n, self.const("m", mult)], "v")
        v = self.node("Round", [v], "u")
        if op.act == "clamp":
            v = self.node("Clip", [v, self.scalar("lo", spec_out.lo, "float64"),
                                   self.scalar("hi", spec_out.hi, "float64")], "clip")
            self.code_value[op.output] = v
            return
        table = conv_table(op, spec_out)
        u = self.node("Clip", [v, self.scalar("u_min", table.u_min, "float64"),
                               self.scalar("u_sat", table.u_sat, "float64")], "u")
        self.store(op.output, self.hswish_wide(self.node("Cast", [u], "u", to=self.tp.FLOAT), table, spec_out))

    def hswish_wide(self, u: str, table: Any, spec_out: TensorSpec) -> str:
        """The engine's h-swish with a linear tail, for wide outputs: float32 codes."""
        low = self.node("Min", [u, self.scalar("u_lin", table.u_lin)], "low")
        idx = self.node("Cast", [self.node("Sub", [low, self.scalar("u_min", table.u_min)], "idx")], "idx",
                        to=self.tp.INT64)
        h = self.node("Gather", [self.const("h_table", table.table.numpy().astype(np.float32)), idx], "h", axis=0)
        h = self.node("Where", [self.node("Greater", [u, self.scalar("u_lin", table.u_lin)], "tail"), u, h], "h")
        v = self.node("Div", [self.node("Add", [h, self.scalar("z", table.zero)], "hz"),
                              self.scalar("two_f", 2.0**table.frac_bits)], "v")
        return self.round_clip(v, spec_out.lo, spec_out.hi, "hswish")

    def rescale(self, op: Rescale) -> None:
        spec = self.program.tensors[op.output]
        self.to_codes(op.output, self.requant(self.codes(op.input), op, spec.lo, spec.hi))

    def add(self, op: Add) -> None:
        spec = self.program.tensors[op.output]
        skip = self.requant(self.codes(op.skip), op, -(2**31), 2**31)
        total = self.node("Add", [skip, self.codes(op.branch)], "add")
        self.to_codes(op.output, self.node("Clip", [total, self.scalar("lo", spec.lo, "float64"),
                                                    self.scalar("hi", spec.hi, "float64")], "add"))

    def pool(self, op: Pool) -> None:
        spec = self.program.tensors[op.output]
        axes = self.const("axes", np.array([2, 3], dtype=np.int64))
        total = self.node("ReduceSum", [self.codes(op.input), axes], "sum", keepdims=0)
        self.to_codes(op.output, self.requant(total, op, spec.lo, spec.hi))

    def se_mul(self, op: SEMul) -> None:
        spec, big_g = self.program.tensors[op.output], self.program.tensors[op.gate].hi
        axes = self.const("axes", np.array([2, 3], dtype=np.int64))
        g = self.node("Unsqueeze", [self.codes(op.gate), axes], "g")
        k = self.codes(op.input)
        kg = self.node("Mul", [self.node("Mul", [k, g], "kg"), self.scalar("two_z", 2.0**op.zero_bits, "float64")],
                       "kg")
        zg = self.node("Mul", [self.node("Sub", [self.scalar("G", big_g, "float64"), g], "g_rest"),
                               self.scalar("zero", op.zero, "float64")], "zg")
        num = self.node("Add", [kg, zg], "num")  # exact integers: |num| < 2**31 (checked)
        self.to_codes(op.output, self.requant(num, op, spec.lo, spec.hi))

    def build(self) -> Any:
        check_program(self.program)
        # the input: int8 codes, stored as uint8 codes + 128 like every signed tensor
        wide = self.node("Cast", [self.node("Cast", ["image"], "image", to=self.tp.INT32)], "image",
                         to=self.tp.FLOAT)
        self.int_value["image"] = self.node("Cast", [self.node("Add", [wide, self.scalar("zp", 128)], "image")],
                                            "image", to=self.tp.UINT8)
        for op in self.program.ops:
            {Conv: self.conv, Rescale: self.rescale, Add: self.add, Pool: self.pool, SEMul: self.se_mul}[type(op)](op)
        out = self.program.output
        self.nodes.append(self.helper.make_node("Identity", [self.logits], ["logits"]))
        h, w = self.program.input_size
        classes = self.program.tensors[out].channels
        graph = self.helper.make_graph(
            self.nodes, "profit_edu_packed",
            [self.helper.make_tensor_value_info("image", self.tp.INT8, ["N", 3, h, w])],
            [self.helper.make_tensor_value_info("logits", self.tp.FLOAT, ["N", classes])],
            self.inits)
        model = self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", OPSET)],
                                       producer_name="profit_edu.packed")
        model.ir_version = 8
        self.onnx.checker.check_model(model)
        return model


def export_onnx(program: Program, path: str | os.PathLike | None = None, *, exact: bool = True) -> bytes:
    """Build the QDQ ONNX model of a program; write it to ``path`` if given; return its bytes.

    The model's input is ``image``: int8 codes (N, 3, H, W) (:func:`~profit_edu.packed.engine.quantize_image`);
    its output is ``logits``: float32 (N, classes), the real logits.

    Args:
        program: the integer program.
        path: where to write the ``.onnx`` file (optional).
        exact: compute the convs with wide outputs (residual streams, the pooled input) with ``ConvInteger`` and a
            float64 requantization, which reproduces the engine's codes (default). ``False`` computes them as
            float convs rounded onto the grid: about 1.5x faster in onnxruntime, but a stream code is then one
            fine step (1/256 of a quantizer step) off for about 1 value in 10,000; when such a step crosses a
            rounding boundary of the next block's input quantizer, the flipped code propagates, and a trained
            MobileNet-v2's logits can end up many logit steps from the engine's (top-1 rarely changes).

    Raises:
        ImportError: the ``onnx`` package is missing.
        ValueError: a tensor's code range does not fit an ONNX integer type.
    """
    model = _Graph(program, exact).build()
    blob = model.SerializeToString()
    if path is not None:
        atomic_write_bytes(path, blob)
    return blob


def onnx_session(model: bytes | str | os.PathLike, *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with thread spinning off (so it does not steal cores from other work)."""
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover
        raise ImportError("running ONNX models needs 'onnxruntime': pip install onnxruntime") from err
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, image: Tensor) -> Tensor:
    """Real logits (float64) from an onnxruntime session for int image codes."""
    out = session.run(["logits"], {"image": image.to(torch.int8).numpy()})[0]
    return torch.from_numpy(out).double()


def compare_with_engine(program: Program, image: Tensor, session: Any | None = None) -> dict[str, float]:
    """How far onnxruntime's logits are from the engine's, in logit steps (the engine's logit scale).

    Returns:
        ``max_steps`` (largest |difference| / step), ``frac_over_one`` (share of logits more than one step
        apart), ``top1_agreement`` (percent of images with the same arg-max).
    """
    session = session if session is not None else onnx_session(export_onnx(program))
    engine = IntegerEngine(program)
    ref = engine.logits(image)
    got = run_onnx(session, image)
    diff = (got - ref).abs() / engine.logit_scale
    return {"max_steps": float(diff.max()), "frac_over_one": float((diff > 1 + 1e-3).double().mean()),
            "top1_agreement": 100.0 * float((got.argmax(1) == ref.argmax(1)).double().mean()),
            "logit_step": engine.logit_scale, "images": float(image.shape[0]),
            "mean_steps": float(diff.mean()) if math.isfinite(float(diff.mean())) else float("nan")}
