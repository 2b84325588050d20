"""The checks of the four assignments in ``book/assignments/``: cases, references, and hints.

Every ``check_*`` function takes the student's function and returns a :class:`~.grading.Result` (see
:mod:`.grading` for what a result says and why a check never crashes). A notebook cell shows the result; an
autograder reads ``result.passed`` or ``result.score``. The keyword arguments are the same everywhere:

``hidden``
    False (the student edition's public check): a few fixed cases. True (the instructor edition's hidden check):
    more cases, drawn with another seed, so that an answer written for the public cases alone does not pass.
``seed``
    the seed of the random cases (default 0 for public and 1 for hidden checks); an instructor may pick another.
``time_limit_s``
    seconds per case before it counts as a time-out.

The references come from the library (``profit_edu.quant.duq``, ``profit_edu.aiwq.layer_aiwq``,
``profit_edu.packed.pack`` and the integer engine) or from autograd, never from the student's code, and the
inputs avoid rounding ties, so any correct order of the same operations passes.

>>> check_duq_levels(lambda c, bits, mode: torch.zeros(3)).passed
False
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import aiwq, quant
from ..layers import Conv2dPad, QConv2d
from ..packed import IntegerEngine, Program, pack, unpack
from .grading import (
    DEFAULT_TIME_LIMIT_S,
    MESSAGES,
    Case,
    Mismatch,
    Result,
    equal,
    number_close,
    run_check,
    same_items,
    tensor_close,
    tuple_of,
)

__all__ = [
    "check_choose_frozen",
    "check_duq_forward",
    "check_duq_grad_params",
    "check_duq_grad_x",
    "check_duq_levels",
    "check_from_integer",
    "check_integer_conv",
    "check_layer_from_codes",
    "check_layer_metric",
    "check_negative_pad_conv",
    "check_pack3",
    "check_predict_frozen_share",
    "check_rank_layers",
    "check_run_folded_layer",
    "check_smallest_within",
    "check_unpack3",
]

OFF = quant.HSWISH_OFFSET  # 3/8
_F64 = torch.float64
CaseMaker = Callable[[bool, torch.Generator], list[Case]]


def _check(name: str, fn: Any, make: CaseMaker, hidden: bool, seed: int | None, time_limit_s: float | None
           ) -> Result:
    """Run ``fn`` on ``make(hidden, generator)``'s cases (the generator seeded with ``seed``, default 0 or 1)."""
    gen = torch.Generator().manual_seed(int(seed) if seed is not None else int(hidden))
    return run_check(name, fn, lambda: make(hidden, gen), hidden=hidden, time_limit_s=time_limit_s)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=_F64))


# --------------------------------------------------------------------------------------------
# Assignment 1: DuQ by hand
# --------------------------------------------------------------------------------------------
_MODE_HINTS = {
    "signed": "signed codes run from -K to K with K = 2**(bits-1) - 1",
    "unsigned": "unsigned codes run from 0 to K with K = 2**bits - 1",
    "hswish": "h-swish codes run from 0 to K = 2**bits - 1, and every level is shifted down by 3/8",
}


def _duq_settings(hidden: bool, gen: torch.Generator) -> list[tuple[str, int, float, float]]:
    """(mode, bits, a, c) of the DuQ cases: fixed ones, plus random ones for hidden checks."""
    fixed = [("signed", 4, 1.0, 1.0), ("unsigned", 2, 2.0, 1.5), ("hswish", 3, 4.0, 4.0), ("signed", 2, 0.5, 0.8),
             ("hswish", 4, 2.5, 3.0), ("unsigned", 3, 1.0, 0.6)]
    if not hidden:
        return fixed
    drawn = [(mode, int(torch.randint(2, 9, (), generator=gen)), _uniform(gen, 0.3, 5.0), _uniform(gen, 0.3, 5.0))
             for mode in quant.MODES for _ in range(4)]
    return fixed + drawn


def _duq_input(mode: str, a: float, n: int, gen: torch.Generator) -> Tensor:
    """float64 inputs spread over and beyond the clip range of ``mode`` (h-swish inputs stay >= -3/8)."""
    x = torch.randn(n, generator=gen, dtype=_F64) * a * 0.8
    if mode == "unsigned":
        x = x.abs() - 0.1 * a
    elif mode == "hswish":
        x = (x.abs() * 1.3 - OFF).clamp(min=-OFF)
    return x


