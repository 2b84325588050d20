"""Automatic checks for the book's exercises and the assignments.

Each ``check_*`` function takes the student's function (or answer), compares it with an independent
reference on a few fixed inputs, and either returns ``True`` or raises ``AssertionError`` with a message
that says what went wrong and where to look. Autograders call them directly; notebooks wrap them in
:func:`report`, which prints the verdict instead of stopping the notebook.

The references are written here from their definitions (plain torch, or the library's own functions
where the exercise is to re-derive them), so a check never trusts the student's code to grade itself.

Chapters 6 and 7's checks live in :mod:`.recipe_checks` (this file holds the other chapters'); they are imported
here, so every chapter calls ``checks.check_...``.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import quant
from ._compare import _as_tensor, _call, _close, _number
from .recipe_checks import (
    check_ema_start_weight,
    check_kd_grad,
    check_paired_interval,
    check_phase_list,
    check_profit_frozen,
)

__all__ = [
    "REPORT_WIDTH",
    "check_border_fraction",
    "check_depthwise_macs",
    "check_duq_grad_a",
    "check_ema_start_weight",
    "check_flip_fraction",
    "check_fold_bn",
    "check_gather_shards",
    "check_gaussian_kl",
    "check_global_batch",
    "check_gpu_hours",
    "check_hswish",
    "check_kd_grad",
    "check_layer_aiwq",
    "check_ledger_lookup",
    "check_levels_per_channel",
    "check_lsq_step_init",
    "check_negative_padding_conv",
    "check_pack_codes",
    "check_pact_alpha_grad",
    "check_paired_interval",
    "check_phase_list",
    "check_profit_frozen",
    "check_quick_mode_rule",
    "check_requantize",
    "check_round_ste",
    "check_signed_levels",
    "check_storage_bytes",
    "check_uniform_quantizer",
    "report",
]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
#: Columns of a printed verdict: what a code cell's output box in the rendered book shows without scrolling.
REPORT_WIDTH = 76


def _say(text: str) -> None:
    print(textwrap.fill(text, width=REPORT_WIDTH, subsequent_indent="    "))


def report(check: Callable[..., bool], *args: Any, **kwargs: Any) -> None:
    """Run ``check(*args, **kwargs)`` and print the verdict instead of raising.

    A notebook cell can call this on an unfinished exercise without stopping the notebook. (Autograders
    call the ``check_*`` functions directly: they return True or raise ``AssertionError``.) The hint is
    wrapped to :data:`REPORT_WIDTH` columns, so that it reads in full on a book page.

    >>> report(check_signed_levels, lambda bits: 2**bits - 1)
    Correct: check_signed_levels passed.
    """
    name = getattr(check, "__name__", "check")
    try:
        check(*args, **kwargs)
    except AssertionError as err:
        _say(f"Not yet ({name}): {err}")
        return
    except NotImplementedError:
        _say(f"Not yet ({name}): the function still raises NotImplementedError; fill it in.")
        return
    print(f"Correct: {name} passed.")


# --------------------------------------------------------------------------------------------
# Chapter 0: the ledger
# --------------------------------------------------------------------------------------------
_EXAMPLE_LEDGER = [
    {"id": "ex-1", "model": "mobilenet_v2", "method": "duq", "weight_bits": 4, "act_bits": 4, "seed": 0,
     "metric": "top1", "value": 11.0, "command": "example one"},
    {"id": "ex-2", "model": "mobilenet_v2", "method": "pact", "weight_bits": 4, "act_bits": 4, "seed": 0,
     "metric": "top1", "value": 22.0, "command": "example two"},
    {"id": "ex-3", "model": "mobilenet_v2", "method": "duq", "weight_bits": 3, "act_bits": 3, "seed": 0,
     "metric": "top1", "value": 33.0, "command": "example three"},
    {"id": "ex-4", "model": "mobilenet_v1", "method": "duq", "weight_bits": 4, "act_bits": 4, "seed": 0,
     "metric": "top1", "value": 44.0, "command": "example four"},
]


def check_ledger_lookup(fn: Callable[[list[str], dict[str, Any]], tuple[float, str]]) -> bool:
    """Check ``fn(lines, query) -> (value, command)``: the one ledger line whose fields match ``query``.

    ``lines`` are JSON strings (one ledger line each); ``query`` maps field names to wanted values.
    The test lines are made up for the exercise (their values are labels, not results).
    """
    lines = [json.dumps(r) for r in _EXAMPLE_LEDGER]
    cases = [
        ({"method": "pact"}, (22.0, "example two")),
        ({"method": "duq", "weight_bits": 3}, (33.0, "example three")),
        ({"model": "mobilenet_v1"}, (44.0, "example four")),
    ]
    for query, (value, command) in cases:
        got = _call(fn, list(lines), dict(query), what=f"fn(lines, {query})")
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise AssertionError(f"fn(lines, {query}) should return (value, command), got {got!r}")
        if _number(got[0], "value") != value or got[1] != command:
            raise AssertionError(f"fn(lines, {query}) returned {tuple(got)!r}, expected {(value, command)!r}")
    return True


def check_quick_mode_rule(fn: Callable[[str | None, bool], bool]) -> bool:
    """Check ``fn(value, has_gpu) -> bool``: the book's quick-mode rule for ``PROFIT_EDU_QUICK=value``.

    "1" means quick, "0" means full, and unset (None) or empty means quick unless there is a GPU.
    """
    cases = [("1", False, True), ("1", True, True), ("0", False, False), ("0", True, False),
             (None, False, True), (None, True, False), ("", False, True), ("", True, False)]
    for value, gpu, want in cases:
        got = _call(fn, value, gpu, what=f"fn({value!r}, has_gpu={gpu})")
        if not isinstance(got, bool):
            raise AssertionError(f"fn({value!r}, has_gpu={gpu}) should return True or False, got {got!r}")
        if got != want:
            raise AssertionError(f"fn({value!r}, has_gpu={gpu}) = {got}, expected {want}")
    return True


# --------------------------------------------------------------------------------------------
# Chapter 1: bits, memory, MACs, depthwise layers
# --------------------------------------------------------------------------------------------
def check_storage_bytes(fn: Callable[[int, int], int]) -> bool:
    """Check ``fn(num_weights, bits) -> bytes``: packed storage, ``ceil(num_weights * bits / 8)``."""
    for n, b in [(1, 4), (8, 3), (3_504_872, 4), (3_504_872, 3), (10, 32), (7, 2), (0, 4)]:
        got = _number(_call(fn, n, b, what=f"fn({n}, {b})"), f"fn({n}, {b})")
        want = math.ceil(n * b / 8)
        if got != want:
            hint = " (round up: a partly used byte still has to be stored)" if got == n * b / 8 else ""
            raise AssertionError(f"fn({n}, {b}) = {got:g}, expected {want}{hint}")
    return True


def check_depthwise_macs(fn: Callable[[int, int, int, int, int], tuple[int, int]]) -> bool:
    """Check ``fn(c_in, c_out, h, w, k) -> (depthwise_macs, pointwise_macs)`` for a stride-1 'same' layer.

    Depthwise k x k over c_in channels: c_in * h * w * k * k. Pointwise 1x1 from c_in to c_out:
    c_in * c_out * h * w.
    """
    for c_in, c_out, h, w, k in [(32, 64, 112, 112, 3), (96, 24, 56, 56, 3), (960, 160, 7, 7, 5), (1, 1, 1, 1, 1)]:
        got = _call(fn, c_in, c_out, h, w, k, what=f"fn({c_in}, {c_out}, {h}, {w}, {k})")
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise AssertionError(f"fn should return a pair (depthwise, pointwise), got {got!r}")
        dw, pw = c_in * h * w * k * k, c_in * c_out * h * w
        got_dw, got_pw = _number(got[0], "depthwise MACs"), _number(got[1], "pointwise MACs")
        if got_dw != dw:
            raise AssertionError(
                f"depthwise MACs for c_in={c_in}, h={h}, w={w}, k={k}: got {got_dw:g}, expected {dw} "
                "(each output pixel of each channel needs k*k multiply-adds; c_out plays no part)"
            )
        if got_pw != pw:
            raise AssertionError(f"pointwise MACs for c_in={c_in}, c_out={c_out}, h={h}, w={w}: got {got_pw:g}, "
                                 f"expected {pw}")
    return True


def _levels_per_channel_reference(weight: Tensor, bits: int) -> Tensor:
    codes = quant.duq_codes(weight, weight.detach().abs().max(), bits, "signed")
    return torch.tensor([int(torch.unique(codes[i]).numel()) for i in range(codes.shape[0])])


def check_levels_per_channel(fn: Callable[[Tensor, int], Tensor]) -> bool:
    """Check ``fn(weight, bits) -> (C_out,) int tensor``: distinct signed levels each output channel uses.

    The grid is DuQ's per-tensor signed grid with clip ``a = max|W|`` over the whole tensor (so the largest
    weight of the layer maps to the top code), codes ``-(2**(bits-1)-1) .. 2**(bits-1)-1``.
    """
    gen = torch.Generator().manual_seed(1)
    scales = torch.logspace(-2, 0, 8).reshape(8, 1, 1, 1)
    weight = torch.randn(8, 1, 3, 3, generator=gen) * scales  # channels with very different ranges
    for bits in (2, 3, 4):
        got = _as_tensor(_call(fn, weight.clone(), bits, what=f"fn(weight, {bits})"), "fn")
        want = _levels_per_channel_reference(weight, bits)
        if tuple(got.shape) != tuple(want.shape):
            raise AssertionError(f"fn(weight, {bits}) should have one count per output channel, shape "
                                 f"{tuple(want.shape)}, got {tuple(got.shape)}")
        if not torch.equal(got.long(), want):
            raise AssertionError(
                f"fn(weight, {bits}) = {got.tolist()}, expected {want.tolist()}. Use one clip for the whole "
                "tensor (a = max|W|), round w / a * K with K = 2**(bits-1) - 1, and count distinct codes per channel."
            )
    return True


# --------------------------------------------------------------------------------------------
# Chapter 2: uniform quantization and the straight-through estimator
# --------------------------------------------------------------------------------------------
def check_uniform_quantizer(fn: Callable[[Tensor, int, float], Tensor]) -> bool:
    """Check ``fn(x, bits, clip) -> y``: unsigned uniform quantization with ``2**bits`` levels on [0, clip].

    Reference: ``y = round(clamp(x / clip, 0, 1) * K) / K * clip`` with ``K = 2**bits - 1``.
    Inputs avoid rounding ties, so any order of the same operations passes.
    """
    gen = torch.Generator().manual_seed(2)
    x = torch.cat([torch.linspace(-1.0, 3.0, 401) + 1e-4, torch.randn(200, generator=gen)])
    for bits, clip in [(2, 1.0), (3, 2.0), (4, 1.5), (8, 2.5)]:
        got = _as_tensor(_call(fn, x.clone(), bits, clip, what=f"fn(x, {bits}, {clip})"), "fn")
        k = 2**bits - 1
        want = torch.round(torch.clamp(x / clip, 0, 1) * k) / k * clip
        if got.shape == want.shape:
            if float(got.detach().max()) > clip + 1e-6 or float(got.detach().min()) < -1e-6:
                raise AssertionError(f"fn(x, {bits}, {clip}) leaves [0, {clip}]; clip before rounding.")
            levels = torch.unique(got.detach()).numel()
            if levels > k + 1:
                raise AssertionError(f"fn(x, {bits}, {clip}) takes {levels} distinct values; a {bits}-bit grid has "
                                     f"at most {k + 1} (K = 2**bits - 1 steps). Did you round?")
        _close(got, want, f"fn(x, bits={bits}, clip={clip})")
    return True


def check_round_ste(fn: Callable[[Tensor], Tensor]) -> bool:
    """Check ``fn(x)``: rounds in the forward pass and passes the gradient through unchanged (STE)."""
    x = torch.tensor([-1.7, -0.2, 0.3, 0.9, 2.6, 4.49], requires_grad=True)
    y = _as_tensor(_call(fn, x, what="fn(x)"), "fn")
    _close(y, torch.round(x.detach()), "forward pass of fn (should equal torch.round)")
    if not y.requires_grad:
        raise AssertionError("fn(x) is cut off from the graph (no gradient). Use x + (round(x) - x).detach().")
    (y * torch.arange(1.0, 7.0)).sum().backward()
    if x.grad is None:
        raise AssertionError("no gradient reached x")
    _close(x.grad, torch.arange(1.0, 7.0), "gradient of fn (STE: d round(x)/dx is taken as 1)")
    return True


def check_signed_levels(fn: Callable[[int], int]) -> bool:
    """Check ``fn(bits) -> int``: how many levels DuQ's symmetric signed grid has (codes -m..m, m = 2**(b-1)-1)."""
    for bits in range(quant.MIN_BITS, quant.MAX_BITS + 1):
        got = _number(_call(fn, bits, what=f"fn({bits})"), f"fn({bits})")
        lo, hi = quant.code_range(bits, "signed")
        want = hi - lo + 1
        if got != want:
            hint = " (the symmetric grid leaves code -2**(bits-1) unused)" if got == 2**bits else ""
            raise AssertionError(f"fn({bits}) = {got:g}, expected {want}{hint}")
    return True


