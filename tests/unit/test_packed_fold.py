"""BatchNorm folding and fixed-point requantization (profit_edu.packed.fold, .fixedpoint)."""

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from profit_edu.packed import fold_bn, quantize_multiplier, requantize
from profit_edu.packed.fixedpoint import (
    float64_is_exact,
    hswish_table,
    multiplier_value,
    quantize_multipliers,
    requantize_float,
    round_shift,
)
from profit_edu.packed.fold import bn_affine, fold_integer


def random_bn(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, eps=1e-3)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 2 + 0.1)
        bn.weight.copy_(torch.randn(channels, generator=g))  # some negative
        bn.bias.copy_(torch.randn(channels, generator=g))
    return bn.eval()


# ---------------------------------------------------------------- float folding
@pytest.mark.parametrize("groups, bias", [(1, False), (4, True), (8, False)])
def test_folded_conv_equals_conv_then_bn_in_float64(groups, bias):
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=groups, bias=bias).double()
    bn = random_bn(8).double()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(fold_bn(conv, bn)(x), bn(conv(x)), rtol=1e-12, atol=1e-12)


def test_bn_affine_checks():
    with pytest.raises(ValueError, match="running statistics"):
        bn_affine(nn.BatchNorm2d(3, track_running_stats=False), 3)
    with pytest.raises(ValueError, match="channels"):
        bn_affine(nn.BatchNorm2d(3), 4)


# ---------------------------------------------------------------- integer folding
def test_integer_folding_with_negative_padding_and_sign_flips():
    """y = BN(conv(x padded with -3/8)) equals A * (integer conv of codes, zero padded, + bias) up to A / 2."""
    g = torch.Generator().manual_seed(1)
    s_in, s_w, off = 0.11, 0.07, 0.375
    k = torch.randint(0, 16, (2, 6, 7, 7), generator=g)  # h-swish codes: x = s_in * k - 3/8
    q = torch.randint(-7, 8, (6, 1, 3, 3), generator=g)  # depthwise 4-bit weight codes
    bn = random_bn(6, seed=2)
    gam, h = bn_affine(bn, 6)
    assert bool((gam < 0).any())
    x = s_in * k.double() - off
    real = F.conv2d(F.pad(x, (1, 1, 1, 1), value=-off), s_w * q.double(), groups=6)
    real = gam.view(1, -1, 1, 1) * real + h.view(1, -1, 1, 1)
    pre_step = 0.05
    folded = fold_integer(q, s_w, s_in, off, pre_step, gam, h)
    assert not bool(folded.constant.any())
    acc = F.conv2d(k.double(), folded.weight.double(), padding=1, groups=6)  # integer zero padding
    a_unit = (multiplier_value(folded.m0, folded.shift) * pre_step).view(1, -1, 1, 1)
    rebuilt = a_unit * (acc + folded.bias.double().view(1, -1, 1, 1))
    assert float((rebuilt - real).abs().max()) <= 0.5 * float(a_unit.max()) * (1 + 1e-6)
    assert torch.equal(folded.weight.abs(), q.abs())  # negative gamma flips signs, codes stay in range


def test_constant_channels():
    q = torch.randint(-7, 8, (3, 4, 1, 1), generator=torch.Generator().manual_seed(0))
    gam = torch.tensor([1.0, 0.0, 1e-30], dtype=torch.float64)
    h = torch.tensor([0.2, 0.7, -0.4], dtype=torch.float64)
    folded = fold_integer(q, 0.1, 0.1, 0.0, 0.25, gam, h)
    assert folded.constant.tolist() == [False, True, True]
    assert folded.weight[1:].abs().sum() == 0
    assert folded.bias[1:].tolist() == [round(0.7 / 0.25), round(-0.4 / 0.25)]  # M = 1: output = bias
    assert folded.m0[1:].tolist() == [2**30, 2**30] and folded.shift[1:].tolist() == [30, 30]


# ---------------------------------------------------------------- multipliers and rounding
@pytest.mark.parametrize("m", [1e-9, 3.7e-5, 0.0123, 0.5, 0.75, 1.0, 1.5, 1000.0, 2.0**29])
def test_quantize_multiplier(m):
    m0, shift = quantize_multiplier(m)
    assert 2**30 <= m0 < 2**31 and 1 <= shift <= 62
    assert abs(math.ldexp(m0, -shift) - m) <= m * 2.0**-31
    assert quantize_multipliers(torch.tensor([m], dtype=torch.float64)) == (torch.tensor([m0]), torch.tensor([shift]))


