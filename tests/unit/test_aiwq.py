"""Tests of profit_edu.aiwq: the Gaussian-KL formula, the per-layer metric, the hook-based tracker, diagnostics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch import nn

from profit_edu import models, quantize_model, set_bits
from profit_edu.aiwq import (
    AIWQTracker,
    _layer_output,
    aiwq_from_outputs,
    channel_stats,
    gaussian_kl,
    layer_aiwq,
    layer_kinds,
    tracked_layers,
)
from profit_edu.layers import QConv2d


def tiny_net(weight_bits: int | None = 4, act_bits: int | None = 4) -> nn.Module:
    """stem conv -> h-swish -> depthwise conv (padded with -3/8 once quantized) -> pointwise -> linear."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    )
    return quantize_model(net, weight_bits, act_bits)


def sgd_steps(net: nn.Module, batches: list[torch.Tensor], lr: float = 0.5, capture: dict | None = None) -> None:
    """One SGD step per batch; optionally record each conv's input and quantized weight at every step."""
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    handles = []
    if capture is not None:
        for name, m in tracked_layers(net, include_linear=True):
            def hook(mod, inputs, output, name=name):
                capture.setdefault(name, []).append((inputs[0].detach().clone(),
                                                     mod.quantized_weight().detach().clone()))
            handles.append(m.register_forward_hook(hook))
    gen = torch.Generator().manual_seed(1)
    for x in batches:
        opt.zero_grad()
        target = torch.randint(0, 4, (x.shape[0],), generator=gen)
        F.cross_entropy(net(x), target).backward()
        opt.step()
    for h in handles:
        h.remove()


def batches(n: int, size: int = 8) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(6, 3, size, size, generator=gen) for _ in range(n)]


# --------------------------------------------------------------------------------------------
# The formula
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mu_new, s_new, mu_old, s_old", [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.7),
                                                          (3.0, 0.3, 2.9, 0.35), (-2.0, 5.0, 1.0, 1.0)])
def test_gaussian_kl_equals_numerical_integral(mu_new, s_new, mu_old, s_old):
    p, q = stats.norm(mu_new, s_new), stats.norm(mu_old, s_old)
    lo, hi = mu_new - 12 * s_new, mu_new + 12 * s_new
    expected, _ = integrate.quad(lambda t: p.pdf(t) * (p.logpdf(t) - q.logpdf(t)), lo, hi, limit=200)
    got = gaussian_kl(*(torch.tensor(v, dtype=torch.float64) for v in (mu_new, s_new**2, mu_old, s_old**2)))
    assert float(got) == pytest.approx(expected, rel=1e-6, abs=1e-10)


def test_gaussian_kl_is_new_relative_to_old():
    # KL is asymmetric: N(0, 4) vs N(0, 1) differs by direction; AIWQ uses KL(new || old).
    new_wide = gaussian_kl(torch.tensor(0.0), torch.tensor(4.0), torch.tensor(0.0), torch.tensor(1.0))
    expected = math.log(1 / 2) + 4 / 2 - 0.5
    assert float(new_wide) == pytest.approx(expected)


def test_channel_stats_matches_numpy_unbiased():
    y = torch.randn(5, 4, 3, 7, dtype=torch.float64) * 3 + 2
    mean, var = channel_stats(y)
    arr = y.numpy()
    np.testing.assert_allclose(mean.numpy(), arr.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), arr.var(axis=(0, 2, 3), ddof=1), rtol=1e-10)


def test_channel_stats_is_accurate_for_large_means_and_exact_for_constant_channels():
    y = torch.randn(64, 3, 8, 8) * 0.01 + 1000.0  # float32, mean / std = 1e5
    y[:, 1] = 0.1  # a constant channel (not exactly representable)
    _, var = channel_stats(y)
    ref = y.double().numpy()
    np.testing.assert_allclose(var.numpy()[[0, 2]], ref.var(axis=(0, 2, 3), ddof=1)[[0, 2]], rtol=1e-5)
    assert var[1].item() == 0.0


def test_channel_stats_works_for_linear_outputs_and_rejects_bad_shapes():
    y = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 10.0]])
    mean, var = channel_stats(y)
    assert mean.tolist() == [3.0, 6.0] and var.tolist() == [4.0, 16.0]
    with pytest.raises(ValueError, match="batch and a channel"):
        channel_stats(torch.ones(3))
    with pytest.raises(ValueError, match=">= 2 values"):
        channel_stats(torch.ones(1, 3))


