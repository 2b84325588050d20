"""Automatic checks of chapters 6 (PROFIT) and 7 (the full recipe) exercises.

They are part of :mod:`profit_edu.book.checks` (which imports them; a chapter calls ``checks.check_...``) and follow
its rules: each takes the student's function, compares it with a reference written from the definition on fixed
inputs, and returns ``True`` or raises ``AssertionError`` with a message that says what is wrong and where to look.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from ._compare import _as_tensor, _call, _close, _number

__all__ = ["check_ema_start_weight", "check_kd_grad", "check_paired_interval", "check_phase_list",
           "check_profit_frozen"]


# --------------------------------------------------------------------------------------------
# Chapter 6: PROFIT
# --------------------------------------------------------------------------------------------
def _ema(values: Sequence[float], ema: float, skip_above: float) -> float:
    m = 0.0
    for v in values:
        if not (math.isnan(v) or v > skip_above):
            m = ema * m + (1 - ema) * v
    return m


def _top(scores: Mapping[str, float], fraction: Fraction) -> list[str]:
    order = sorted(scores, key=lambda n: -scores[n])  # stable: ties keep model order
    return order[: math.floor(len(order) * fraction)]


def _raw_aiwq(layers: int, steps: int) -> dict[str, list[float]]:
    """Per-step AIWQ of a few layers: lognormal values, a missing first step (NaN), and outliers above 1 in two
    layers, which would lead the ranking if they were averaged in."""
    gen = torch.Generator().manual_seed(60)
    scale = torch.logspace(-4, -3, layers)[torch.randperm(layers, generator=gen)]
    trend = torch.linspace(-3, 3, layers)[torch.randperm(layers, generator=gen)]  # rising or falling over the steps
    raw = {}
    for i in range(layers):
        drift = trend[i] * torch.linspace(0, 1, steps)
        values = (scale[i] * torch.exp(drift + 0.3 * torch.randn(steps, generator=gen))).tolist()
        values[0] = math.nan  # the first step has no previous weights
        if i in (1, 4):
            values[steps // 2] = 5.0  # an outlier: skipped
        raw[f"features.{i}.conv"] = values
    return raw


def check_profit_frozen(fn: Callable[[dict[str, list[float]], Fraction, float, float], list[str]]) -> bool:
    """Check ``fn(raw, fraction, ema, skip_above) -> layers``: the layers a PROFIT fine-tune freezes.

    ``raw`` maps each layer (model order) to its per-step AIWQ values (NaN: no value that step). Each layer's score
    is the EMA ``M <- ema M + (1 - ema) v`` from M = 0, skipping values above ``skip_above``; the answer is the first
    ``floor(L * fraction)`` layers by descending M. Reference: the definition, as :class:`~profit_edu.aiwq.AIWQTracker`
    and :func:`~profit_edu.freezing.freeze_count` compute it.
    """
    raw = _raw_aiwq(10, 40)
    for fraction in (Fraction(1, 3), Fraction(2, 3), Fraction(0)):
        args = ({k: list(v) for k, v in raw.items()}, fraction, 0.9, 1.0)
        what = f"fn(raw, {fraction}, ema=0.9, skip_above=1.0)"
        got = _call(fn, *args, what=what)
        if not isinstance(got, (list, tuple)) or not all(isinstance(n, str) for n in got):
            raise AssertionError(f"{what} should return a list of layer names, got {type(got).__name__}")
        want = _top({n: _ema(v, 0.9, 1.0) for n, v in raw.items()}, fraction)
        if list(got) == want:
            continue
        if len(got) != len(want):
            raise AssertionError(f"{what} returned {len(got)} layers, expected floor(L * f) = {len(want)} of "
                                 f"L = {len(raw)}")
        kept_outliers = _top({n: _ema(v, 0.9, math.inf) for n, v in raw.items()}, fraction)
        means = _top({n: sum(x for x in v if not math.isnan(x)) for n, v in raw.items()}, fraction)
        hint = (" (skip the values above skip_above: an outlier must not decide the ranking)"
                if list(got) == kept_outliers else " (rank by the EMA with skips, most unstable first)"
                if list(got) != means else " (the EMA weighs recent steps more than a mean does: apply it in order)")
        raise AssertionError(f"{what} = {list(got)}, expected {want}{hint}")
    return True


def _paired_reference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float | None]:
    from .experiments import stats

    s = stats([x - y for x, y in zip(a, b)])
    return s["mean"], s["ci95"]


def check_paired_interval(fn: Callable[[list[float], list[float]], tuple[float, float | None]]) -> bool:
    """Check ``fn(a, b) -> (mean, half_width)``: the mean of the per-seed differences a[i] - b[i] and the half-width
    of its 95 % Student-t interval, ``t(0.975, n - 1) * s / sqrt(n)`` with the sample standard deviation s; None
    for one seed. Reference: :func:`profit_edu.book.experiments.stats` of the differences.
    """
    cases = [([82.1, 83.0, 82.4], [80.2, 80.9, 81.3]), ([78.0, 79.5], [70.0, 73.0]), ([81.0], [80.0]),
             ([70.1, 71.9, 70.8, 72.2, 71.0], [69.5, 71.2, 70.9, 71.0, 70.1])]
    for a, b in cases:
        what = f"fn({a}, {b})"
        got = _call(fn, list(a), list(b), what=what)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise AssertionError(f"{what} should return a pair (mean, half_width), got {got!r}")
        mean, half = _number(got[0], f"{what}[0]"), got[1]
        want_mean, want_half = _paired_reference(a, b)
        if not math.isclose(mean, want_mean, abs_tol=2e-3):
            raise AssertionError(f"{what}: mean difference {mean:.4g}, expected {want_mean:.4g}")
        if want_half is None:
            if half is not None:
                raise AssertionError(f"{what}: one seed gives no interval (no standard deviation): return None")
            continue
        half = _number(half, f"{what}[1]")
        if math.isclose(half, want_half, abs_tol=2e-3):
            continue
        n, diffs = len(a), [x - y for x, y in zip(a, b)]
        s = math.sqrt(sum((d - sum(diffs) / n) ** 2 for d in diffs) / (n - 1))
        unpaired = math.sqrt(_var(a) / n + _var(b) / n)
        hint = (" (Student's t with n - 1 degrees of freedom, not the normal 1.96)"
                if math.isclose(half, 1.96 * s / math.sqrt(n), abs_tol=2e-3) else
                " (pair the seeds: the spread of the differences, not of each variant)"
                if any(math.isclose(half, q * unpaired, rel_tol=1e-3) for q in (1.96, want_half * math.sqrt(n) / s))
                else " (the sample standard deviation divides by n - 1, and the half-width by sqrt(n))")
        raise AssertionError(f"{what}: half-width {half:.4g}, expected {want_half:.4g}{hint}")
    return True


def _var(x: Sequence[float]) -> float:
    m = sum(x) / len(x)
    return sum((v - m) ** 2 for v in x) / (len(x) - 1)


# --------------------------------------------------------------------------------------------
# Chapter 7: the full recipe
# --------------------------------------------------------------------------------------------
def _schedules() -> list[Any]:
    """The shipped recipes' schedules and two edits of them (no BN phases; PROFIT at two bit widths)."""
    from ..recipe import load_recipe

    shipped = [load_recipe(n).schedule for n in ("tiny", "quick", "cifar_w3a3", "mobilenet_v2_w4a4_imagenet")]
    edits = [dataclasses.replace(shipped[1], bn_stabilize=False, fp_epochs=2, warmup_epochs=1),
             dataclasses.replace(shipped[3], profit_bits=(5, 4), freeze_fractions=(Fraction(0), Fraction(1, 2)))]
    return shipped + edits


