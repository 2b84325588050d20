"""profit_edu.diagnostics: weight-code flips and BN statistics, step by step, against direct computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from profit_edu import quantize_model
from profit_edu.aiwq import channel_stats
from profit_edu.diagnostics import BNStatsTracker, FlipTracker

from .test_aiwq import batches, sgd_steps, tiny_net


def test_flip_tracker_counts_changed_codes():
    net = tiny_net()
    flips = FlipTracker(net)
    codes = []
    hook = net[6].register_forward_hook(lambda m, i, o: codes.append(m.weight_quant.codes(m.weight.detach())))
    sgd_steps(net, batches(3))
    hook.remove()
    steps, rates = flips.series("6")
    assert steps == [2, 3]
    expected = [(codes[t] != codes[t - 1]).float().mean().item() for t in (1, 2)]
    assert rates == pytest.approx(expected)
    assert set(flips.mean_rates()) == set(flips.layers)
    with pytest.raises(TypeError, match="DuQ"):
        FlipTracker(quantize_model(nn.Sequential(nn.Conv2d(3, 3, 1)), 4, None, method="lsq"))


def test_bn_stats_tracker_records_batch_and_running_statistics_before_the_update():
    net = tiny_net()
    bn = net[4]
    seen = []
    net[3].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    tracker = BNStatsTracker(net, layers=["4"], history=10)
    before = bn.running_mean.clone()
    sgd_steps(net, batches(2))
    s = tracker.series("4")
    assert s["steps"] == [1, 2] and s["batch_mean"].shape == (2, 8)
    mean, var = channel_stats(seen[1])
    torch.testing.assert_close(s["batch_mean"][1], mean)
    torch.testing.assert_close(s["batch_var"][1], var)
    torch.testing.assert_close(s["running_mean"][0], before)
    mism = tracker.mismatch("4")
    assert len(mism["mean_shift"]) == 2 and all(v > 0 for v in mism["var_ratio"])
    with pytest.raises(ValueError, match="not BatchNorm2d"):
        BNStatsTracker(net, layers=["3"])


def test_bn_mismatch_and_flip_means_follow_their_formulas():
    net = tiny_net(weight_bits=3)
    tracker, flips = BNStatsTracker(net, layers=["4"]), FlipTracker(net)
    sgd_steps(net, batches(3), lr=0.05)
    s = tracker.series("4")
    shift = ((s["batch_mean"] - s["running_mean"]).abs() / s["running_var"].sqrt()).mean(dim=1)
    ratio = (s["batch_var"] / s["running_var"]).mean(dim=1)
    mism = tracker.mismatch("4")
    assert mism["steps"] == [1, 2, 3]
    assert mism["mean_shift"] == pytest.approx(shift.tolist(), rel=1e-6)
    assert mism["var_ratio"] == pytest.approx(ratio.tolist(), rel=1e-6)
    _, rates = flips.series("6")
    assert flips.mean_rates()["6"] == pytest.approx(sum(rates) / len(rates))
    with pytest.raises(KeyError, match="not a watched BN layer"):
        tracker.series("3")