def check_duq_levels(fn: Callable[[float, int, str], Tensor], *, hidden: bool = False, seed: int | None = None,
                     time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(c, bits, mode) -> levels``: every real output level of DuQ's grid, ascending (reference
    :func:`profit_edu.quant.duq_levels`)."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        settings = [(m, b, c) for m, b, _, c in _duq_settings(hidden, gen)]
        if hidden:
            settings += [(m, b, _uniform(gen, 0.2, 3.0)) for m in quant.MODES for b in range(2, 9)]
        return [Case(f"{mode}, {bits} bits, c = {c:.4g}", (c, bits, mode), quant.duq_levels(c, bits, mode),
                     tensor_close(atol=1e-9, rtol=1e-9), hint=_MODE_HINTS[mode]) for mode, bits, c in settings]

    return _check("duq_levels", fn, make, hidden, seed, time_limit_s)


def check_duq_forward(fn: Callable[[Tensor, float, float, int, str], Tensor], *, hidden: bool = False,
                      seed: int | None = None, time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(x, a, c, bits, mode) -> y``: DuQ's forward value (reference :func:`profit_edu.quant.duq`)."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for mode, bits, a, c in _duq_settings(hidden, gen):
            x = _duq_input(mode, a, 300, gen)
            cases.append(Case(f"{mode}, {bits} bits, a = {a:.4g}, c = {c:.4g}", (x, a, c, bits, mode),
                              quant.duq(x, a, c, bits, mode), tensor_close(),
                              hint=f"clip (x + off) / a to [lo, 1], round u * K, scale by c / K; {_MODE_HINTS[mode]}"))
        return cases

    return _check("duq_forward", fn, make, hidden, seed, time_limit_s)


def _duq_grads(x: Tensor, a: float, c: float, bits: int, mode: str, grad_y: Tensor, *, through_softplus: bool
               ) -> tuple[Tensor, float, float]:
    """Autograd's dL/dx and dL/da, dL/dc for L = sum(grad_y * duq(x)); with ``through_softplus`` a and c are
    ``softplus(a_hat)``, ``softplus(c_hat)`` and the gradients are those of the raw parameters."""
    x = x.clone().requires_grad_(True)
    a_t = torch.tensor(a, dtype=_F64, requires_grad=True)
    c_t = torch.tensor(c, dtype=_F64, requires_grad=True)
    a_used, c_used = (F.softplus(a_t), F.softplus(c_t)) if through_softplus else (a_t, c_t)
    (quant.duq(x, a_used, c_used, bits, mode) * grad_y).sum().backward()
    return x.grad, float(a_t.grad), float(c_t.grad)


def check_duq_grad_x(fn: Callable[..., Tensor], *, hidden: bool = False, seed: int | None = None,
                     time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(x, a, c, bits, mode, grad_y) -> dL/dx``: the straight-through backward to the input (against
    autograd through :func:`profit_edu.quant.duq`), where ``grad_y`` is dL/dy."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for mode, bits, a, c in _duq_settings(hidden, gen):
            x = _duq_input(mode, a, 300, gen)
            grad_y = torch.randn(x.shape, generator=gen, dtype=_F64)
            want = _duq_grads(x, a, c, bits, mode, grad_y, through_softplus=False)[0]
            cases.append(Case(f"{mode}, {bits} bits, a = {a:.4g}, c = {c:.4g}", (x, a, c, bits, mode, grad_y), want,
                              tensor_close(), hint="rounding passes the gradient straight through, so dy/dx = c / a "
                              "where the input is inside the clip range and 0 where it is clipped"))
        return cases

    return _check("duq_grad_x", fn, make, hidden, seed, time_limit_s)


def check_duq_grad_params(fn: Callable[..., tuple[float, float]], *, hidden: bool = False, seed: int | None = None,
                          time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(x, a_hat, c_hat, bits, mode, grad_y) -> (dL/da_hat, dL/dc_hat)`` with ``a = softplus(a_hat)`` and
    ``c = softplus(c_hat)`` (against autograd)."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for mode, bits, a, c in _duq_settings(hidden, gen):
            a_hat, c_hat = float(quant.inverse_softplus(a)), float(quant.inverse_softplus(c))
            x = _duq_input(mode, a, 300, gen)
            grad_y = torch.randn(x.shape, generator=gen, dtype=_F64)
            _, ga, gc = _duq_grads(x, a_hat, c_hat, bits, mode, grad_y, through_softplus=True)
            close = number_close(atol=1e-8, rtol=1e-6)
            cases.append(Case(f"{mode}, {bits} bits, a_hat = {a_hat:.4g}, c_hat = {c_hat:.4g}",
                              (x, a_hat, c_hat, bits, mode, grad_y), (ga, gc),
                              tuple_of(close, close, names=["dL/da_hat", "dL/dc_hat"]),
                              hint="sum dL/dy * dy/da over the elements, then multiply by softplus'(a_hat) = "
                                   "sigmoid(a_hat); dy/da = -c u / a in range and 0 when clipped, dy/dc = level / K "
                                   "everywhere"))
        return cases

    return _check("duq_grad_params", fn, make, hidden, seed, time_limit_s)


# --------------------------------------------------------------------------------------------
# Assignment 2: negative padding and the integer convolution
# --------------------------------------------------------------------------------------------
#: (label, C_in, C_out, kernel, stride, padding, groups) of the convolutions of assignment 2.
_GEOMETRIES = [("depthwise 3x3", 6, 6, 3, 1, 1, 6), ("depthwise 3x3, stride 2", 6, 6, 3, 2, 1, 6),
               ("pointwise 1x1", 6, 5, 1, 1, 0, 1), ("full 3x3", 4, 5, 3, 1, 1, 1)]
_MORE_GEOMETRIES = [("depthwise 5x5", 4, 4, 5, 1, 2, 4), ("depthwise 5x5, stride 2", 8, 8, 5, 2, 2, 8),
                    ("grouped 3x3", 8, 4, 3, 1, 1, 2), ("full 3x3, stride 2", 3, 4, 3, 2, 1, 1)]


def _geometries(hidden: bool) -> list[tuple[str, int, int, int, int, int, int]]:
    return _GEOMETRIES + (_MORE_GEOMETRIES if hidden else [])


def _reference_conv(c_in: int, c_out: int, k: int, stride: int, padding: int, groups: int, weight: Tensor,
                    pad_value: float) -> Conv2dPad:
    conv = Conv2dPad(c_in, c_out, k, stride=stride, padding=padding, groups=groups, bias=False, pad_value=pad_value,
                     dtype=_F64)
    with torch.no_grad():
        conv.weight.copy_(weight)
    return conv


def _codes_case(geometry: tuple, gen: torch.Generator, hidden: bool) -> dict[str, Any]:
    """Random input and weight codes for one geometry, their real values, and the exact integer convolution."""
    _, c_in, c_out, k, stride, padding, groups = geometry
    bits = int(torch.randint(2, 5, (), generator=gen)) if hidden else 4
    codes = torch.randint(0, 2**bits, (2, c_in, 7, 7), generator=gen)
    w_codes = torch.randint(-7, 8, (c_out, c_in // groups, k, k), generator=gen)
    in_step, w_step = _uniform(gen, 0.05, 0.5), _uniform(gen, 0.01, 0.2)
    acc = F.conv2d(codes.double(), w_codes.double(), stride=stride, padding=padding, groups=groups)
    conv = _reference_conv(c_in, c_out, k, stride, padding, groups, w_step * w_codes.double(), -OFF)
    with torch.no_grad():
        real_out = conv(in_step * codes.double() - OFF)
    return {"codes": codes, "w_codes": w_codes, "in_step": in_step, "w_step": w_step, "bits": bits,
            "acc": acc.round().long(), "real_out": real_out, "geometry": (stride, padding, groups)}


def check_negative_pad_conv(fn: Callable[..., Tensor], *, hidden: bool = False, seed: int | None = None,
                            time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(y, weight, stride, padding, groups) -> out``: the fake-quantized float conv over h-swish values, padded
    with -3/8 (reference :class:`profit_edu.layers.Conv2dPad` with ``pad_value=-3/8``)."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for geometry in _geometries(hidden):
            d = _codes_case(geometry, gen, hidden)
            y, weight = d["in_step"] * d["codes"].double() - OFF, d["w_step"] * d["w_codes"].double()
            cases.append(Case(geometry[0], (y, weight, *d["geometry"]), d["real_out"], tensor_close(atol=1e-9),
                              hint="pad y with -3/8 (the real value of code 0), then convolve without padding"))
        return cases

    return _check("negative_pad_conv", fn, make, hidden, seed, time_limit_s)


def check_integer_conv(fn: Callable[..., Tensor], *, hidden: bool = False, seed: int | None = None,
                       time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(codes, weight_codes, stride, padding, groups) -> acc``: the exact int64 convolution of integer codes,
    zero-padded."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for geometry in _geometries(hidden):
            d = _codes_case(geometry, gen, hidden)
            cases.append(Case(geometry[0], (d["codes"], d["w_codes"], *d["geometry"]), d["acc"],
                              tensor_close(dtype=torch.int64),
                              hint="pad the codes with 0 and sum code x weight code; float64 holds these sums "
                                   "exactly, so F.conv2d on .double() and then .round().long() is exact"))
        return cases

    return _check("integer_conv", fn, make, hidden, seed, time_limit_s)


def check_from_integer(fn: Callable[..., Tensor], *, hidden: bool = False, seed: int | None = None,
                       time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(acc, weight_codes, in_step, w_step) -> out``: the real output of the negative-padded conv, from the
    integer accumulator (it must equal the fake-quantized float conv at every pixel, border included)."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for geometry in _geometries(hidden):
            d = _codes_case(geometry, gen, hidden)
            cases.append(Case(geometry[0], (d["acc"], d["w_codes"], d["in_step"], d["w_step"]), d["real_out"],
                              tensor_close(atol=1e-8, rtol=1e-8),
                              hint="out = in_step * w_step * acc - 3/8 * w_step * (sum of the output channel's weight "
                                   "codes), at every pixel: code 0, padding included, stands for -3/8"))
        return cases

    return _check("from_integer", fn, make, hidden, seed, time_limit_s)


def _qconv(geometry: tuple, bits: int, gen: torch.Generator) -> QConv2d:
    """A float64 QConv2d with a 4-bit (or ``bits``) DuQ weight quantizer after an h-swish input: pads with -3/8."""
    _, c_in, c_out, k, stride, padding, groups = geometry
    layer = QConv2d(c_in, c_out, k, stride=stride, padding=padding, groups=groups, bias=False, pad_value=-OFF,
                    weight_quant=quant.DuQ("signed", bits, role="weight"), dtype=_F64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen, dtype=_F64) * 0.3)
    top = float(layer.weight.detach().abs().max())
    layer.weight_quant.set_a_c(_uniform(gen, 0.6, 0.9) * top, _uniform(gen, 0.7, 1.2) * top)
    return layer.double()


def check_layer_from_codes(fn: Callable[[QConv2d, Tensor, float], Tensor], *,
                           given: Sequence[tuple[str, QConv2d, Tensor, float]] = (), hidden: bool = False,
                           seed: int | None = None, time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(layer, codes, in_step) -> out``: a quantized conv (:class:`profit_edu.layers.QConv2d`, padding with -3/8)
    computed from integer input codes and its integer weight codes; reference: the layer itself on
    ``in_step * codes - 3/8``, in float64.

    ``given`` adds cases ``(label, layer, codes, in_step)``, e.g. layers of a real MobileNet-v3.
    """

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for label, layer, codes, in_step in given:
            layer64 = copy.deepcopy(layer).double().eval()
            with torch.no_grad():
                want = layer64(in_step * codes.double() - OFF)
            cases.append(Case(label, (layer64, codes, in_step), want, tensor_close(atol=1e-8, rtol=1e-8)))
        for geometry in _geometries(hidden):
            for bits in ((4, 3) if hidden else (4,)):
                layer = _qconv(geometry, bits, gen)
                codes = torch.randint(0, 16, (2, layer.in_channels, 8, 8), generator=gen)
                in_step = _uniform(gen, 0.05, 0.5)
                with torch.no_grad():
                    want = layer(in_step * codes.double() - OFF)
                cases.append(Case(f"{geometry[0]}, {bits}-bit weights", (layer, codes, in_step), want,
                                  tensor_close(atol=1e-8, rtol=1e-8),
                                  hint="weight codes: layer.weight_quant.codes(layer.weight); weight step: "
                                       "layer.weight_quant.step(); the geometry: layer.stride[0], layer.padding[0], "
                                       "layer.groups"))
        return cases

    return _check("layer_from_codes", fn, make, hidden, seed, time_limit_s)


# --------------------------------------------------------------------------------------------
# Assignment 3: AIWQ and freezing
# --------------------------------------------------------------------------------------------
def _conv64(c_in: int, c_out: int, k: int, stride: int, groups: int, bias: bool, gen: torch.Generator) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=bias, dtype=_F64)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=_F64) * 0.5)
        if bias:
            conv.bias.copy_(torch.randn(c_out, generator=gen, dtype=_F64))
    return conv.requires_grad_(False)  # data for the exercise, nothing to train


def _step_weights(conv: nn.Conv2d, size: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(w_old_q, w_new_q): the conv's weight on a 4-bit grid, and after a random step that flips some codes."""
    a = float(conv.weight.detach().abs().max())
    old = quant.duq(conv.weight.detach(), a, a, 4, "signed")
    new = quant.duq(conv.weight.detach() + size * torch.randn(conv.weight.shape, generator=gen, dtype=_F64),
                    a, a, 4, "signed")
    return old, new


def _metric_layers(hidden: bool, gen: torch.Generator) -> list[tuple[str, nn.Conv2d, Tensor, float]]:
    """(label, conv, input, step size) for the AIWQ cases."""
    specs = [("depthwise 3x3", 8, 8, 3, 1, 8, False), ("pointwise 1x1", 8, 6, 1, 1, 1, False),
             ("depthwise 3x3, stride 2, bias", 6, 6, 3, 2, 6, True)]
    if hidden:
        specs += [("full 3x3", 4, 6, 3, 1, 1, True), ("depthwise 5x5", 5, 5, 5, 1, 5, False),
                  ("pointwise 1x1, stride 2", 6, 9, 1, 2, 1, True)]
    out = []
    for label, c_in, c_out, k, stride, groups, bias in specs:
        conv = _conv64(c_in, c_out, k, stride, groups, bias, gen)
        x = torch.relu(torch.randn(6, c_in, 9, 9, generator=gen, dtype=_F64))
        out.append((label, conv, x, _uniform(gen, 0.02, 0.2)))
    return out


def check_layer_metric(fn: Callable[[nn.Conv2d, Tensor, Tensor, Tensor], float], *, hidden: bool = False,
                       seed: int | None = None, time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(conv, x, w_old_q, w_new_q) -> AIWQ``: one layer's metric on one batch (reference
    :func:`profit_edu.aiwq.layer_aiwq`)."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for label, conv, x, size in _metric_layers(hidden, gen):
            old, new = _step_weights(conv, size, gen)
            cases.append(Case(label, (conv, x, old, new), aiwq.layer_aiwq(conv, x, old, new), number_close(),
                              hint="per output channel: mean and unbiased variance over the batch and the pixels, "
                                   "KL(new || old), then the mean over channels; use the layer's stride, padding, "
                                   "groups and bias"))
        conv = _conv64(4, 4, 3, 1, 4, True, gen)
        x = torch.randn(5, 4, 6, 6, generator=gen, dtype=_F64)
        old, new = _step_weights(conv, 0.1, gen)
        old[2], new[2] = 0.0, 0.0  # channel 2 outputs exactly 0 everywhere (its bias too): zero variance, left out
        with torch.no_grad():
            conv.bias[2] = 0.0  # a constant 0, not another constant: its variance is 0 however it is summed
        cases.append(Case("channel 2 constant", (conv, x, old, new), aiwq.layer_aiwq(conv, x, old, new),
                          number_close(), hint="leave out channels whose variance is 0 (old or new)"))
        cases.append(Case("unchanged weights", (conv, x, new, new.clone()), 0.0, number_close(atol=1e-12)))
        return cases

    return _check("layer_metric", fn, make, hidden, seed, time_limit_s)


Snapshot = tuple[dict[str, nn.Module], dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]


def _snapshot(n_layers: int, gen: torch.Generator) -> Snapshot:
    """Random layers with inputs and old/new quantized weights: the arguments of ``rank_layers``."""
    layers, inputs, old_q, new_q = {}, {}, {}, {}
    for i in range(n_layers):
        depthwise = i % 2 == 0
        conv = _conv64(6, 6, 3 if depthwise else 1, 1, 6 if depthwise else 1, False, gen)
        name = f"features.{i}.conv.{'dw' if depthwise else 'pw'}"
        layers[name], inputs[name] = conv, torch.relu(torch.randn(4, 6, 8, 8, generator=gen, dtype=_F64))
        old_q[name], new_q[name] = _step_weights(conv, _uniform(gen, 0.01, 0.3), gen)
    return layers, inputs, old_q, new_q


def _ranking(snapshot: Snapshot) -> list[tuple[str, float]]:
    layers, inputs, old_q, new_q = snapshot
    values = {n: aiwq.layer_aiwq(layers[n], inputs[n], old_q[n], new_q[n]) for n in layers}
    return sorted(values.items(), key=lambda item: -item[1])


def _compare_ranking(got: Any, want: list[tuple[str, float]]) -> Mismatch | None:
    """A list of (name, AIWQ) pairs, most unstable first; entries whose values agree may swap places."""
    if not isinstance(got, list | tuple) or not all(isinstance(p, tuple | list) and len(p) == 2 for p in got):
        return Mismatch("type", MESSAGES["type"].format(expected="a list of (name, AIWQ) pairs",
                                                        got=type(got).__name__))
    check_names = same_items()([p[0] for p in got], [n for n, _ in want])
    if check_names is not None:
        return Mismatch(check_names.kind, "the names: " + check_names.message)
    value_of = dict(want)
    for i, ((name, value), (_, want_value)) in enumerate(zip(got, want)):
        close = number_close(atol=1e-12, rtol=1e-6)
        mismatch = close(value, value_of[name])
        if mismatch is not None:
            return Mismatch(mismatch.kind, f"AIWQ of {name}: {mismatch.message}")
        if not math.isclose(value_of[name], want_value, rel_tol=1e-6, abs_tol=1e-12):
            return Mismatch("wrong", MESSAGES["wrong"].format(
                detail=f"place {i} of the ranking should hold AIWQ {want_value:.6g}, got {name} with "
                       f"{value_of[name]:.6g}: sort from the largest AIWQ down"))
    return None


def check_rank_layers(fn: Callable[..., list[tuple[str, float]]], *, given: Snapshot | None = None,
                      hidden: bool = False, seed: int | None = None,
                      time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(layers, inputs, old_q, new_q) -> [(name, AIWQ), ...]``, most unstable first (dicts by layer name).

    ``given`` (the same four dicts, e.g. the notebook's trained model) adds a case on those layers.
    """

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        sizes = (3, 6, 12) if hidden else (3, 6)
        snapshots = [(f"{n} random layers", _snapshot(n, gen)) for n in sizes]
        if given is not None:
            snapshots.append((f"the given model's {len(given[0])} layers", given))
        return [Case(label, snap, _ranking(snap), _compare_ranking,
                     hint="compute each layer's AIWQ on its own input, then sort by it, largest first")
                for label, snap in snapshots]

    return _check("rank_layers", fn, make, hidden, seed, time_limit_s)


def _fake_ranking(n: int, gen: torch.Generator) -> list[tuple[str, float]]:
    values = sorted((float(v) for v in torch.rand(n, generator=gen, dtype=_F64) * 1e-2), reverse=True)
    return [(f"layer{i}", v) for i, v in enumerate(values)]


def check_choose_frozen(fn: Callable[[list[tuple[str, float]], Fraction], Sequence[str]], *, hidden: bool = False,
                        seed: int | None = None, time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(ranking, fraction) -> names``: the first ``floor(L * fraction)`` layers of the ranking (PROFIT's rule,
    :func:`profit_edu.freezing.freeze_count`)."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        settings = [(52, Fraction(1, 3)), (52, Fraction(2, 3)), (9, Fraction(1, 3)), (10, Fraction(0)),
                    (7, Fraction(1))]
        if hidden:
            settings += [(int(torch.randint(1, 80, (), generator=gen)), Fraction(int(p), 6))
                         for p in torch.randint(0, 7, (6,), generator=gen)]
        cases = []
        for n, fraction in settings:
            ranking = _fake_ranking(n, gen)
            keep = math.floor(n * fraction)
            cases.append(Case(f"L = {n}, fraction = {fraction}", (ranking, fraction), [m for m, _ in ranking[:keep]],
                              same_items(), hint="freeze floor(L * fraction) layers from the top of the ranking "
                                                 "(the most unstable ones)"))
        return cases

    return _check("choose_frozen", fn, make, hidden, seed, time_limit_s)


def check_predict_frozen_share(fn: Callable[[list[tuple[str, float]], Sequence[str]], float], *,
                               hidden: bool = False, seed: int | None = None,
                               time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(ranking, frozen) -> share``: the share of the step's total AIWQ that the frozen layers carry."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for n, k in [(6, 2), (52, 17), (5, 0), (4, 4)] + ([(30, 10), (17, 3), (40, 26)] if hidden else []):
            ranking = _fake_ranking(n, gen)
            picks = torch.randperm(n, generator=gen)[:k].tolist() if n != 52 else list(range(k))
            frozen = [ranking[i][0] for i in picks]
            want = sum(ranking[i][1] for i in picks) / sum(v for _, v in ranking)
            cases.append(Case(f"{k} of {n} layers frozen", (ranking, frozen), want, number_close(),
                              hint="the frozen layers' AIWQ summed, divided by the sum over all layers"))
        return cases

    return _check("predict_frozen_share", fn, make, hidden, seed, time_limit_s)


# --------------------------------------------------------------------------------------------
# Assignment 4: bit packing and a mini deployment
# --------------------------------------------------------------------------------------------
def check_pack3(fn: Callable[[Tensor], Tensor], *, hidden: bool = False, seed: int | None = None,
                time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(codes) -> bytes``: 3-bit codes packed least significant bit first into ``ceil(3 n / 8)`` uint8 bytes
    (reference :func:`profit_edu.packed.pack`)."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        sizes = [8, 1, 11, 1000] + ([0, 3, 7, 9, 16, 17, 4099] if hidden else [])
        cases = [Case("codes 5, 3, 7, 0, 6, 1, 2, 4", (torch.tensor([5, 3, 7, 0, 6, 1, 2, 4]),),
                      pack(torch.tensor([5, 3, 7, 0, 6, 1, 2, 4]), 3), tensor_close(dtype=torch.uint8))]
        for n in sizes:
            codes = torch.randint(0, 8, (n,), generator=gen)
            cases.append(Case(f"{n} random codes", (codes,), pack(codes, 3), tensor_close(dtype=torch.uint8),
                              hint="code i fills bits 3i, 3i+1, 3i+2 of the stream; byte j holds stream bits 8j to "
                                   "8j+7, bit 0 lowest; the last byte is padded with zero bits"))
        return cases

    return _check("pack3", fn, make, hidden, seed, time_limit_s)


def check_unpack3(fn: Callable[[Tensor, int], Tensor], *, hidden: bool = False, seed: int | None = None,
                  time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(buf, n) -> codes``: the first ``n`` 3-bit codes of a packed buffer, int64 (reference
    :func:`profit_edu.packed.unpack`)."""

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        cases = []
        for n in [8, 1, 11, 1000] + ([0, 2, 7, 9, 16, 4097] if hidden else []):
            buf = pack(torch.randint(0, 8, (n,), generator=gen), 3)
            cases.append(Case(f"{n} codes", (buf, n), unpack(buf, 3, n), tensor_close(dtype=torch.int64),
                              hint="undo pack3: take stream bits 3i..3i+2 for code i and ignore the padding bits"))
        return cases

    return _check("unpack3", fn, make, hidden, seed, time_limit_s)


def check_run_folded_layer(fn: Callable[..., Tensor], *, program: Program, image_codes: Tensor,
                           hidden: bool = False, seed: int | None = None,
                           time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(op, x_codes, lo, hi) -> out_codes``: one folded integer conv of ``program`` (a
    :class:`profit_edu.packed.program.Conv`), int64, against the integer engine on ``image_codes``.

    Public checks run the first three convolutions (the stem, a depthwise and a pointwise one); hidden ones run
    every convolution (linear layers excluded) on a random half of the images.
    """

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        images = image_codes
        if hidden:
            images = images[torch.randperm(len(images), generator=gen)[: max(1, len(images) // 2)]]
        codes_of = IntegerEngine(program, arithmetic="int64").run(images, keep_all=True)
        convs = [op for op in program.convs() if not op.linear and op.act == "clamp"]
        cases = []
        for op in convs if hidden else convs[:3]:
            spec = program.tensors[op.output]
            kind = "depthwise" if op.groups > 1 else "pointwise" if op.weight.shape[-1] == 1 else "full"
            cases.append(Case(f"{op.name} ({kind})", (op, codes_of[op.input], spec.lo, spec.hi), codes_of[op.output],
                              tensor_close(dtype=torch.int64),
                              hint="acc = conv(x, op.weight, zero padding) + op.bias, then round(acc * m0 / 2**shift) "
                                   "half to even per channel (profit_edu.packed.requantize), then clamp to lo..hi"))
        return cases

    return _check("run_folded_layer", fn, make, hidden, seed, time_limit_s)


def _rows(specs: Sequence[tuple[int, int, float]]) -> list[dict[str, float]]:
    return [{"bits": b, "file_bytes": s, "top1": t} for b, s, t in specs]


def _smallest_within(rows: list[dict[str, float]], max_drop: float) -> int:
    best = max(r["top1"] for r in rows)
    ok = [r for r in rows if r["top1"] >= best - max_drop]
    return int(min(ok, key=lambda r: r["file_bytes"])["bits"])


def check_smallest_within(fn: Callable[[list[dict[str, float]], float], int], *,
                          given: Sequence[tuple[list[dict[str, Any]], float]] = (), hidden: bool = False,
                          seed: int | None = None, time_limit_s: float | None = DEFAULT_TIME_LIMIT_S) -> Result:
    """``fn(rows, max_drop) -> bits``: the bit width of the smallest file whose top-1 is at most ``max_drop``
    points below the best top-1 of ``rows`` (dicts with "bits", "file_bytes", "top1").

    ``given`` adds cases ``(rows, max_drop)``, e.g. the notebook's measured rows.
    """

    def make(hidden: bool, gen: torch.Generator) -> list[Case]:
        table = _rows([(32, 3_000_000, 85.0), (8, 800_000, 84.9), (4, 430_000, 83.0), (3, 340_000, 78.5),
                       (2, 260_000, 40.0)])
        settings = [(table, 0.5), (table, 2.5), (table, 7.0), (table, 0.0), (table, 50.0), *given]
        if hidden:
            for _ in range(6):
                bits = [32, 8, 6, 5, 4, 3, 2]
                top1 = sorted((float(v) for v in torch.rand(len(bits), generator=gen) * 60 + 30), reverse=True)
                rows = _rows([(b, b * 100_000 + 17, t) for b, t in zip(bits, top1)])
                order = torch.randperm(len(rows), generator=gen).tolist()
                settings.append(([rows[i] for i in order], _uniform(gen, 0.0, 20.0)))
        return [Case(f"{len(rows)} rows, max_drop = {drop:.3g}", (rows, drop), _smallest_within(rows, drop),
                     equal(int), hint="keep the rows with top1 >= best top1 - max_drop, then take the smallest "
                                      "file_bytes among them; return its bits")
                for rows, drop in settings]

    return _check("smallest_within", fn, make, hidden, seed, time_limit_s)
