"""profit_edu.cli.common: the one ranged-number argument type, the bit-width type, the model a run recorded."""

from __future__ import annotations

import argparse

import pytest

from profit_edu.cli.common import CLIError, Ranged, bit_width, builder_kwargs, model_from_args
from profit_edu.layers import QConv2d


@pytest.mark.parametrize(("kind", "bounds", "allowed"), [
    (int, {"low": 1}, "an integer >= 1"),
    (int, {"low": 0}, "an integer >= 0"),
    (int, {"low": 2, "high": 8}, "an integer in 2..8"),
    (float, {"low": 0, "low_open": True}, "a number > 0"),
    (float, {"low": 0, "high": 1, "high_open": True}, "a number in [0, 1)"),
    (float, {"high": 1}, "a number <= 1"),
])
def test_ranged_says_what_is_allowed(kind, bounds, allowed):
    assert Ranged(kind, **bounds).allowed == allowed


def test_ranged_accepts_the_range_and_nothing_else():
    positive = Ranged(float, low=0, low_open=True)
    assert positive("0.5") == 0.5 and isinstance(Ranged(int, low=1)("3"), int)
    for text in ("0", "-1", "nan", "inf", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"must be a number > 0, got '{text}'"):
            positive(text)
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer >= 1, got '1\.5'"):
        Ranged(int, low=1)("1.5")
    decay = Ranged(float, low=0, high=1, high_open=True, none_word=("none", "no EMA"))
    assert decay("None") is None and decay("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"in \[0, 1\), or 'none' for no EMA, got '1'"):
        decay("1")


def test_bit_width_is_checked_by_quant_check_bits():
    assert [bit_width(str(b)) for b in range(2, 9)] == list(range(2, 9))
    for text in ("1", "9", "4.0", "four", "True"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"integer bit width in 2\.\.8 \(omit the flag"):
            bit_width(text)


def test_model_from_args_builds_through_the_registry():
    args = {"model": "mobilenet_v3_small", "num_classes": 10, "width_mult": 0.25, "cifar_stem": True,
            "stem_stride": 2, "negative_padding": True, "weight_bits": 4, "act_bits": None}
    assert builder_kwargs(args) == {"num_classes": 10, "width_mult": 0.25, "cifar_stem": True, "stem_stride": 2,
                                    "negative_padding": True}
    model = model_from_args(args)
    assert {m.weight_quant.bits for m in model.modules() if isinstance(m, QConv2d)} == {4}
    with pytest.raises(CLIError, match=r"meta\.model_args\.model must be one of mobilenet_v1, .*got 'resnet50'"):
        model_from_args({**args, "model": "resnet50"})
