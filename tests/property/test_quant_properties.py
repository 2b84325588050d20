"""Properties of the DuQ grids that must hold for every mode, bit width, a and c (Hypothesis)."""

import pytest
import torch
from hypothesis import given, settings

from profit_edu.quant import code_range, duq, duq_codes, duq_levels, num_steps

from .strategies import bits, float_tensors, modes, positive

OFF = {"signed": 0.0, "unsigned": 0.0, "hswish": 0.375}


@settings(max_examples=200, deadline=None)
@given(x=float_tensors(), a=positive, c=positive, b=bits, mode=modes)
def test_outputs_lie_on_the_level_set(x, a, c, b, mode):
    y = duq(x, a, c, b, mode)
    levels = duq_levels(c, b, mode)
    nearest = (y[:, None] - levels[None, :]).abs().min(dim=1).values
    assert float(nearest.max()) <= 1e-12 * max(1.0, c)
    lo, hi = code_range(b, mode)
    k = duq_codes(x, a, b, mode)
    assert int(k.min()) >= lo and int(k.max()) <= hi


@settings(max_examples=200, deadline=None)
@given(x=float_tensors(min_size=2), a=positive, b=bits, mode=modes)
def test_idempotent_and_monotone(x, a, b, mode):
    x = torch.sort(x).values
    y = duq(x, a, a, b, mode)  # with c = a the output grid is a subset of the input grid
    torch.testing.assert_close(duq(y, a, a, b, mode), y, rtol=0, atol=1e-12 * max(1.0, a))
    assert bool((y[1:] >= y[:-1]).all())


@settings(max_examples=100, deadline=None)
@given(x=float_tensors(), a=positive, c=positive, b=bits)
def test_signed_grid_is_symmetric(x, a, c, b):
    assert torch.equal(duq(-x, a, c, b, "signed"), -duq(x, a, c, b, "signed"))


@settings(max_examples=100, deadline=None)
@given(a=positive, c=positive, b=bits, mode=modes)
def test_level_count_range_and_spacing(a, c, b, mode):
    levels = duq_levels(c, b, mode)
    expected = 2**b - 1 if mode == "signed" else 2**b
    assert len(levels) == expected
    assert float(levels[0]) == pytest.approx(-c if mode == "signed" else -OFF[mode])
    torch.testing.assert_close(levels[-1], torch.tensor(c - OFF[mode], dtype=torch.float64))
    torch.testing.assert_close(levels.diff(), torch.full((expected - 1,), c / num_steps(b, mode), dtype=torch.float64))
    # a dense sweep around the clip range (about 10 points per input step) reaches every level
    sweep = torch.linspace(-2 * a, 2 * a, 40 * 2**b, dtype=torch.float64) - OFF[mode]
    assert len(torch.unique(duq(sweep, a, c, b, mode))) == expected
