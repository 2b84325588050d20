"""profit_edu.book.assignment_checks: right answers (written here independently) pass the public and the hidden cases;
typical mistakes fail with their hint; every check reports a wrong answer, an exception, a wrong shape or type and a
time-out with the documented message."""

from __future__ import annotations

import math
import time
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import profit_edu as pe
from profit_edu.book import assignment_checks as ac
from profit_edu.book.grading import MESSAGES

OFF = 3 / 8


# --------------------------------------------------------------------------------------------
# Right answers, written without the checks' references
# --------------------------------------------------------------------------------------------
def _grid(bits, mode):
    """(K, lowest code, offset)."""
    if mode == "signed":
        k = 2 ** (bits - 1) - 1
        return k, -k, 0.0
    return 2**bits - 1, 0, OFF if mode == "hswish" else 0.0


def duq_levels(c, bits, mode):
    k, lowest, off = _grid(bits, mode)
    return torch.tensor([c * code / k - off for code in range(lowest, k + 1)], dtype=torch.float64)


def _ste_duq(x, a, c, bits, mode):
    """DuQ written with autograd's help: rounding straight through, the clip as clamp."""
    k, lowest, off = _grid(bits, mode)
    u = torch.clamp((x + off) / a, lowest / k, 1.0)
    v = u * k
    return c * (v + (torch.round(v) - v).detach()) / k - off


def duq_forward(x, a, c, bits, mode):
    k, lowest, off = _grid(bits, mode)
    codes = torch.clamp(torch.round((x + off) * k / a), lowest, k)  # round, then clamp: same for integer bounds
    return codes * c / k - off


def duq_grad_x(x, a, c, bits, mode, grad_y):
    x = x.clone().requires_grad_(True)
    (_ste_duq(x, a, c, bits, mode) * grad_y).sum().backward()
    return x.grad


def duq_grad_params(x, a_hat, c_hat, bits, mode, grad_y):
    a_hat = torch.tensor(a_hat, dtype=torch.float64, requires_grad=True)
    c_hat = torch.tensor(c_hat, dtype=torch.float64, requires_grad=True)
    (_ste_duq(x, F.softplus(a_hat), F.softplus(c_hat), bits, mode) * grad_y).sum().backward()
    return a_hat.grad.item(), c_hat.grad.item()


def negative_pad_conv(y, weight, stride, padding, groups):
    return F.conv2d(F.pad(y, [padding] * 4, value=-OFF), weight, stride=stride, groups=groups)


def integer_conv(codes, weight_codes, stride, padding, groups):
    return F.conv2d(codes.double(), weight_codes.double(), stride=stride, padding=padding, groups=groups).round().long()


def from_integer(acc, weight_codes, in_step, w_step):
    correction = OFF * w_step * weight_codes.sum(dim=(1, 2, 3)).double()
    return in_step * w_step * acc.double() - correction[None, :, None, None]


def layer_from_codes(layer, codes, in_step):
    q = layer.weight_quant
    k = 2 ** (q.bits - 1) - 1
    weight_codes = pe.quant.duq_codes(layer.weight.detach(), q.a.detach(), q.bits, "signed")
    acc = integer_conv(codes, weight_codes, layer.stride[0], layer.padding[0], layer.groups)
    return from_integer(acc, weight_codes, in_step, float(q.c.detach()) / k)


def layer_metric(conv, x, w_old_q, w_new_q):
    def stats(w):
        y = F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups).detach().numpy()
        per_channel = np.moveaxis(y, 1, 0).reshape(y.shape[1], -1)
        return per_channel.mean(axis=1), per_channel.var(axis=1, ddof=1)

    (m_new, v_new), (m_old, v_old) = stats(w_new_q), stats(w_old_q)
    keep = (v_new > 0) & (v_old > 0)
    m_new, v_new, m_old, v_old = m_new[keep], v_new[keep], m_old[keep], v_old[keep]
    kl = np.log(np.sqrt(v_old / v_new)) + (v_new + (m_new - m_old) ** 2) / (2 * v_old) - 0.5
    return float(kl.mean())


def rank_layers(layers, inputs, old_q, new_q):
    pairs = [(n, layer_metric(layers[n], inputs[n], old_q[n], new_q[n])) for n in layers]
    return sorted(pairs, key=lambda p: -p[1])


