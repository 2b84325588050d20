"""profit_edu.book.aiwq_explorer: BN re-estimation, the recorded numbers (against independent recomputations), the
frame's labels and legend, and the sliders built headless."""

from __future__ import annotations

import copy
import math

import matplotlib

matplotlib.use("Agg")

import ipywidgets
import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from profit_edu import aiwq, data, models
from profit_edu.book import aiwq_explorer as ax


@pytest.fixture(scope="module")
def setup():
    """A tiny MobileNet-v2 (float), 4 training batches of 8 synthetic images and 2 calibration batches."""
    torch.manual_seed(0)
    float_model = models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True)
    images = data.synthetic(64, seed=0)
    batches = [(x, y) for x, y in data.DeviceLoader(images, 8, train=True, seed=0)][:4]
    calibration = [x for x, _ in batches[:2]]
    return float_model, batches, calibration


@pytest.fixture(scope="module")
def run4(setup):
    float_model, batches, calibration = setup
    return ax.record_steps(ax.prepare(float_model, calibration, weight_bits=4), batches, lr=0.01)


# --------------------------------------------------------------------------------------------
# Preparing
# --------------------------------------------------------------------------------------------
def test_bn_after_pairs_every_mobilenet_v2_conv_with_its_batchnorm(setup):
    float_model, _, _ = setup
    pairs = ax.bn_after(float_model)
    assert pairs["features.0.0"] == "features.0.1"
    assert pairs["features.1.conv.0.0"] == "features.1.conv.0.1"  # depthwise
    assert pairs["features.1.conv.1"] == "features.1.conv.2"  # pointwise-linear
    convs = [n for n, m in float_model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(pairs) == sorted(convs)
    modules = dict(float_model.named_modules())
    assert all(modules[b].num_features == modules[c].out_channels for c, b in pairs.items())


def test_bn_after_skips_a_conv_without_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 1),
                        nn.BatchNorm2d(3))
    assert ax.bn_after(net) == {"1": "2"}  # "3" is followed by a BN of another width


def test_reestimate_bn_gives_the_average_of_the_batch_statistics():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3)).eval()
    xs = [torch.randn(6, 3, 7, 7), torch.randn(6, 3, 7, 7)]
    ys = [net[0](x).detach() for x in xs]
    ax.reestimate_bn(net, xs)
    bn = net[1]
    want_mean = torch.stack([y.mean((0, 2, 3)) for y in ys]).mean(0)
    want_var = torch.stack([y.var((0, 2, 3), unbiased=True) for y in ys]).mean(0)
    torch.testing.assert_close(bn.running_mean, want_mean)
    torch.testing.assert_close(bn.running_var, want_var)
    assert bn.momentum == 0.3 and not net.training  # restored
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(ValueError, match="at least one batch"):
        ax.reestimate_bn(net, [])


def test_prepare_leaves_the_float_model_alone_and_matches_bn_to_quantized_weights(setup):
    float_model, _, calibration = setup
    before = copy.deepcopy(float_model.state_dict())
    model = ax.prepare(float_model, calibration, weight_bits=3)
    assert all(torch.equal(before[k], v) for k, v in float_model.state_dict().items())
    conv = model.get_submodule("features.1.conv.0.0")
    assert conv.weight_quant.bits == 3
    probe = copy.deepcopy(model).train()  # the conv's outputs in the pass that re-estimated the statistics
    seen = []
    probe.get_submodule("features.1.conv.0.0").register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        for x in calibration:
            probe(x)
    want = torch.stack([y.mean((0, 2, 3)) for y in seen]).mean(0)
    torch.testing.assert_close(model.get_submodule("features.1.conv.0.1").running_mean, want)
    with pytest.raises(ValueError, match="calibration"):
        ax.prepare(float_model, [], weight_bits=4)
    with pytest.raises(ValueError, match="bits"):
        ax.prepare(float_model, calibration, weight_bits=9)


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------
def test_record_steps_shapes_and_missing_values(run4):
    S, L = run4.steps, len(run4.layers)
    assert S == 4 and L == 52 and run4.weight_bits == 4 and run4.act_bits is None
    for t in (run4.aiwq, run4.flips, run4.bn_drift):
        assert t.shape == (S, L) and t.dtype == torch.float64
    assert torch.isnan(run4.aiwq[0]).all() and torch.isnan(run4.flips[0]).all()  # step 1 has nothing to compare
    assert torch.isfinite(run4.aiwq[1:]).all() and (run4.aiwq[1:] >= 0).all()
    assert torch.isfinite(run4.bn_drift).all() and (run4.bn_drift >= 0).all()
    assert run4.batch_mean["features.0.0"].shape == (S, run4.running_mean["features.0.0"].shape[1])
    assert run4.label == "4-bit weights, lr 0.01" and run4.loss.shape == (S,)