def _exact_gaussian_sample(mean: float, std: float, n: int, gen: torch.Generator) -> torch.Tensor:
    z = torch.randn(n, generator=gen, dtype=torch.float64)
    z = (z - z.mean()) / z.std()  # sample mean 0, unbiased sample std 1, exactly (to rounding)
    return mean + std * z


def test_aiwq_equals_closed_form_on_synthetic_gaussians():
    gen = torch.Generator().manual_seed(3)
    params = [((0.0, 1.0), (0.1, 1.1)), ((2.0, 0.5), (2.0, 0.4)), ((-1.0, 3.0), (0.0, 2.0))]
    n, h, w = 16, 5, 5
    y_new = torch.empty(n, len(params), h, w, dtype=torch.float64)
    y_old = torch.empty_like(y_new)
    for j, ((mn, sn), (mo, so)) in enumerate(params):
        y_new[:, j] = _exact_gaussian_sample(mn, sn, n * h * w, gen).view(n, h, w)
        y_old[:, j] = _exact_gaussian_sample(mo, so, n * h * w, gen).view(n, h, w)
    expected = np.mean([math.log(so / sn) + (sn**2 + (mn - mo) ** 2) / (2 * so**2) - 0.5
                        for (mn, sn), (mo, so) in params])
    assert float(aiwq_from_outputs(y_new, y_old)) == pytest.approx(expected, rel=1e-9)


def test_aiwq_drops_zero_variance_channels():
    y_new = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    y_old = y_new * 1.1 + 0.2
    only_first = float(aiwq_from_outputs(y_new[:, :1], y_old[:, :1]))
    y_new[:, 1] = 0.0  # dead in the new output
    y_old[:, 2] = 7.0  # constant in the old output
    assert float(aiwq_from_outputs(y_new, y_old)) == pytest.approx(only_first, rel=1e-12)
    y_new[:, 0] = 0.0
    assert math.isnan(float(aiwq_from_outputs(y_new, y_old)))  # no channel left: no value


# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------
def _numpy_aiwq(y_new: torch.Tensor, y_old: torch.Tensor) -> float:
    a, b = y_new.detach().double().numpy(), y_old.detach().double().numpy()
    mn, mo = a.mean(axis=(0, 2, 3)), b.mean(axis=(0, 2, 3))
    sn, so = a.std(axis=(0, 2, 3), ddof=1), b.std(axis=(0, 2, 3), ddof=1)
    keep = (sn > 0) & (so > 0)
    kl = np.log(so[keep] / sn[keep]) + (sn[keep] ** 2 + (mn[keep] - mo[keep]) ** 2) / (2 * so[keep] ** 2) - 0.5
    return float(kl.mean())


@pytest.mark.parametrize("stride, dilation, groups", [(1, 1, 1), (2, 1, 1), (1, 2, 4), (2, 1, 8)])
def test_layer_aiwq_matches_numpy_with_the_layers_geometry(stride, dilation, groups):
    conv = nn.Conv2d(8, 8, 3, stride=stride, padding=2, dilation=dilation, groups=groups, bias=True)
    x = torch.randn(4, 8, 9, 9)
    w_new = conv.weight.detach()
    w_old = w_new + 0.05 * torch.randn_like(w_new)
    expected = _numpy_aiwq(conv(x).detach(), F.conv2d(x, w_old, conv.bias, stride, 2, dilation, groups))
    assert layer_aiwq(conv, x, w_old, w_new) == pytest.approx(expected, rel=1e-5)


def test_layer_aiwq_of_identical_weights_is_zero_and_checks_shapes():
    q = tiny_net()[0]
    x = torch.randn(2, 3, 6, 6)
    w = q.quantized_weight().detach()
    assert layer_aiwq(q, x, w, w) == 0.0
    with pytest.raises(ValueError, match="w_old_q must have the layer's weight shape"):
        layer_aiwq(q, x, w[:2], w)
    with pytest.raises(TypeError, match="Conv2d and Linear"):
        layer_aiwq(nn.ReLU(), x, w, w)


def test_layer_aiwq_for_linear_layers():
    lin = nn.Linear(5, 3)
    x = torch.randn(10, 5)
    w_old = lin.weight.detach() * 1.2
    expected = _numpy_aiwq(lin(x).detach()[:, :, None, None], F.linear(x, w_old, lin.bias)[:, :, None, None])
    assert layer_aiwq(lin, x, w_old, lin.weight.detach()) == pytest.approx(expected, rel=1e-5)