def check_phase_list(fn: Callable[[Any], list[tuple[str, int]]]) -> bool:
    """Check ``fn(schedule) -> [(name, epochs), ...]``: a :class:`~profit_edu.recipe.ScheduleSpec`'s phases in order.

    Reference: :func:`profit_edu.schedule.expand_phases` on the shipped recipes' schedules and two edits of them.
    """
    from ..recipe import load_recipe
    from ..schedule import expand_phases

    base = load_recipe("tiny")
    for schedule in _schedules():
        what = (f"fn(schedule with act_bits={list(schedule.act_bits)}, weight_bits={list(schedule.weight_bits)}, "
                f"profit_bits={list(schedule.profit_bits)}, bn_stabilize={schedule.bn_stabilize}, "
                f"fp_epochs={schedule.fp_epochs})")
        got = _call(fn, schedule, what=what)
        if not isinstance(got, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in got):
            raise AssertionError(f"{what} should return a list of (name, epochs) pairs, got {got!r:.200}")
        want = [(p.name, p.epochs) for p in expand_phases(dataclasses.replace(base, schedule=schedule))]
        got = [(str(n), e) for n, e in got]
        if got != want:
            first = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
            raise AssertionError(f"{what}: {len(got)} phases, expected {len(want)}; first difference at phase "
                                 f"{first}: got {got[first] if first < len(got) else 'nothing'}, expected "
                                 f"{want[first] if first < len(want) else 'nothing'}")
    return True