# --------------------------------------------------------------------------------------------
# Chapter 3: learnable quantizers
# --------------------------------------------------------------------------------------------
def check_pact_alpha_grad(fn: Callable[[Tensor, float, int], Tensor]) -> bool:
    """Check ``fn(x, alpha, bits) -> dy/dalpha`` per element for unsigned PACT (against autograd)."""
    x = torch.linspace(-1.0, 3.0, 81) + 1e-3
    for alpha, bits in [(1.0, 2), (2.0, 4)]:
        a = torch.tensor(alpha, requires_grad=True)
        want = torch.stack([torch.autograd.grad(quant.pact(xi.reshape(1), a, bits).sum(), a)[0] for xi in x])
        got = _as_tensor(_call(fn, x.clone(), alpha, bits, what=f"fn(x, {alpha}, {bits})"), "fn")
        _close(got, want, f"dy/dalpha for PACT with alpha={alpha}, bits={bits} (1 at or above alpha, else 0)")
    return True


def check_duq_grad_a(fn: Callable[[Tensor, float, float, int], Tensor]) -> bool:
    """Check ``fn(x, a, c, bits) -> dy/da`` per element for unsigned DuQ (against autograd)."""
    x = torch.linspace(-0.5, 2.5, 61) + 1e-3
    for a_val, c_val, bits in [(1.0, 1.0, 2), (2.0, 0.5, 4), (1.5, 3.0, 3)]:
        a = torch.tensor(a_val, requires_grad=True)
        c = torch.tensor(c_val)
        want = torch.stack([torch.autograd.grad(quant.duq(xi.reshape(1), a, c, bits, "unsigned").sum(), a)[0]
                            for xi in x])
        got = _as_tensor(_call(fn, x.clone(), a_val, c_val, bits, what=f"fn(x, {a_val}, {c_val}, {bits})"), "fn")
        _close(got, want, f"dy/da for DuQ with a={a_val}, c={c_val}, bits={bits} (-c x / a^2 in range, 0 when clipped)",
               atol=1e-5)
    return True