def test_quantize_multiplier_errors():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite and > 0"):
            quantize_multiplier(bad)
    with pytest.raises(ValueError, match="shift outside"):
        quantize_multiplier(2.0**31)
    with pytest.raises(ValueError, match="shift outside"):
        quantize_multiplier(2.0**-40)
    with pytest.raises(TypeError):
        quantize_multiplier("0.5")


def exact_round_half_even(n: int, m0: int, shift: int) -> int:
    v = Fraction(n * m0, 2**shift)
    fl = math.floor(v)
    if v - fl > Fraction(1, 2) or (v - fl == Fraction(1, 2) and fl % 2):
        return fl + 1
    return fl


def test_requantize_rounds_half_to_even():
    n = torch.arange(-9, 10)
    got = requantize(n, 2**30, 31)  # n / 2
    assert got.tolist() == [exact_round_half_even(int(v), 2**30, 31) for v in n]
    assert requantize(torch.tensor([5, 7, -5, -7]), 2**30, 32).tolist() == [1, 2, -1, -2]  # 1.25 1.75
    assert round_shift(torch.tensor([2, 6, 10, -2, -6]), 2).tolist() == [0, 2, 2, 0, -2]


def test_requantize_matches_fraction_oracle_on_random_values():
    g = torch.Generator().manual_seed(3)
    n = torch.randint(-(2**31) + 1, 2**31 - 1, (2000,), generator=g)
    m0 = torch.randint(2**30, 2**31, (2000,), generator=g)
    shift = torch.randint(1, 63, (2000,), generator=g)
    got = requantize(n, m0, shift)
    want = [exact_round_half_even(int(a), int(b), int(c)) for a, b, c in zip(n, m0, shift)]
    assert got.tolist() == want


def test_float64_fast_path_is_exact_when_allowed():
    g = torch.Generator().manual_seed(4)
    for shift in (20, 33, 40, 45):
        m0 = torch.randint(2**30, 2**31, (64,), generator=g)
        n = torch.randint(-(2**24), 2**24, (64, 500), generator=g)
        bound = 2 ** (53 - shift) - 2
        assert float64_is_exact(torch.full((64,), shift), bound)
        ref = requantize(n, m0[:, None], shift).clamp(-bound, bound)
        fast = requantize_float(n.double(), multiplier_value(m0, torch.tensor(shift))[:, None]).clamp(-bound, bound)
        assert torch.equal(ref, fast.long())
    assert not float64_is_exact(torch.tensor([50]), 15)


def test_requantize_rejects_floats_and_huge_inputs():
    with pytest.raises(TypeError):
        requantize(torch.tensor([1.0]), 2**30, 31)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        requantize(torch.tensor([2**33]), 2**30, 31)


def test_hswish_table_against_the_formula():
    delta, f, lo, hi = 1 / 64, 2, 0, 15  # output step 1/16
    table = hswish_table(delta, f, 0.375, lo, hi)
    u = torch.arange(-400, 1200)
    x = u.double() * delta
    hs = x * torch.clamp(x + 3, 0, 6) / 6
    h = torch.round(hs / delta)
    want = round_shift((h + round(0.375 / delta)).long(), f).clamp(lo, hi)
    assert torch.equal(table(u), want)
    assert torch.equal(table.code_table(), table(torch.arange(table.u_min, table.u_sat + 1)))
    with pytest.raises(ValueError, match="table"):
        hswish_table(1e-9, 0, 0.375, 0, 15)


@pytest.mark.parametrize("kwargs, cifar", [({}, False), ({"cifar_stem": True}, True),
                                           ({"cifar_stem": True, "stem_stride": 2}, True)])
def test_cifar_networks_are_recognised_by_their_total_stride(kwargs, cifar):
    from profit_edu import models, quantize_model
    from profit_edu.packed.convert import _is_cifar_model

    for builder in (models.mobilenet_v1, models.mobilenet_v2, models.mobilenet_v3_small):
        assert _is_cifar_model(quantize_model(builder(10, **kwargs), 4, 4)) is cifar