def _negative_padded_conv() -> QConv2d:
    net = tiny_net()
    net(torch.randn(4, 3, 6, 6))  # initialise the quantizers
    dw = net[3]
    assert isinstance(dw, QConv2d) and dw.pad_value == -0.375
    return dw


def test_negative_padding_layers_are_recomputed_with_their_own_padding():
    dw = _negative_padded_conv()
    x = torch.randn(3, 8, 5, 5)
    w = dw.quantized_weight().detach()
    by_hand = F.conv2d(F.pad(x, (1, 1, 1, 1), value=-0.375), w, None, 1, 0, 1, 8)
    torch.testing.assert_close(_layer_output(dw, x, w), by_hand)
    torch.testing.assert_close(_layer_output(dw, x, w), dw(x))
    assert layer_aiwq(dw, x, w, w) == 0.0


def test_reference_zero_padding_bug_differs_exactly_at_the_borders():
    dw = _negative_padded_conv()
    x = torch.randn(3, 8, 6, 6)
    w = dw.quantized_weight().detach()
    diff = (_layer_output(dw, x, w, aiwq_zero_pad=True) - _layer_output(dw, x, w)).abs().amax(dim=(0, 1))  # (6, 6)
    border = torch.ones(6, 6, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert bool((diff[border] > 1e-6).all()) and bool((diff[~border] == 0).all())
    # with the bug, even identical weights look unstable
    assert layer_aiwq(dw, x, w, w, aiwq_zero_pad=True) > 1e-4


# --------------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------------
def test_tracker_equals_direct_computation_on_a_fixed_model_and_batch():
    torch.manual_seed(0)
    net = tiny_net()
    reference = {}
    data = batches(3)
    twin = tiny_net()
    twin.load_state_dict(net.state_dict())
    tracker = AIWQTracker(net, include_linear=True, ema=0.9, skip_above=math.inf)
    sgd_steps(net, data)
    sgd_steps(twin, data, capture=reference)  # the same training, recorded by plain hooks
    assert tracker.step == 3
    for name, layer in tracked_layers(twin, include_linear=True):
        steps, values = tracker.raw(name)
        assert steps == [2, 3]
        direct = []
        for t in (1, 2):
            x, w_new = reference[name][t]
            w_old = reference[name][t - 1][1]
            direct.append(layer_aiwq(layer, x, w_old, w_new))
        np.testing.assert_allclose(values, direct, rtol=1e-4, atol=1e-9)
        assert tracker.values()[name] == pytest.approx(0.9 * 0.1 * direct[0] + 0.1 * direct[1], rel=1e-4, abs=1e-12)
    assert any(v > 0 for v in tracker.values().values())  # lr 0.5 flips codes


def test_tracker_aiwq_zero_pad_uses_zero_padding_for_the_old_output():
    net = tiny_net()
    data = batches(2)
    fixed = AIWQTracker(net, skip_above=math.inf)
    ref = AIWQTracker(net, skip_above=math.inf, aiwq_zero_pad=True)
    with torch.no_grad():  # no weight change: the fixed metric is exactly 0, the bug is not
        net(data[0])
        net(data[1])
    assert fixed.values()["3"] == 0.0 and ref.values()["3"] > 0.0
    assert ref.values()["0"] == 0.0  # zero-padded layers are unaffected


def test_ema_starts_at_zero_and_skips_outliers():
    net = tiny_net()
    tracker = AIWQTracker(net, ema=0.5, skip_above=1e-12, include_linear=True)  # every real value is an outlier
    sgd_steps(net, batches(4))
    values, counts = tracker.values(), tracker.counts()
    for name in tracker.layers:
        _, raw = tracker.raw(name)
        kept = [v for v in raw if v <= 1e-12]
        m = 0.0
        for v in kept:
            m = 0.5 * m + 0.5 * v
        assert counts[name] == len(kept)
        assert values[name] == pytest.approx(m, abs=1e-15)
    assert sum(counts.values()) < 3 * len(tracker.layers)  # something was skipped


def test_ema_follows_the_formula_when_nothing_is_skipped():
    net = tiny_net()
    tracker = AIWQTracker(net, ema=0.7, skip_above=math.inf)
    sgd_steps(net, batches(5))
    for name in tracker.layers:
        _, raw = tracker.raw(name)
        assert len(raw) == 4
        m = 0.0
        for v in raw:
            m = 0.7 * m + 0.3 * v
        assert tracker.values()[name] == pytest.approx(m, rel=1e-9, abs=1e-15)


def test_every_k_measures_one_step_every_k_steps():
    torch.manual_seed(0)
    net = tiny_net()
    twin = tiny_net()
    twin.load_state_dict(net.state_dict())
    data = batches(9)
    tracker = AIWQTracker(net, every=3, skip_above=math.inf)
    reference = {}
    sgd_steps(net, data)
    sgd_steps(twin, data, capture=reference)
    for name, layer in tracked_layers(twin):
        steps, values = tracker.raw(name)
        assert steps == [3, 6, 9]
        direct = [layer_aiwq(layer, reference[name][t - 1][0], reference[name][t - 2][1], reference[name][t - 1][1])
                  for t in steps]
        np.testing.assert_allclose(values, direct, rtol=1e-4, atol=1e-9)


def test_reset_epoch_makes_the_next_step_give_no_value_and_eval_is_ignored():
    net = tiny_net()
    tracker = AIWQTracker(net)
    data = batches(5)
    sgd_steps(net, data[:2])
    tracker.reset_epoch()
    net.eval()
    with torch.no_grad():
        net(data[2])  # evaluation forwards are not steps
    net.train()
    sgd_steps(net, data[2:])
    assert tracker.step == 5
    assert tracker.raw("0")[0] == [2, 4, 5]


def test_raw_history_is_bounded():
    net = tiny_net()
    tracker = AIWQTracker(net, raw_history=2, skip_above=math.inf)
    sgd_steps(net, batches(5))
    steps, values = tracker.raw("6")
    assert steps == [4, 5] and len(values) == 2
    assert tracker.counts()["6"] == 4
    none = AIWQTracker(tiny_net(), raw_history=0)
    assert none.raw("0") == ([], [])


def test_float_weights_are_copied_for_the_snapshot():
    net = tiny_net(weight_bits=None, act_bits=None)
    tracker = AIWQTracker(net, skip_above=math.inf)
    sgd_steps(net, batches(2), lr=0.1)
    assert tracker.values()["0"] > 0.0  # the snapshot did not alias the parameter the optimizer changed


def test_state_dict_round_trip_and_ranking():
    net = tiny_net()
    tracker = AIWQTracker(net, skip_above=math.inf)
    sgd_steps(net, batches(3))
    state = tracker.state_dict()
    ranking = tracker.ranking()
    assert [v for _, v in ranking] == sorted((v for _, v in ranking), reverse=True)
    assert {n for n, _ in ranking} == set(tracker.layers)
    other = AIWQTracker(tiny_net())
    other.load_state_dict(state)
    assert other.values() == tracker.values() and other.step == 3
    with pytest.raises(ValueError, match="other layers"):
        AIWQTracker(tiny_net(), include_linear=True).load_state_dict(state)


def test_remove_detaches_hooks_and_keeps_values():
    net = tiny_net()
    with AIWQTracker(net) as tracker:
        sgd_steps(net, batches(2))
    before = tracker.values()
    sgd_steps(net, batches(2))
    assert tracker.values() == before and tracker.step == 2


def test_tracker_arguments_are_checked():
    net = tiny_net()
    for kwargs, match in [({"ema": 1.0}, "ema"), ({"skip_above": 0}, "skip_above"), ({"every": 0}, "every"),
                          ({"raw_history": -1}, "raw_history")]:
        with pytest.raises(ValueError, match=match):
            AIWQTracker(net, **kwargs)
    with pytest.raises(ValueError, match="quantize_model"):
        AIWQTracker(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_tracked_layers_and_kinds_of_mobilenet_v2():
    net = quantize_model(models.mobilenet_v2(10, width_mult=0.25), 4, 4)
    assert len(tracked_layers(net)) == 52
    assert len(tracked_layers(net, include_linear=True)) == 53
    kinds = layer_kinds(net)
    counts = {k: list(kinds.values()).count(k) for k in set(kinds.values())}
    assert counts == {"stem": 1, "depthwise": 17, "pointwise": 33, "last": 1}


def test_squeeze_excitation_convs_count_as_linear_layers():
    net = quantize_model(models.mobilenet_v3_large(10, width_mult=0.35), 4, 4)
    convs = [n for n, m in net.named_modules() if isinstance(m, QConv2d)]
    tracked = [n for n, _ in tracked_layers(net)]
    assert all(".fc" not in n for n in tracked) and len(convs) > len(tracked)
    assert len(tracked) == 46  # the official count for MobileNet-v3-Large (notes D)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_tracker_on_gpu_matches_cpu():
    torch.manual_seed(0)
    cpu_net = tiny_net()
    gpu_net = tiny_net()
    gpu_net.load_state_dict(cpu_net.state_dict())
    gpu_net.cuda()
    a, b = AIWQTracker(cpu_net, skip_above=math.inf), AIWQTracker(gpu_net, skip_above=math.inf)
    data = batches(3)
    sgd_steps(cpu_net, data)
    sgd_steps(gpu_net, [x.cuda() for x in data])
    for name in a.layers:
        assert b.values()[name] == pytest.approx(a.values()[name], rel=1e-2, abs=1e-7)


def test_tracker_follows_set_bits():
    net = tiny_net(weight_bits=8)
    tracker = AIWQTracker(net, skip_above=math.inf)
    sgd_steps(net, batches(2), lr=0.05)
    eight = dict(tracker.values())
    set_bits(net, weight_bits=2)
    tracker.reset_epoch()
    sgd_steps(net, batches(3), lr=0.05)
    assert tracker.counts()["3"] == 3 and eight.keys() == tracker.values().keys()


# --------------------------------------------------------------------------------------------
# Figures (profit_edu.book.aiwq_plots)
# --------------------------------------------------------------------------------------------
def test_figures_draw_from_tracker_output():
    """Each AIWQ figure draws the tracker's own numbers: the ranking's bars and cut-offs, medians, raw series, EMA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from profit_edu.book.aiwq_plots import (
        KIND_COLORS,
        ema_with_skip,
        plot_aiwq_ranking,
        plot_aiwq_vs_bits,
        plot_raw_vs_ema,
    )

    net = tiny_net()
    tracker = AIWQTracker(net, skip_above=math.inf)
    sgd_steps(net, batches(4))
    kinds, values = layer_kinds(net), tracker.values()
    fig = plot_aiwq_ranking(values, kinds)
    ax = fig.axes[0]
    ranked = sorted(values, key=lambda n: -values[n])  # most unstable first, as PROFIT freezes
    assert [p.get_height() for p in ax.patches] == pytest.approx([values[n] for n in ranked])
    assert [t.get_text() for t in ax.get_xticklabels()] == ranked
    assert [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.patches] == [KIND_COLORS[kinds[n]] for n in ranked]
    assert [line.get_xdata()[0] for line in ax.lines] == [0.5, 1.5]  # after floor(3/3) = 1 and floor(6/3) = 2 bars

    eight = {k: v / 10 for k, v in values.items()}
    fig2 = plot_aiwq_vs_bits({4: values, 8: eight}, kinds)
    medians = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in fig2.axes[0].lines}
    assert set(medians) == {f"{kind} (median)" for kind in kinds.values()}
    for kind in set(kinds.values()):  # one median line per layer kind, through both bit widths
        layers = [n for n in values if kinds[n] == kind]
        xs, ys = medians[f"{kind} (median)"]
        assert xs == [4, 8]
        assert ys == pytest.approx([np.median([values[n] for n in layers]), np.median([eight[n] for n in layers])])

    steps, raw = tracker.raw("3")
    assert ema_with_skip(raw, ema=tracker.ema, skip_above=math.inf)[-1] == pytest.approx(values["3"])
    fig3 = plot_raw_vs_ema([*steps, steps[-1] + 1], [*raw, 2.0], ema=0.5, title="3")
    raw_line, ema_line = fig3.axes[0].lines
    assert list(raw_line.get_ydata()) == [*raw, 2.0]
    assert list(ema_line.get_ydata()) == pytest.approx(list(ema_with_skip([*raw, 2.0], ema=0.5)))
    assert fig3.axes[0].collections[0].get_offsets().tolist() == [[steps[-1] + 1, 2.0]]  # the skipped outlier only
    for f in (fig, fig2, fig3):
        plt.close(f)
    with pytest.raises(ValueError, match="no kind"):
        plot_aiwq_ranking({"x": 1.0}, {})