def check_lsq_step_init(fn: Callable[[Tensor, int], float]) -> bool:
    """Check ``fn(x, bits) -> s``: LSQ's initial step for a signed tensor, ``2 * mean|x| / sqrt(Qp)``."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1000, generator=gen) * 0.1
    for bits in (2, 3, 4, 8):
        qp = 2 ** (bits - 1) - 1
        want = 2.0 * float(x.abs().mean()) / math.sqrt(qp)
        got = _number(_call(fn, x.clone(), bits, what=f"fn(x, {bits})"), f"fn(x, {bits})")
        if not math.isclose(got, want, rel_tol=1e-5):
            raise AssertionError(f"fn(x, {bits}) = {got:.6g}, expected {want:.6g} (Qp = 2**(bits-1) - 1 = {qp} for "
                                 "signed data)")
    return True


# --------------------------------------------------------------------------------------------
# Chapter 4: h-swish and negative padding
# --------------------------------------------------------------------------------------------
def check_hswish(fn: Callable[[Tensor], Tensor]) -> bool:
    """Check ``fn(x)``: h-swish, ``x * relu6(x + 3) / 6``, including its minimum -3/8 at x = -1.5."""
    x = torch.linspace(-6.0, 6.0, 241)
    got = _as_tensor(_call(fn, x.clone(), what="fn(x)"), "fn")
    _close(got, F.hardswish(x), "h-swish")
    got_min = float(_as_tensor(_call(fn, torch.tensor([-1.5]), what="fn(-1.5)"), "fn").reshape(-1)[0])
    if not math.isclose(got_min, -quant.HSWISH_OFFSET, abs_tol=1e-7):
        raise AssertionError(f"fn(-1.5) = {got_min}, expected -3/8 (h-swish's minimum)")
    return True


def check_negative_padding_conv(fn: Callable[[Tensor, Tensor, float], Tensor]) -> bool:
    """Check ``fn(codes, weight, step) -> out``: the integer route to a conv over -3/8-padded h-swish values.

    ``codes`` (N, C, H, W) int64 in 0..2**b-1 encode ``y = step * codes - 3/8``; ``weight`` (C, 1, k, k)
    float64 is a depthwise kernel with padding (k-1)//2. The answer must equal
    ``conv2d(pad(y, value=-3/8), weight)`` (within float64 rounding), computed from the integer codes with
    *zero* padding plus one correction per output channel.
    """
    gen = torch.Generator().manual_seed(4)
    for k, step in [(3, 0.0625), (5, 0.1)]:
        codes = torch.randint(0, 16, (2, 3, 7, 7), generator=gen)
        weight = torch.randn(3, 1, k, k, generator=gen, dtype=torch.float64)
        p = (k - 1) // 2
        y = step * codes.double() - quant.HSWISH_OFFSET
        want = F.conv2d(F.pad(y, (p, p, p, p), value=-quant.HSWISH_OFFSET), weight, groups=3)
        got = _as_tensor(_call(fn, codes.clone(), weight.clone(), step, what=f"fn(codes, weight k={k}, step={step})"),
                         "fn")
        if tuple(got.shape) == tuple(want.shape):
            zero_pad = F.conv2d(y, weight, padding=p, groups=3)
            if torch.allclose(got.double(), zero_pad) and not torch.allclose(zero_pad, want):
                raise AssertionError("fn matches the conv of real values with *zero* padding, which is wrong at the "
                                     "border: code 0 means -3/8, so subtract 3/8 * sum(w) at every pixel instead.")
        _close(got, want, f"negative-padding conv (k={k}, step={step})", atol=1e-9, rtol=1e-9)
    return True


def _border_fraction_reference(h: int, w: int, k: int) -> float:
    p = (k - 1) // 2
    interior = max(h - 2 * p, 0) * max(w - 2 * p, 0)
    return 1.0 - interior / (h * w)


def check_border_fraction(fn: Callable[[int, int, int], float]) -> bool:
    """Check ``fn(h, w, k) -> fraction``: output pixels of a stride-1 'same' k x k conv that read padding."""
    for h, w, k in [(7, 7, 3), (7, 7, 5), (14, 14, 3), (112, 112, 3), (3, 3, 5), (10, 4, 3), (8, 8, 1)]:
        got = _number(_call(fn, h, w, k, what=f"fn({h}, {w}, {k})"), f"fn({h}, {w}, {k})")
        want = _border_fraction_reference(h, w, k)
        if not math.isclose(got, want, abs_tol=1e-9):
            raise AssertionError(f"fn({h}, {w}, {k}) = {got:.6g}, expected {want:.6g}. A pixel reads padding when it "
                                 f"is within (k-1)//2 = {(k - 1) // 2} pixels of an edge.")
    return True


# --------------------------------------------------------------------------------------------
# Chapter 5: AIWQ, the instability
# --------------------------------------------------------------------------------------------
def check_gaussian_kl(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> bool:
    """Check ``fn(mean_new, var_new, mean_old, var_old) -> KL(N_new || N_old)`` elementwise (variances, not stds).

    Reference: ``torch.distributions.kl_divergence`` of two ``Normal`` distributions, an independent closed form.
    """
    from torch.distributions import Normal, kl_divergence

    gen = torch.Generator().manual_seed(5)
    mean_new, mean_old = torch.randn(7, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen,
                                                                                          dtype=torch.float64)
    var_new = torch.rand(7, generator=gen, dtype=torch.float64) * 2 + 0.1
    var_old = torch.rand(7, generator=gen, dtype=torch.float64) * 2 + 0.1
    args = (mean_new.clone(), var_new.clone(), mean_old.clone(), var_old.clone())
    got = _as_tensor(_call(fn, *args, what="fn(mean_new, var_new, mean_old, var_old)"), "fn")
    want = kl_divergence(Normal(mean_new, var_new.sqrt()), Normal(mean_old, var_old.sqrt()))
    if tuple(got.shape) == tuple(want.shape):
        reverse = kl_divergence(Normal(mean_old, var_old.sqrt()), Normal(mean_new, var_new.sqrt()))
        if torch.allclose(got.double(), reverse) and not torch.allclose(reverse, want):
            raise AssertionError("fn computes KL(old || new); AIWQ measures the new distribution against the old one: "
                                 "KL(new || old) = ln(s_old/s_new) + (s_new^2 + (m_new - m_old)^2)/(2 s_old^2) - 1/2")
    _close(got, want, "KL(N(mean_new, var_new) || N(mean_old, var_old))", atol=1e-9, rtol=1e-7)
    same = _as_tensor(_call(fn, mean_new, var_new, mean_new.clone(), var_new.clone(), what="fn(p, p)"), "fn")
    _close(same, torch.zeros_like(mean_new), "KL of a distribution from itself (should be 0)", atol=1e-9)
    return True


def _signed_codes(w: Tensor, a: float, bits: int) -> Tensor:
    k = 2 ** (bits - 1) - 1
    return torch.round(torch.clamp(w / a, -1.0, 1.0) * k)


def check_flip_fraction(fn: Callable[[Tensor, Tensor, float, int], float]) -> bool:
    """Check ``fn(w_before, w_after, a, bits) -> fraction``: the share of weights whose signed DuQ code changed.

    Codes on the symmetric grid with clip ``a``: ``round(clamp(w / a, -1, 1) * K)``, ``K = 2**(bits-1) - 1``.
    """
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(4000, generator=gen, dtype=torch.float64) * 0.1
    step = torch.randn(4000, generator=gen, dtype=torch.float64) * 0.004
    for bits in (2, 4, 8):
        a = 0.25
        want = float((_signed_codes(w, a, bits) != _signed_codes(w + step, a, bits)).double().mean())
        got = _number(_call(fn, w.clone(), (w + step).clone(), a, bits, what=f"fn(w, w + dw, {a}, {bits})"),
                      f"fn(w, w + dw, {a}, {bits})")
        if math.isclose(got, 1.0) and want < 0.5:
            raise AssertionError(f"fn(..., bits={bits}) = 1: compare the integer codes, not the float weights "
                                 "(every float weight moves, few codes do)")
        if not math.isclose(got, want, abs_tol=1e-9):
            wrong_k = float((torch.round(torch.clamp(w / a, -1, 1) * (2**bits - 1))
                             != torch.round(torch.clamp((w + step) / a, -1, 1) * (2**bits - 1))).double().mean())
            hint = " (a signed grid has K = 2**(bits-1) - 1 steps on each side)" if math.isclose(got, wrong_k) else ""
            raise AssertionError(f"fn(w, w + dw, a={a}, bits={bits}) = {got:.6g}, expected {want:.6g}{hint}")
    return True


def check_layer_aiwq(fn: Callable[[Tensor, Tensor], float]) -> bool:
    """Check ``fn(y_new, y_old) -> AIWQ``: the mean over channels of KL(N_new || N_old) per output channel.

    Each channel's Gaussian has the mean and the *unbiased* variance of its values over the batch and all pixels;
    channels where either variance is 0 are left out. Reference: :func:`profit_edu.aiwq.aiwq_from_outputs`.
    """
    from .. import aiwq

    gen = torch.Generator().manual_seed(7)
    y_old = torch.randn(6, 5, 4, 4, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 2.0, 5).view(1, 5, 1, 1)
    y_new = y_old * 1.1 + 0.2 * torch.randn(6, 5, 4, 4, generator=gen, dtype=torch.float64)
    cases = {"five live channels": (y_new, y_old)}
    dead_new = y_new.clone()
    dead_new[:, 3] = 0.25  # a dead channel: zero variance
    cases["channel 3 constant"] = (dead_new, y_old)
    for what, (a, b) in cases.items():
        want = float(aiwq.aiwq_from_outputs(a, b))
        got = _number(_call(fn, a.clone(), b.clone(), what=f"fn(y_new, y_old) ({what})"), f"fn ({what})")
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
            continue
        if math.isnan(got) or math.isinf(got):
            raise AssertionError(f"fn(y_new, y_old) ({what}) = {got}: leave out channels whose variance is 0")
        pooled = float(aiwq.aiwq_from_outputs(a.reshape(-1, 1), b.reshape(-1, 1)))
        hint = " (take one Gaussian per output channel, over dims 0, 2, 3, not one for the whole tensor)" \
            if math.isclose(got, pooled, rel_tol=1e-6) else " (variances: unbiased, over the batch and the pixels)"
        raise AssertionError(f"fn(y_new, y_old) ({what}) = {got:.6g}, expected {want:.6g}{hint}")
    return True


# --------------------------------------------------------------------------------------------
# Chapter 8: packed low-bit inference
# --------------------------------------------------------------------------------------------
def check_pack_codes(fn: Callable[[Tensor, int], Tensor]) -> bool:
    """Check ``fn(codes, bits) -> uint8 tensor``: codes packed least significant bit first, ceil(n * bits / 8) bytes.

    Code i occupies bits ``bits*i .. bits*i + bits - 1`` of the stream; byte j holds stream bits ``8j .. 8j + 7``
    (bit 0 is the byte's lowest bit). Reference: :func:`profit_edu.packed.pack`.
    """
    from ..packed import pack

    gen = torch.Generator().manual_seed(8)
    for bits, n in [(4, 6), (2, 9), (3, 8), (3, 11)]:
        codes = torch.randint(0, 2**bits, (n,), generator=gen)
        want = pack(codes, bits)
        got = _as_tensor(_call(fn, codes.clone(), bits, what=f"fn(codes, {bits}) with {n} codes"), "fn")
        if got.dtype != torch.uint8:
            raise AssertionError(f"fn(codes, {bits}) should return a uint8 tensor (bytes), got dtype {got.dtype}")
        if got.numel() != want.numel():
            raise AssertionError(f"fn(codes, {bits}) with {n} codes returned {got.numel()} bytes, expected "
                                 f"ceil({n} * {bits} / 8) = {want.numel()}")
        if not torch.equal(got.reshape(-1), want):
            raise AssertionError(f"fn(codes, {bits}) = {got.tolist()} for codes {codes.tolist()}, expected "
                                 f"{want.tolist()} (code 0 goes into the lowest bits of byte 0, code 1 right above it)")
    return True


def check_requantize(fn: Callable[[Tensor, int, int], Tensor]) -> bool:
    """Check ``fn(n, m0, shift) -> round(n * m0 / 2**shift)`` with ties to even, exactly, on int64 tensors.

    Reference: :func:`profit_edu.packed.requantize` (int64 arithmetic).
    """
    from ..packed import requantize

    n = torch.tensor([-7, -6, -5, -3, -2, -1, 0, 1, 2, 3, 5, 6, 7, 2**24 + 3, -(2**24) - 5])
    for m0, shift in [(2**30, 31), (2**30, 32), (1610612736, 33), (1288490189, 36)]:
        want = requantize(n, m0, shift)
        got = _as_tensor(_call(fn, n.clone(), m0, shift, what=f"fn(n, {m0}, {shift})"), "fn")
        if tuple(got.shape) != tuple(want.shape):
            raise AssertionError(f"fn(n, {m0}, {shift}): shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        if not torch.equal(got.to(torch.int64), want):
            i = int((got.to(torch.int64) != want).nonzero()[0])
            exact = float(n[i]) * m0 / 2**shift
            hint = " (a tie: round half to even, as torch.round does)" if exact % 1 == 0.5 else ""
            raise AssertionError(f"fn(n, {m0}, {shift}) at n = {int(n[i])} (n * M = {exact}): got {int(got[i])}, "
                                 f"expected {int(want[i])}{hint}")
    return True


def check_fold_bn(fn: Callable[..., tuple[Tensor, Tensor]]) -> bool:
    """Check ``fn(weight, bias, gamma, beta, mean, var, eps) -> (w, b)``: a conv equal to conv-then-BN (eval mode).

    Reference: ``w = weight * g``, ``b = g * (bias - mean) + beta`` with ``g = gamma / sqrt(var + eps)`` per output
    channel, checked on the outputs of a convolution in float64.
    """
    gen = torch.Generator().manual_seed(9)
    weight = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    gamma, beta = torch.randn(4, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    mean = torch.randn(4, generator=gen, dtype=torch.float64)
    var, eps = torch.rand(4, generator=gen, dtype=torch.float64) + 0.05, 1e-5
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    g = gamma / torch.sqrt(var + eps)
    want = F.conv2d(x, weight, bias) * g.view(1, -1, 1, 1) + (beta - mean * g).view(1, -1, 1, 1)
    args = (weight.clone(), bias.clone(), gamma.clone(), beta.clone(), mean.clone(), var.clone(), eps)
    got = _call(fn, *args, what="fn(weight, bias, gamma, beta, mean, var, eps)")
    if not isinstance(got, tuple | list) or len(got) != 2:
        raise AssertionError(f"fn should return a pair (folded_weight, folded_bias), got {type(got).__name__}")
    w, b = _as_tensor(got[0], "folded weight"), _as_tensor(got[1], "folded bias")
    if tuple(w.shape) != tuple(weight.shape) or tuple(b.shape) != (4,):
        raise AssertionError(f"folded shapes {tuple(w.shape)} and {tuple(b.shape)}, expected {tuple(weight.shape)} "
                             "and (4,): one scale and one bias per output channel")
    out = F.conv2d(x, w.double(), b.double())
    if torch.allclose(out, F.conv2d(x, weight * g.view(-1, 1, 1, 1), g * bias + beta), atol=1e-9) \
            and not torch.allclose(out, want, atol=1e-9):
        raise AssertionError("the folded bias forgets the running mean: b = g * (bias - mean) + beta")
    _close(out, want, "conv with the folded weight and bias vs BN(conv(x))", atol=1e-9, rtol=1e-9)
    return True


# --------------------------------------------------------------------------------------------
# Chapter 9: ImageNet on many processes
# --------------------------------------------------------------------------------------------
def check_gather_shards(fn: Callable[[list[Tensor]], Tensor]) -> bool:
    """Check ``fn(parts) -> batch``: the batches of W processes, dealt round-robin (sample i of process r is
    global sample i W + r), put back into one process's order. Reference: :func:`profit_edu.distributed.interleave`.
    """
    from ..distributed import interleave

    gen = torch.Generator().manual_seed(10)
    for world, shape in [(2, (3,)), (3, (2, 4)), (4, (2, 3, 5, 5))]:
        batch = torch.randn(world * shape[0], *shape[1:], generator=gen)
        parts = [batch[r::world].clone() for r in range(world)]
        got = _as_tensor(_call(fn, parts, what=f"fn(parts) with {world} processes"), "fn")
        want = interleave(parts)
        if tuple(got.shape) != tuple(want.shape):
            raise AssertionError(f"{world} processes of {shape[0]} samples: shape {tuple(got.shape)}, expected "
                                 f"{tuple(want.shape)}")
        if not torch.equal(got, want):
            raise AssertionError(f"{world} processes: the samples are in another order; process r's sample i is "
                                 "the global sample i * W + r")
    return True


def check_global_batch(fn: Callable[[int, int, float, int], tuple[int, float]]) -> bool:
    """Check ``fn(global_batch, world_size, base_lr, base_batch) -> (per_process_batch, lr)``: the global batch
    split evenly (ValueError when it does not split), the learning rate scaled linearly with the global batch."""
    for global_batch, world, base_lr, base in [(256, 8, 0.005, 256), (1024, 8, 0.005, 256), (96, 3, 0.1, 32)]:
        got = _call(fn, global_batch, world, base_lr, base, what=f"fn({global_batch}, {world}, {base_lr}, {base})")
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise AssertionError(f"fn should return (per_process_batch, lr), got {got!r}")
        local, lr = got
        if local != global_batch // world:
            raise AssertionError(f"fn({global_batch}, {world}, ...): {local} images per process, expected "
                                 f"{global_batch // world}")
        want = base_lr * global_batch / base
        if not math.isclose(_number(lr, "lr"), want, rel_tol=1e-9):
            raise AssertionError(f"fn({global_batch}, {world}, {base_lr}, {base}): lr {lr}, expected {want} "
                                 "(base_lr x global_batch / base_batch)")
    try:
        fn(256, 3, 0.005, 256)
    except ValueError:
        return True
    except Exception as err:  # the student's code may raise anything
        raise AssertionError(f"fn(256, 3, ...) raised {type(err).__name__}; raise ValueError instead") from err
    raise AssertionError("fn(256, 3, ...) should raise ValueError: 256 images do not split evenly over 3 processes")


def check_gpu_hours(fn: Callable[[int, int, float, float, float], float]) -> bool:
    """Check ``fn(epochs, images_per_epoch, student_gmacs, teacher_gmacs, tflops) -> GPU-hours``: 2 FLOPs a MAC,
    three passes of the student per training image (forward, two backward), one of the teacher, at ``tflops``
    TFLOP/s. Reference: :func:`profit_edu.reproduce.compute_estimate`'s formula."""
    for args in [(200, 1_281_167, 0.30, 7.8, 20.0), (10, 1000, 1.0, 0.0, 1.0), (3, 50_000, 0.5, 2.0, 5.0)]:
        epochs, images, student, teacher, tflops = args
        want = 2 * epochs * images * (3 * student + teacher) * 1e9 / (tflops * 1e12) / 3600
        got = _number(_call(fn, *args, what=f"fn{args}"), f"fn{args}")
        if not math.isclose(got, want, rel_tol=1e-6):
            hint = " (did you count the student three times?)" if math.isclose(
                got, want * (student + teacher) / (3 * student + teacher), rel_tol=1e-6) else ""
            raise AssertionError(f"fn{args} = {got:.6g} GPU-hours, expected {want:.6g}{hint}")
    return True