def choose_frozen(ranking, fraction):
    fraction = Fraction(fraction)
    return {name for name, _ in ranking[: len(ranking) * fraction.numerator // fraction.denominator]}


def predict_frozen_share(ranking, frozen):
    total = sum(v for _, v in ranking)
    return sum(v for n, v in ranking if n in set(frozen)) / total


def pack3(codes):
    stream = [(int(c) >> j) & 1 for c in codes for j in range(3)]
    stream += [0] * (-len(stream) % 8)
    return torch.tensor([sum(bit << j for j, bit in enumerate(stream[i:i + 8])) for i in range(0, len(stream), 8)],
                        dtype=torch.uint8)


def unpack3(buf, n):
    stream = [(int(b) >> j) & 1 for b in buf for j in range(8)]
    return torch.tensor([sum(stream[3 * i + j] << j for j in range(3)) for i in range(n)], dtype=torch.int64)


def _round_shift(n, m0, shift):
    """round(n * m0 / 2**shift), half to even: floor division and the remainder, in int64."""
    product, divisor = n * m0, torch.ones_like(shift) << shift
    quotient = torch.div(product, divisor, rounding_mode="floor")
    remainder, half = product - quotient * divisor, divisor // 2
    return quotient + ((remainder > half) | ((remainder == half) & (quotient % 2 == 1))).long()


def run_folded_layer(op, x_codes, lo, hi):
    acc = integer_conv(x_codes, op.weight, op.stride, op.padding, op.groups) + op.bias[None, :, None, None]
    return _round_shift(acc, op.m0[None, :, None, None], op.shift[None, :, None, None]).clamp(lo, hi)


def smallest_within(rows, max_drop):
    best = max(r["top1"] for r in rows)
    return sorted((r["file_bytes"], r["bits"]) for r in rows if best - r["top1"] <= max_drop)[0][1]


@pytest.fixture(scope="module")
def program_and_images():
    torch.manual_seed(0)
    model = pe.quantize_model(pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True),
                              weight_bits=4, act_bits=4)
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pe.calibrate(model, images)
    program = pe.packed.to_program(model.eval())
    return program, pe.packed.quantize_image(images[:4], program)


# (check, right answer, answer kind): kind says what a wrong shape or type means for the check
CHECKS = {
    "duq_levels": (ac.check_duq_levels, duq_levels, "tensor"),
    "duq_forward": (ac.check_duq_forward, duq_forward, "tensor"),
    "duq_grad_x": (ac.check_duq_grad_x, duq_grad_x, "tensor"),
    "duq_grad_params": (ac.check_duq_grad_params, duq_grad_params, "pair"),
    "negative_pad_conv": (ac.check_negative_pad_conv, negative_pad_conv, "tensor"),
    "integer_conv": (ac.check_integer_conv, integer_conv, "tensor"),
    "from_integer": (ac.check_from_integer, from_integer, "tensor"),
    "layer_from_codes": (ac.check_layer_from_codes, layer_from_codes, "tensor"),
    "layer_metric": (ac.check_layer_metric, layer_metric, "number"),
    "rank_layers": (ac.check_rank_layers, rank_layers, "ranking"),
    "choose_frozen": (ac.check_choose_frozen, choose_frozen, "names"),
    "predict_frozen_share": (ac.check_predict_frozen_share, predict_frozen_share, "number"),
    "pack3": (ac.check_pack3, pack3, "tensor"),
    "unpack3": (ac.check_unpack3, unpack3, "tensor"),
    "run_folded_layer": (ac.check_run_folded_layer, run_folded_layer, "tensor"),
    "smallest_within": (ac.check_smallest_within, smallest_within, "int"),
}


def _extra(name: str, request: pytest.FixtureRequest) -> dict:
    if name != "run_folded_layer":
        return {}
    program, image_codes = request.getfixturevalue("program_and_images")
    return {"program": program, "image_codes": image_codes}


def test_every_check_of_the_module_is_tested() -> None:
    assert sorted(f"check_{n}" for n in CHECKS) == sorted(ac.__all__)


@pytest.mark.parametrize("name", CHECKS)
@pytest.mark.parametrize("hidden", [False, True], ids=["public", "hidden"])
def test_a_right_answer_passes(name: str, hidden: bool, request: pytest.FixtureRequest) -> None:
    check, right, _ = CHECKS[name]
    result = check(right, hidden=hidden, **_extra(name, request))
    assert result.passed, str(result)
    assert result.name == name and result.hidden is hidden


@pytest.mark.parametrize("name", CHECKS)
def test_hidden_checks_have_more_cases_and_other_inputs(name: str, request: pytest.FixtureRequest) -> None:
    check, right, _ = CHECKS[name]
    public, hidden = check(right, **_extra(name, request)), check(right, hidden=True, **_extra(name, request))
    assert len(hidden.cases) > len(public.cases)


def _first_arguments(check, seed: int | None, hidden: bool) -> list:
    seen = []

    def record(*args):
        seen.append(args)
        raise ValueError("recorded")

    check(record, hidden=hidden, seed=seed)
    return seen


def test_the_seed_draws_other_inputs() -> None:
    default = _first_arguments(ac.check_duq_forward, None, True)
    again = _first_arguments(ac.check_duq_forward, None, True)
    other = _first_arguments(ac.check_duq_forward, 7, True)
    assert torch.equal(default[0][0], again[0][0])  # reproducible
    assert not torch.equal(default[0][0], other[0][0])  # another seed, other inputs


# --------------------------------------------------------------------------------------------
# The documented message for each kind of failure, for every check
# --------------------------------------------------------------------------------------------
def _perturbed(answer):
    """A wrong answer of the right type and shape."""
    if isinstance(answer, torch.Tensor):
        return answer + 1 if answer.dtype != torch.uint8 else answer ^ 1
    if isinstance(answer, tuple):
        return (answer[0] + 1.0, answer[1])
    if isinstance(answer, list) and answer and isinstance(answer[0], tuple):
        return [(n, v * 2 + 1.0) for n, v in answer]
    if isinstance(answer, set):
        return answer ^ {"layer0", "not a layer"}
    if isinstance(answer, int):
        return answer + 1
    return answer + 1.0


@pytest.mark.parametrize("name", CHECKS)
def test_a_wrong_value_is_reported_as_wrong(name: str, request: pytest.FixtureRequest) -> None:
    check, right, _ = CHECKS[name]
    result = check(lambda *args: _perturbed(right(*args)), **_extra(name, request))
    assert not result.passed
    assert set(result.outcomes) == {"wrong"}, str(result)
    assert all("wrong value: " in c.message for c in result.cases)  # "dL/da_hat: wrong value: ..." for pairs
    assert "expected" in result.cases[0].message and "got" in result.cases[0].message


@pytest.mark.parametrize("name", CHECKS)
def test_an_exception_is_reported_and_does_not_escape(name: str, request: pytest.FixtureRequest) -> None:
    check, _, _ = CHECKS[name]

    def crash(*args):
        return [][1]

    result = check(crash, **_extra(name, request))
    assert set(result.outcomes) == {"raised"}
    assert result.cases[0].message == MESSAGES["raised"].format(error="IndexError: list index out of range")


@pytest.mark.parametrize("name", CHECKS)
def test_a_wrong_shape_or_type_is_reported(name: str, request: pytest.FixtureRequest) -> None:
    check, _, kind = CHECKS[name]
    result = check(lambda *args: torch.zeros(1, 2, 3, 4, 5, dtype=torch.uint8), **_extra(name, request))
    expected = {"tensor": "shape", "number": "type", "pair": "type", "ranking": "type", "names": "type",
                "int": "type"}[kind]
    assert set(result.outcomes) == {expected}, str(result)
    if expected == "shape":
        assert result.cases[0].message.startswith("wrong shape: expected (")
        assert result.cases[0].message.endswith("got (1, 2, 3, 4, 5)")
    else:
        assert result.cases[0].message.startswith("wrong type: expected ")


@pytest.mark.parametrize("name", CHECKS)
def test_a_function_that_runs_too_long_times_out(name: str, request: pytest.FixtureRequest) -> None:
    check, _, _ = CHECKS[name]
    start = time.monotonic()
    result = check(lambda *args: time.sleep(30), time_limit_s=0.05, **_extra(name, request))
    assert time.monotonic() - start < 10
    assert set(result.outcomes) == {"timeout"}
    assert result.cases[0].message.startswith("no answer within 0.05 s")


# --------------------------------------------------------------------------------------------
# Typical mistakes get their hint
# --------------------------------------------------------------------------------------------
def _hints(result) -> str:
    return "\n".join(c.hint for c in result.failures())


def test_a_signed_grid_with_2_to_the_b_levels_gets_the_shape_and_the_code_range() -> None:
    def levels(c, bits, mode):
        return torch.linspace(-c, c, 2**bits, dtype=torch.float64) if mode == "signed" else duq_levels(c, bits, mode)

    result = ac.check_duq_levels(levels)
    assert "shape" in result.outcomes and "2**(bits-1) - 1" in _hints(result)


def test_zero_padding_is_told_to_pad_with_minus_three_eighths() -> None:
    result = ac.check_negative_pad_conv(lambda y, w, s, p, g: F.conv2d(y, w, stride=s, padding=p, groups=g))
    assert "wrong" in result.outcomes and "-3/8" in _hints(result)


def test_a_float_accumulator_is_a_dtype_error() -> None:
    result = ac.check_integer_conv(lambda *args: integer_conv(*args).double())
    assert set(result.outcomes) == {"dtype"}
    assert result.cases[0].message == "wrong dtype: expected torch.int64, got torch.float64"


def test_forgetting_the_correction_fails_from_integer() -> None:
    result = ac.check_from_integer(lambda acc, wc, s, sw: s * sw * acc.double())
    assert set(result.outcomes) == {"wrong"} and "3/8" in _hints(result)


def test_forgetting_the_sigmoid_fails_the_softplus_gradients() -> None:
    def no_chain_rule(x, a_hat, c_hat, bits, mode, grad_y):
        ga, gc = duq_grad_params(x, a_hat, c_hat, bits, mode, grad_y)
        return ga / torch.sigmoid(torch.tensor(a_hat)).item(), gc / torch.sigmoid(torch.tensor(c_hat)).item()

    result = ac.check_duq_grad_params(no_chain_rule)
    assert set(result.outcomes) == {"wrong"} and "sigmoid" in _hints(result)
    assert result.cases[0].message.startswith("dL/da_hat: wrong value")


def test_the_reverse_kl_fails_the_layer_metric() -> None:
    result = ac.check_layer_metric(lambda conv, x, old, new: layer_metric(conv, x, new, old))
    assert "wrong" in result.outcomes


def test_rounding_the_frozen_count_up_fails() -> None:
    result = ac.check_choose_frozen(lambda r, f: [n for n, _ in r[: math.ceil(len(r) * f)]])
    assert "wrong" in result.outcomes and "floor(L * fraction)" in _hints(result)


def test_an_unsorted_ranking_is_told_to_sort() -> None:
    result = ac.check_rank_layers(lambda *args: sorted(rank_layers(*args)))
    assert "wrong" in result.outcomes and "largest AIWQ down" in str(result)


def test_most_significant_bit_first_packing_fails() -> None:
    def msb_first(codes):
        stream = [(int(c) >> (2 - j)) & 1 for c in codes for j in range(3)]
        stream += [0] * (-len(stream) % 8)
        return torch.tensor([int("".join(map(str, stream[i:i + 8])), 2) for i in range(0, len(stream), 8)],
                            dtype=torch.uint8)

    result = ac.check_pack3(msb_first)
    assert "wrong" in result.outcomes and "bit 0 lowest" in _hints(result)


def test_skipping_the_clamp_fails_the_folded_layer(program_and_images) -> None:
    program, image_codes = program_and_images

    def no_clamp(op, x, lo, hi):
        return run_folded_layer(op, x, -(2**40), 2**40)

    result = ac.check_run_folded_layer(no_clamp, program=program, image_codes=image_codes)
    assert "wrong" in result.outcomes


def test_the_best_model_is_not_the_smallest_within_a_budget() -> None:
    result = ac.check_smallest_within(lambda rows, drop: max(rows, key=lambda r: r["top1"])["bits"])
    assert "wrong" in result.outcomes


def test_given_cases_are_added_to_the_public_ones() -> None:
    rows = [{"bits": 32, "file_bytes": 100, "top1": 90.0}, {"bits": 4, "file_bytes": 10, "top1": 88.0}]
    result = ac.check_smallest_within(smallest_within, given=[(rows, 1.0), (rows, 3.0)])
    assert result.passed and len(result.cases) == 7