def test_recorded_flips_equal_codes_compared_by_hand(setup):
    float_model, batches, calibration = setup
    start = ax.prepare(float_model, calibration, weight_bits=3)
    one = copy.deepcopy(start)
    ax.record_steps(one, batches[:1], lr=0.01)  # the weights after step 1
    run = ax.record_steps(copy.deepcopy(start), batches[:2], lr=0.01)
    name = "features.2.conv.1.0"
    w0, w1 = start.get_submodule(name), one.get_submodule(name)
    codes0 = w0.weight_quant.codes(w0.weight.detach())
    codes1 = w1.weight_quant.codes(w1.weight.detach())
    expected = (codes0 != codes1).double().mean().item()
    assert run.flips[1, run.index(name)].item() == pytest.approx(expected)


def test_recorded_aiwq_equals_layer_aiwq_on_the_same_input(setup):
    float_model, batches, calibration = setup
    start = ax.prepare(float_model, calibration, weight_bits=2)
    one = copy.deepcopy(start)
    ax.record_steps(one, batches[:1], lr=0.01)
    name = "features.3.conv.1.0"
    inputs = []
    after_one = copy.deepcopy(one)
    hook = one.get_submodule(name).register_forward_hook(lambda m, i, o: inputs.append(i[0].detach()))
    run = ax.record_steps(copy.deepcopy(start), batches[:2], lr=0.01)
    one.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # step 2's dropout, as record_steps draws it (the conv input does not depend on it)
        with torch.no_grad():
            one(batches[1][0])
    hook.remove()
    layer_old, layer_new = start.get_submodule(name), after_one.get_submodule(name)
    want = aiwq.layer_aiwq(layer_new, inputs[0], layer_old.quantized_weight().detach(),
                           layer_new.quantized_weight().detach())
    assert run.aiwq[1, run.index(name)].item() == pytest.approx(want, rel=1e-4)


def test_float_weights_have_no_flips_and_runs_repeat_exactly(setup):
    float_model, batches, calibration = setup
    a = ax.record_steps(ax.prepare(float_model, calibration, weight_bits=None), batches, lr=0.01)
    b = ax.record_steps(ax.prepare(float_model, calibration, weight_bits=None), batches, lr=0.01)
    assert a.weight_bits is None and torch.isnan(a.flips).all()
    assert torch.equal(a.aiwq.nan_to_num(-1), b.aiwq.nan_to_num(-1)) and torch.equal(a.loss, b.loss)


def test_fewer_bits_move_the_outputs_more(setup, run4):
    float_model, batches, calibration = setup
    run2 = ax.record_steps(ax.prepare(float_model, calibration, weight_bits=2), batches, lr=0.01)
    run8 = ax.record_steps(ax.prepare(float_model, calibration, weight_bits=8), batches, lr=0.01)
    median = {b: float(r.aiwq[1:].nanmedian()) for b, r in ((2, run2), (4, run4), (8, run8))}
    assert median[2] > median[4] > median[8]


