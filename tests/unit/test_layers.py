"""Quantized layers, negative padding and model surgery (profit_edu.layers)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import profit_edu as pe
from profit_edu.layers import KEEP, Conv2dPad, QAct, QConv2d, QLinear, QuantPoint, quantizers
from profit_edu.quant import HSWISH_OFFSET, DuQ, mse_clip


def dw_separable_cnn(num_classes: int = 10) -> nn.Sequential:
    """A small depthwise-separable CNN with every kind of quantization point."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16),
        QuantPoint("signed"), nn.Conv2d(16, 16, 1), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), QuantPoint("unsigned"), nn.Linear(16, num_classes),
    )


def randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


# ---------------------------------------------------------------- negative padding, exactly
def hswish_codes_and_values(shape, bits=4, step=1 / 16):
    """Integer codes k and the real values y = step * k - 3/8 of an h-swish DuQ output (dyadic: exact in fp64)."""
    k = torch.randint(0, 2**bits, shape, dtype=torch.int64)
    return k, step * k.double() - HSWISH_OFFSET


@pytest.mark.parametrize("groups", [1, 6])
@pytest.mark.parametrize("kernel", [3, 5])
def test_negative_padding_equals_integer_conv_exactly(groups, kernel):
    k, y = hswish_codes_and_values((2, 6, 9, 7))
    step, pad = 1 / 16, kernel // 2
    w = torch.randint(-7, 8, (6, 6 // groups, kernel, kernel)).double() / 8  # 4-bit weights, dyadic
    conv = Conv2dPad(6, 6, kernel, padding=pad, groups=groups, bias=False, pad_value=-HSWISH_OFFSET).double()
    conv.weight.data.copy_(w)
    real = conv(y)
    integer = F.conv2d(k.double(), w, padding=pad, groups=groups)  # integer codes, zero (code-0) padding
    correction = HSWISH_OFFSET * w.sum(dim=(1, 2, 3)).view(1, -1, 1, 1)
    assert torch.equal(real, step * integer - correction)

    # With ordinary zero padding the same identity fails exactly at border outputs, and only there.
    zero = F.conv2d(y, w, padding=pad, groups=groups)
    wrong = (zero != step * integer - correction).any(dim=(0, 1))
    border = torch.ones(9, 7, dtype=torch.bool)
    border[pad:-pad, pad:-pad] = False
    assert torch.equal(wrong, border)


def test_conv2d_pad_with_zero_is_plain_conv():
    conv = Conv2dPad(4, 5, 3, padding=1)
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    with pytest.raises(ValueError, match="numeric padding"):
        Conv2dPad(4, 4, 3, padding="same")


# ---------------------------------------------------------------- quantize_model
def test_bits_none_computes_exactly_the_float_model():
    torch.manual_seed(0)
    fp = randomize_bn(dw_separable_cnn())
    x = torch.randn(4, 3, 16, 16)
    expected = fp(x)
    q = pe.quantize_model(fp, weight_bits=None, act_bits=None)
    assert torch.equal(q(x), expected)


def test_quantize_model_replaces_layers_and_keeps_weights():
    fp = dw_separable_cnn()
    weights = {n: p for n, p in fp.named_parameters()}
    q = pe.quantize_model(fp, weight_bits=4, act_bits=4)
    kinds = [type(m).__name__ for m in q]
    assert kinds.count("QConv2d") == 5 and kinds.count("QLinear") == 1 and kinds.count("QAct") == 6
    for name, p in q.named_parameters():
        if name in weights:
            assert p is weights[name]  # the very same tensors: optimizers and EMAs stay valid
    modes = [m.quantizer.mode for m in q if isinstance(m, QAct)]
    assert modes == ["unsigned", "hswish", "unsigned", "signed", "hswish", "unsigned"]
    assert all(m.role == "weight" and m.mode == "signed" for _, m in quantizers(q, "weight"))
    with pytest.raises(ValueError, match="already quantized"):
        pe.quantize_model(q)


def test_activations_land_on_their_grids_and_weights_too():
    torch.manual_seed(1)
    q = pe.quantize_model(randomize_bn(dw_separable_cnn()), weight_bits=3, act_bits=4)
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n, m in q.named_modules()
             if isinstance(m, QAct)]
    q(torch.randn(8, 3, 16, 16))
    for h in hooks:
        h.remove()
    for name, y in outputs.items():
        quant = q.get_submodule(name).quantizer
        codes = (y.detach() + (HSWISH_OFFSET if quant.mode == "hswish" else 0.0)) / quant.step().detach()
        torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0, msg=f"{name} is off its grid")
        assert float(codes.min()) >= (-7 if quant.mode == "signed" else 0) - 1e-4
    for _, m in q.named_modules():
        if isinstance(m, (QConv2d, QLinear)):
            wq = m.quantized_weight().detach()
            assert len(torch.unique(wq)) <= 7  # 3-bit signed: codes -3..3