def check_kd_grad(fn: Callable[[Tensor, Tensor], Tensor]) -> bool:
    """Check ``fn(student_logits, teacher_logits) -> gradient``: d(kd_loss)/d(student_logits), derived by hand.

    kd_loss = -(1/N) sum_i sum_k p_t(k|x_i) log p_s(k|x_i) (temperature 1); its gradient is (p_s - p_t) / N.
    Reference: autograd through :func:`profit_edu.train.kd_loss`.
    """
    from ..train import kd_loss

    gen = torch.Generator().manual_seed(70)
    for n, k in ((4, 10), (1, 3)):
        s = torch.randn(n, k, generator=gen, dtype=torch.float64) * 2
        t = torch.randn(n, k, generator=gen, dtype=torch.float64) * 2
        leaf = s.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(kd_loss(leaf, t).double(), leaf)
        got = _as_tensor(_call(fn, s.clone(), t.clone(), what=f"fn(student ({n}, {k}), teacher ({n}, {k}))"),
                         "fn")
        if tuple(got.shape) == tuple(want.shape) and n > 1 and torch.allclose(got.double(), want * n, atol=1e-9):
            raise AssertionError("the loss is a mean over the batch: divide the gradient by N")
        if tuple(got.shape) == tuple(want.shape) and torch.allclose(got.double(), -want, atol=1e-9):
            raise AssertionError("the sign is flipped: the gradient is p_student - p_teacher (over N)")
        _close(got, want, f"d kd_loss / d student_logits (N={n}, K={k})", atol=1e-9, rtol=1e-6)
    return True


def check_ema_start_weight(fn: Callable[[int, float, bool], float]) -> bool:
    """Check ``fn(n, decay, warmup) -> weight``: how much of the starting state an EMA still holds after n updates.

    Each update e <- d_k e + (1 - d_k) x keeps a share d_k of e, so the start keeps prod_{k<n} d_k, with
    d_k = min(decay, (1 + k) / (10 + k)) with warm-up and d_k = decay without (:class:`profit_edu.ema.ModelEMA`).
    Reference: ModelEMA itself, on a one-number float64 model that starts at 1 and is 0 after.
    """
    from ..ema import ModelEMA

    for n, decay, warmup in ((0, 0.99, True), (1, 0.99, True), (300, 0.9997, False), (300, 0.9997, True),
                             (50, 0.9, True), (2000, 0.999, True)):
        what = f"fn({n}, {decay}, warmup={warmup})"
        got = _number(_call(fn, n, decay, warmup, what=what), what)
        model = torch.nn.Linear(1, 1, bias=False, dtype=torch.float64)
        model.weight.data.fill_(1.0)
        ema = ModelEMA(model, decay, warmup=warmup)
        model.weight.data.fill_(0.0)  # every later state is 0: what the EMA holds is the start's share
        for _ in range(n):
            ema.update(model)
        want = float(ema.module.weight)
        if math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-12):
            continue
        hint = ""
        if warmup and math.isclose(got, decay**n, rel_tol=1e-4):
            hint = " (with warm-up the decay of update k is min(decay, (1 + k) / (10 + k)), k from 0)"
        elif math.isclose(got, 1 - want, rel_tol=1e-4):
            hint = " (that is the share of the updates; the start keeps the product of the decays)"
        raise AssertionError(f"{what} = {got:.6g}, expected {want:.6g}{hint}")
    return True