def test_summaries_and_errors(setup, run4):
    float_model, batches, calibration = setup
    means = run4.mean_over_steps("flips")
    assert set(means) == set(run4.layers) and all(0 <= v <= 1 for v in means.values())
    dw = run4.most_unstable("depthwise")
    assert run4.kinds[dw] == "depthwise"
    assert run4.mean_over_steps()[dw] == max(v for n, v in run4.mean_over_steps().items()
                                             if run4.kinds[n] == "depthwise")
    with pytest.raises(ValueError, match="no layer of kind"):
        run4.most_unstable("linear")
    with pytest.raises(KeyError, match="not a tracked layer"):
        run4.index("features.99")
    with pytest.raises(ValueError, match="what must be"):
        run4.mean_over_steps("loss")
    model = ax.prepare(float_model, calibration, weight_bits=4)
    with pytest.raises(ValueError, match="at least one"):
        ax.record_steps(model, [], lr=0.01)
    with pytest.raises(ValueError, match="lr must be"):
        ax.record_steps(model, batches, lr=0.0)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
def test_frame_has_labelled_axes_and_an_outside_legend(run4):
    layer = run4.most_unstable("depthwise")
    fig = ax.draw_frame(run4, layer, 3, limits=ax.frame_limits([run4]))
    axes = fig.axes
    assert len(axes) == 3  # AIWQ of every layer, flips, BN
    assert all(a.get_xlabel() and a.get_ylabel() for a in axes)
    assert all(a.get_legend() is None for a in axes) and len(fig.legends) == 1  # one legend, outside the panels
    assert axes[0].get_yscale() == "log" and layer in axes[1].get_title()
    plt.close(fig)
    text = ax.describe_frame(run4, layer, 3)
    assert "step 3" in text and "AIWQ" in text and "flipped" in text and "BN drift" in text
    assert "AIWQ -" in ax.describe_frame(run4, layer, 1)
    with pytest.raises(ValueError, match="step must be"):
        ax.draw_frame(run4, layer, 5)
    plt.close("all")


def test_frame_limits_cover_every_run(run4):
    lim = ax.frame_limits([run4])
    finite = run4.aiwq[torch.isfinite(run4.aiwq) & (run4.aiwq > 0)]
    assert lim["aiwq"][0] < float(finite.min()) and lim["aiwq"][1] > float(finite.max())
    assert lim["flips"][1] >= 100 * float(run4.flips.nan_to_num(0).max())


# --------------------------------------------------------------------------------------------
# The widget, built headless
# --------------------------------------------------------------------------------------------
def test_explorer_builds_and_its_sliders_drive_it(setup, run4):
    float_model, batches, calibration = setup
    ex = ax.AIWQExplorer(float_model, batches, calibration, bits=4, lr=0.01, learning_rates=(0.001, 0.01),
                         runs={(4, 0.01): run4})
    assert isinstance(ex.widget, ipywidgets.VBox)
    assert ex.run is run4 and len(ex.runs) == 1  # a recorded run is used as it is
    assert ex.step_slider.max == 4 and ex.layer_menu.value == run4.most_unstable("depthwise")
    ex.step_slider.value = 2  # what dragging the slider does: redraw only
    assert "step 2" in ex.label.value and len(ex.runs) == 1
    ex.layer_menu.value = "features.0.0"
    assert "features.0.0 (stem)" in ex.label.value
    ex.bits_slider.value = 2  # a new setting: trains a copy live
    assert ex.run.weight_bits == 2 and (2, 0.01) in ex.runs
    ex.bits_slider.value = 32  # "float"
    assert ex.run.weight_bits is None and "float weights" in ex.label.value
    ex.lr_slider.value = 0.001
    assert ex.run.lr == 0.001 and len(ex.runs) == 4
    assert ex.update(4, 0.01, "features.0.0", 3) is run4
    plt.close("all")


def test_explorer_rejects_settings_off_its_sliders(setup, run4):
    float_model, batches, calibration = setup
    with pytest.raises(ValueError, match="bits must be one of"):
        ax.AIWQExplorer(float_model, batches, calibration, bits=7, runs={(4, 0.01): run4})
    with pytest.raises(ValueError, match="lr must be one of"):
        ax.AIWQExplorer(float_model, batches, calibration, lr=0.5, runs={(4, 0.01): run4})
    with pytest.raises(ValueError, match="at least 2 training batches"):
        ax.AIWQExplorer(float_model, batches[:1], calibration, lr=0.01, runs={(4, 0.01): run4})
    assert math.isfinite(run4.loss.sum())