def test_negative_padding_follows_the_input_quantizer():
    q = pe.quantize_model(dw_separable_cnn(), weight_bits=4, act_bits=None)
    dw_after_hswish = q[6]
    assert isinstance(dw_after_hswish, QConv2d) and dw_after_hswish.input_from == "5"
    assert q[3].input_from == "2" and q[12].input_from == "11"
    assert dw_after_hswish.pad_value == 0.0  # float activations: plain zero padding, as the FP model
    pe.set_bits(q, act_bits=4)
    assert dw_after_hswish.pad_value == -HSWISH_OFFSET  # code 0 of the h-swish grid
    assert q[3].pad_value == 0.0  # after ReLU6, code 0 is real 0
    pe.set_bits(q, act_bits=None)
    assert dw_after_hswish.pad_value == 0.0


def test_pact_and_lsq_models_pad_with_zero():
    for method in ("pact", "lsq"):
        q = pe.quantize_model(dw_separable_cnn(), 4, 4, method=method)
        assert q[6].pad_value == 0.0
        assert q(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_set_bits_keeps_learned_a_and_c():
    q = pe.quantize_model(randomize_bn(dw_separable_cnn()), weight_bits=8, act_bits=8)
    q(torch.randn(4, 3, 16, 16))
    before = {n: (m.a.item(), m.c.item()) for n, m in quantizers(q)}
    pe.set_bits(q, weight_bits=4, act_bits=4)
    pe.set_bits(q, weight_bits=3)  # KEEP act bits
    after = {n: (m.a.item(), m.c.item()) for n, m in quantizers(q)}
    assert before == after
    assert {m.bits for _, m in quantizers(q, "weight")} == {3}
    assert {m.bits for _, m in quantizers(q, "act")} == {4}
    pe.set_bits(q, act_bits=None, filter_fn=lambda m, name: name == "2")
    assert q[2].quantizer.bits is None and q[5].quantizer.bits == 4
    assert repr(KEEP) == "KEEP"


@pytest.mark.parametrize("bad", [0, 1, 9, -1, 3.5, "4"])
def test_bad_bits_rejected_everywhere(bad):
    error = TypeError if not isinstance(bad, int) else ValueError
    with pytest.raises(error, match=r"2\.\.8"):
        pe.quantize_model(dw_separable_cnn(), weight_bits=bad)
    q = pe.quantize_model(dw_separable_cnn(), 4, 4)
    with pytest.raises(error, match=r"act_bits must be"):
        pe.set_bits(q, act_bits=bad)
    with pytest.raises(error, match=r"2\.\.8"):
        q[2].quantizer.bits = bad


def test_set_bits_needs_a_quantized_model():
    with pytest.raises(ValueError, match="quantize_model"):
        pe.set_bits(dw_separable_cnn(), weight_bits=4)


def test_filter_fn_skips_first_and_last_layers():
    q = pe.quantize_model(dw_separable_cnn(), 4, 4, filter_fn=lambda m, name: name not in {"0", "17"})
    assert type(q[0]) is nn.Conv2d and type(q[17]) is nn.Linear and isinstance(q[3], QConv2d)


def test_qact_init_and_relu6_subsumed():
    x = torch.randn(10000) * 4
    ref = QAct(nn.ReLU6(inplace=True), DuQ("unsigned", 4, init_style="reference"))
    ref(x)  # the official rule: 95th percentile of the positive values, capped at ReLU6's 6
    pos = x[x > 0]
    p95 = pos.kthvalue(int(0.95 * pos.numel()) + 1).values.clamp(max=6.0)
    assert ref.quantizer.a.item() == pytest.approx(p95.item(), rel=1e-3)
    act = QAct(nn.ReLU6(inplace=True), DuQ("unsigned", 4))
    y = act(x)  # fixed: the MSE-optimal clip of ReLU6's output
    assert act.quantizer.a.item() == pytest.approx(mse_clip(x.clamp(0, 6), act.quantizer._quantize_at, 6.0), rel=1e-4)
    assert float(y.detach().min()) == 0.0 and float(y.detach().max()) <= act.quantizer.c.item() + 1e-6
    assert act.act.inplace is False
    with pytest.raises(TypeError, match="supports ReLU"):
        QAct(nn.GELU(), DuQ("unsigned", 4))


def test_calibrate_runs_float_network_and_initialises():
    torch.manual_seed(2)
    q = pe.quantize_model(randomize_bn(dw_separable_cnn()), 4, 4)
    bn_before = {k: v.clone() for k, v in q.state_dict().items() if "running" in k}
    pe.calibrate(q.train(), [torch.randn(16, 3, 16, 16), (torch.randn(8, 3, 16, 16), torch.zeros(8))])
    assert all(m._ready for _, m in quantizers(q))
    assert {m.bits for _, m in quantizers(q, "act")} == {4}
    assert q.training  # the mode is put back ...
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in bn_before.items())  # ... and BN left alone
    pe.calibrate(q, torch.randn(16, 3, 16, 16), bn="batch")  # batch statistics, running ones untouched
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in bn_before.items()) and q.training
    assert all(m.track_running_stats for m in q.modules() if isinstance(m, nn.BatchNorm2d))
    pe.calibrate(q, torch.randn(16, 3, 16, 16), bn="update")  # the official code's one BN update
    assert not all(torch.equal(v, q.state_dict()[k]) for k, v in bn_before.items())
    with pytest.raises(ValueError, match="bn must be one of"):
        pe.calibrate(q, torch.randn(1, 3, 16, 16), bn="train")
    with pytest.raises(ValueError, match="no quantized layers"):
        pe.calibrate(dw_separable_cnn(), torch.randn(1, 3, 16, 16))


def test_calibrate_uses_every_batch():
    torch.manual_seed(4)
    net = randomize_bn(dw_separable_cnn())
    small, large = torch.randn(8, 3, 16, 16) * 0.1, torch.randn(8, 3, 16, 16) * 10
    one = pe.calibrate(pe.quantize_model(copy.deepcopy(net), None, 4), small)
    both = pe.calibrate(pe.quantize_model(copy.deepcopy(net), None, 4), [small, large])
    assert both[2].quantizer.a.item() > one[2].quantizer.a.item()


def test_calibration_batches_go_to_the_given_device():
    from profit_edu.layers import _as_batches

    loader = [(torch.randn(2, 3, 4, 4), torch.zeros(2)), (torch.empty(0, 3, 4, 4), torch.zeros(0))]
    (x,) = _as_batches(loader, device=torch.device("meta"))  # the empty batch is dropped, the other moved
    assert x.device.type == "meta" and x.shape == (2, 3, 4, 4)
    assert _as_batches(loader)[0].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_calibrate_moves_cpu_batches_to_a_cuda_model():
    torch.manual_seed(4)
    net = randomize_bn(dw_separable_cnn())
    batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]  # what a plain DataLoader yields: CPU tensors
    on_cpu = pe.calibrate(pe.quantize_model(copy.deepcopy(net), 4, 4), batches)
    on_gpu = pe.calibrate(pe.quantize_model(copy.deepcopy(net), 4, 4).cuda(), batches)
    for (name, a), b in zip(on_cpu.state_dict().items(), on_gpu.state_dict().values()):
        assert b.is_cuda, name
        torch.testing.assert_close(a, b.cpu(), rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("case, match", [
    ("empty", "no images"),
    ("inf batch", r"the input of 2 has \d+ NaN or inf"),
    ("nan weight", r"the weight of 3: .*NaN or inf"),
    ("no list", "no images"),
])
def test_calibrate_refuses_bad_data_and_names_the_layer(case, match):
    q = pe.quantize_model(randomize_bn(dw_separable_cnn()), 4, 4)
    data = {"empty": torch.empty(0, 3, 16, 16), "inf batch": torch.full((2, 3, 16, 16), math.inf),
            "nan weight": torch.randn(2, 3, 16, 16), "no list": []}[case]
    if case == "nan weight":
        q[3].weight.data[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=match):
        pe.calibrate(q, data)


def _trained_small_cnn():
    """dw_separable_cnn trained for 150 SGD steps on the synthetic task (BN statistics from training)."""
    from profit_edu.data import DeviceLoader, synthetic

    torch.manual_seed(0)
    net = dw_separable_cnn()
    loader = DeviceLoader(synthetic(1024, image_size=16, seed=0), 64, train=True, seed=0, crop_padding=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    for epoch in range(10):
        loader.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    test = next(iter(DeviceLoader(synthetic(512, image_size=16, seed=1), 512, train=False)))
    return net.eval(), loader, test


def test_w8a8_after_calibration_stays_close_to_float():
    """Stated tolerance: W8A8 within 3 points of float top-1 on this 8-channel toy model (whose activations
    reach 50 times their median), agreeing with float on >= 93 % of images, and closer to float than the official
    percentile rule (the real model: 85.07 % against 85.26 % float, ledger ``ptq/...``)."""
    net, loader, (x, y) = _trained_small_cnn()
    batches = [b for b, _ in loader][:4]
    with torch.no_grad():
        fp_pred = net(x).argmax(1)
        preds = {style: pe.calibrate(pe.quantize_model(copy.deepcopy(net), 8, 8, init_style=style), batches)
                 .eval()(x).argmax(1) for style in ("fixed", "reference")}
    fp_acc, q_acc = (fp_pred == y).float().mean().item(), (preds["fixed"] == y).float().mean().item()
    agree = {style: (p == fp_pred).float().mean().item() for style, p in preds.items()}
    assert fp_acc > 0.5  # the model learned something worth keeping
    assert abs(q_acc - fp_acc) <= 0.03 and agree["fixed"] >= 0.93
    assert agree["fixed"] > agree["reference"]


def test_quantized_model_trains_a_and_c():
    torch.manual_seed(3)
    q = pe.quantize_model(dw_separable_cnn(), 4, 4).train()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    F.cross_entropy(q(x), y).backward()
    grads = [m.a_hat.grad for _, m in quantizers(q)] + [m.c_hat.grad for _, m in quantizers(q)]
    assert all(g is not None and torch.isfinite(g) for g in grads)
    assert sum(float(g.abs()) > 0 for g in grads) >= len(grads) // 2


def test_qconv_to_float_round_trip():
    conv = Conv2dPad(4, 4, 3, padding=1, groups=4, pad_value=-0.375)
    q = QConv2d.from_float(conv, DuQ("signed", None, role="weight"))
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(q(x), conv(x))
    back = q.to_float()
    assert back.weight is conv.weight and back.pad_value == -0.375
    lin = nn.Linear(3, 2)
    assert QLinear.from_float(lin, DuQ("signed", None, role="weight")).to_float().weight is lin.weight


def test_untraceable_model_asks_for_explicit_map():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.Hardswish()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                x = self.act(x)
            return self.conv(x)

    with pytest.raises(TypeError, match="input_quantizers"):
        pe.quantize_model(Branchy(), 4, 4)
    q = pe.quantize_model(Branchy(), 4, 4, input_quantizers={"conv": "act"})
    assert q.conv.pad_value == -HSWISH_OFFSET


def test_calibrate_keep_learned_keeps_better_clips_and_replaces_worse_ones():
    torch.manual_seed(5)
    net = randomize_bn(dw_separable_cnn())
    x = torch.randn(16, 3, 16, 16)
    q = pe.calibrate(pe.quantize_model(net, 8, 8), x)
    best = {n: m.a.item() for n, m in quantizers(q)}
    pe.set_bits(q, weight_bits=4, act_bits=4)
    pe.calibrate(q, x, keep_learned=True)  # at 4 bits the 8-bit clips quantize worse: all are chosen again
    assert any(abs(m.a.item() - best[n]) > 1e-6 for n, m in quantizers(q))
    tuned = {n: m.a.item() for n, m in quantizers(q)}
    pe.calibrate(q, x, keep_learned=True)  # already the best clips: nothing moves
    assert {n: m.a.item() for n, m in quantizers(q)} == tuned
    with torch.no_grad():
        q[2].quantizer.a_hat.fill_(math.nan)  # a diverged clip is always replaced
    pe.calibrate(q, x, keep_learned=True)
    assert math.isfinite(q[2].quantizer.a.item())


@pytest.mark.parametrize("batch, match", [
    (torch.empty(0, 3, 16, 16), r"the activation quantizer 2, initialising from the first batch it saw: .*empty"),
    (torch.full((2, 3, 16, 16), math.inf), r"the activation quantizer 2, .*NaN or inf"),
])
def test_a_quantizer_initialising_on_its_first_batch_names_its_layer(batch, match):
    q = pe.quantize_model(randomize_bn(dw_separable_cnn()), None, 4)
    with pytest.raises(ValueError, match=match):
        q(batch)


def test_a_weight_quantizer_with_nan_weights_names_its_layer():
    q = pe.quantize_model(randomize_bn(dw_separable_cnn()), 4, None)
    q[3].weight.data[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"the weight quantizer of 3, initialising .*NaN or inf"):
        q(torch.randn(2, 3, 16, 16))
