"""MobileNet v1/v2/v3 (profit_edu.models): torchvision parity, strict loading, costs, quantization points."""

import collections
import copy

import pytest
import torch
import torchvision
from torch import nn

import profit_edu.models as pm
from profit_edu.layers import (
    Conv2dPad,
    QAct,
    QConv2d,
    QLinear,
    QuantPoint,
    _PointTracer,
    quantize_model,
    set_bits,
)
from profit_edu.models import (
    count_macs,
    count_params,
    load_torchvision_weights,
    mobilenet_v1,
    mobilenet_v2,
    mobilenet_v3_large,
    mobilenet_v3_small,
)

BUILDERS = [mobilenet_v1, mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small]
TV_PAIRS = {
    "v2": (torchvision.models.mobilenet_v2, mobilenet_v2),
    "v3_large": (torchvision.models.mobilenet_v3_large, mobilenet_v3_large),
    "v3_small": (torchvision.models.mobilenet_v3_small, mobilenet_v3_small),
}



def _perturb_bn(model: nn.Module) -> nn.Module:
    """Random BN statistics and affine parameters, so a wrong BN setting or a skipped layer shows up."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return model


def _small(builder, **kw):
    return builder(num_classes=10, width_mult=0.5, cifar_stem=True, **kw)


# ------------------------------------------------------------------ torchvision parity
@pytest.mark.parametrize(
    "name, width",
    [("v2", 1.0), ("v2", 0.5), ("v3_large", 1.0), ("v3_large", 0.75), ("v3_small", 1.0)],
)
def test_torchvision_parity(name, width):
    tv_builder, builder = TV_PAIRS[name]
    tv = _perturb_bn(tv_builder(weights=None, num_classes=10, width_mult=width)).eval()
    ours = builder(num_classes=10, width_mult=width).eval()
    tv_sd, our_sd = tv.state_dict(), ours.state_dict()
    assert list(our_sd) == list(tv_sd)
    assert all(our_sd[k].shape == v.shape for k, v in tv_sd.items())
    tv_bn = [(m.eps, m.momentum) for m in tv.modules() if isinstance(m, nn.BatchNorm2d)]
    our_bn = [(m.eps, m.momentum) for m in ours.modules() if isinstance(m, nn.BatchNorm2d)]
    assert our_bn == tv_bn
    assert load_torchvision_weights(ours, tv_sd) is ours
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = tv(x), ours(x)
    assert expected.abs().max() > 1e-3  # the comparison means something
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ strict loading
@pytest.fixture(scope="module")
def small_pair():
    tv = torchvision.models.mobilenet_v3_small(weights=None, num_classes=10, width_mult=0.5)
    return tv.state_dict(), mobilenet_v3_small(num_classes=10, width_mult=0.5)


def test_load_rejects_missing_key(small_pair):
    sd, model = small_pair
    sd = dict(sd)
    del sd["features.3.block.1.0.weight"]
    with pytest.raises(KeyError, match=r"1 missing key.*'features\.3\.block\.1\.0\.weight'"):
        load_torchvision_weights(model, sd)


def test_load_rejects_unexpected_key(small_pair):
    sd, model = small_pair
    sd = dict(sd, **{"features.99.weight": torch.zeros(3)})
    with pytest.raises(KeyError, match=r"1 unexpected key.*'features\.99\.weight'"):
        load_torchvision_weights(model, sd)


def test_load_hints_at_dataparallel_prefix(small_pair):
    sd, model = small_pair
    with pytest.raises(KeyError, match=r"missing key.*unexpected key.*strip that DataParallel prefix"):
        load_torchvision_weights(model, {f"module.{k}": v for k, v in sd.items()})


def test_load_rejects_wrong_shape():
    sd = torchvision.models.mobilenet_v3_small(weights=None, num_classes=1000, width_mult=0.5).state_dict()
    msg = r"2 shape mismatch.*'classifier\.3\.weight': state_dict has \(1000, 512\), model has \(10, 512\)"
    with pytest.raises(ValueError, match=msg):
        load_torchvision_weights(mobilenet_v3_small(num_classes=10, width_mult=0.5), sd)


def test_load_accepts_checkpoints_without_bn_counters(small_pair):
    sd, model = small_pair
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    load_torchvision_weights(model, sd)
    assert all(int(m.num_batches_tracked) == 0 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_load_rejects_non_mapping(small_pair):
    with pytest.raises(TypeError, match="mapping"):
        load_torchvision_weights(small_pair[1], [1, 2])


# ------------------------------------------------------------------ v1, shapes, costs
def test_v1_shape_and_parameter_count():
    net = mobilenet_v1().eval()
    # 928 (stem) + 3,206,048 (13 separable blocks) + 1,025,000 (FC 1024 x 1000 + bias)
    assert count_params(net) == 4_231_976
    assert abs(count_params(net) - 4.23e6) / 4.23e6 < 0.01  # Table 1 of Howard et al.: 4.2 M
    assert len(net.features) == 14  # stem + 13 depthwise-separable blocks
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize(
    "cifar_stem, stem_stride, size, hw",
    [(False, None, 64, 2), (True, None, 32, 4), (True, 2, 32, 2), (False, 1, 64, 4)],
)
def test_feature_map_size(builder, cifar_stem, stem_stride, size, hw):
    """Total stride 32 (stock), 8 (CIFAR stem), 16 (CIFAR stem with a stride-2 stem or stock with a stride-1 stem)."""
    net = builder(num_classes=10, width_mult=0.5, cifar_stem=cifar_stem, stem_stride=stem_stride).eval()
    seen = []
    net.features[-1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        out = net(torch.zeros(2, 3, size, size))
    assert out.shape == (2, 10)
    assert tuple(seen[0][-2:]) == (hw, hw)


def test_count_macs_by_hand():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 5x5 -> 3x3: 3*3*8 outputs * 3*3*3 = 1944
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 3*3*8 outputs * 1*3*3 = 648
        nn.Conv2d(8, 16, 1),  # pointwise: 3*3*16 outputs * 8 = 1152
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),  # 160
    )
    assert count_macs(net, (3, 5, 5)) == 1944 + 648 + 1152 + 160
    assert count_macs(net, 5) == count_macs(net, (3, 5, 5))


def test_count_macs_restores_train_mode_and_rejects_bad_size():
    net = _small(mobilenet_v2)
    net.features[1].eval()
    count_macs(net, 32)
    assert net.training and not net.features[1].training and net.features[2].training
    with pytest.raises(ValueError, match=r"\(channels, height, width\)"):
        count_macs(net, (32, 32))


@pytest.mark.parametrize(
    "builder, macs, params",
    [
        (mobilenet_v1, 568_740_352, 4_231_976),  # the paper: 569 M MACs, 4.2 M parameters
        (mobilenet_v2, 300_774_272, 3_504_872),  # torchvision's record: 0.301 GFLOPS, 3,504,872
        (mobilenet_v3_large, 216_589_760, 5_483_032),  # 0.217, 5,483,032
        (mobilenet_v3_small, 56_510_400, 2_542_856),  # 0.057, 2,542,856
    ],
)
def test_stock_costs(builder, macs, params):
    net = builder()
    assert count_macs(net, 224) == macs
    assert count_params(net) == params


def test_stock_costs_match_torchvision_records():
    records = {
        mobilenet_v2: torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta,
        mobilenet_v3_large: torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.meta,
        mobilenet_v3_small: torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1.meta,
    }
    expected = {mobilenet_v2: 300_774_272, mobilenet_v3_large: 216_589_760, mobilenet_v3_small: 56_510_400}
    for builder, meta in records.items():
        assert round(expected[builder] / 1e9, 3) == meta["_ops"]
        assert count_params(builder()) == meta["num_params"]


@pytest.mark.parametrize(
    "builder, macs",
    [(mobilenet_v1, 175_556_608), (mobilenet_v2, 87_976_448), (mobilenet_v3_large, 66_459_008),
     (mobilenet_v3_small, 17_507_328)],
)
def test_cifar_costs_quoted_in_docstrings(builder, macs):
    assert count_macs(builder(num_classes=10, cifar_stem=True), 32) == macs
    assert f"{macs / 1e6:.1f} M" in builder.__doc__


# ------------------------------------------------------------------ quantization points
def _census(model):
    modes = collections.Counter(m.quantizer.mode for m in model.modules() if isinstance(m, QAct))
    n_conv = sum(isinstance(m, QConv2d) for m in model.modules())
    n_linear = sum(isinstance(m, QLinear) for m in model.modules())
    return dict(modes), n_conv, n_linear


# Expected QAct counts per grid, and QConv2d / QLinear counts:
# v1: ReLU6 after stem 1 + 13 depthwise + 12 pointwise (the last is functional) + pooled point 1 = 27 unsigned;
#     convs 1 + 13 * 2 = 27; one linear.
# v2: unsigned: stem 1 + first block's depthwise 1 + 16 blocks * (expansion, depthwise) 32 + pooled 1 = 35;
#     signed: 16 block inputs + 1 before the last conv = 17; convs: 1 + 2 + 16 * 3 + 1 = 52; one linear.
# v3-Large (15 blocks: 6 ReLU, 9 h-swish; SE in 3 ReLU and 5 h-swish blocks):
#     unsigned: first block's dw ReLU 1 + 5 ReLU blocks * 2 + 3 ReLU SE * 3 (pool, ReLU, product) + 5 h-swish SE * 1
#     (its ReLU) = 25; hswish: stem 1 + 9 blocks * 2 + 5 SE * 2 (pool, product) + pooled 1 + classifier 1 = 31;
#     signed: 14 block inputs + 1 head = 15; convs: 1 + 2 + 14 * 3 + 8 SE * 2 + 1 = 62; linears 2.
# v3-Small (11 blocks: 3 ReLU, 8 h-swish; SE in the first block and all 8 h-swish blocks):
#     unsigned: first block dw 1 + its SE 3 + 2 ReLU blocks * 2 + 8 SE ReLUs = 16;
#     hswish: stem 1 + 8 * 2 + 8 SE * 2 + pooled 1 + classifier 1 = 35; signed: 10 + 1 = 11;
#     convs: 1 + (dw, fc1, fc2, projection) 4 + 10 * 3 + 8 SE * 2 + 1 = 52; linears 2.
CENSUS = {
    mobilenet_v1: ({"unsigned": 27}, 27, 1),
    mobilenet_v2: ({"unsigned": 35, "signed": 17}, 52, 1),
    mobilenet_v3_large: ({"unsigned": 25, "hswish": 31, "signed": 15}, 62, 2),
    mobilenet_v3_small: ({"unsigned": 16, "hswish": 35, "signed": 11}, 52, 2),
}


@pytest.mark.parametrize("builder", BUILDERS)
def test_quantization_point_census(builder):
    qnet = quantize_model(_small(builder), 4, 4)
    assert _census(qnet) == CENSUS[builder]


def test_v2_first_block_has_no_signed_point_and_the_others_do():
    qnet = quantize_model(_small(mobilenet_v2), 4, 4)
    blocks = list(qnet.features)[1:-1]
    assert blocks[0].quant_in is None
    assert all(isinstance(b.quant_in, QAct) and b.quant_in.quantizer.mode == "signed" for b in blocks[1:])
    assert qnet.quant_pool.quantizer.mode == "unsigned" and qnet.quant_head.quantizer.mode == "signed"


# Depthwise convs that read h-swish outputs: the first block's (it reads the stem) and those of h-swish blocks.
HSWISH_DW = {
    mobilenet_v3_large: ["features.1.block.0.0"] + [f"features.{i}.block.1.0" for i in range(7, 16)],
    mobilenet_v3_small: ["features.1.block.0.0"] + [f"features.{i}.block.1.0" for i in range(4, 12)],
}


@pytest.mark.parametrize("negative_padding", [False, True])
@pytest.mark.parametrize("builder", [mobilenet_v3_large, mobilenet_v3_small])
def test_v3_negative_padding_convs(builder, negative_padding):
    net = _small(builder, negative_padding=negative_padding)
    fp_pad = -0.375 if negative_padding else 0.0
    padded = {n: m.pad_value for n, m in net.named_modules() if isinstance(m, Conv2dPad)}
    assert padded == dict.fromkeys(HSWISH_DW[builder], fp_pad)
    qnet = quantize_model(net, 4, 4)
    found = []
    for name, m in qnet.named_modules():
        if isinstance(m, QConv2d) and m.groups > 1:
            src = qnet.get_submodule(m.input_from)  # every depthwise conv reads a quantizer
            assert isinstance(src, QAct)
            if src.quantizer.mode == "hswish":
                found.append(name)
                assert m.pad_value == -0.375 and m.fp_pad_value == fp_pad
            else:
                assert m.pad_value == 0.0
    assert found == HSWISH_DW[builder]
    set_bits(qnet, act_bits=None)
    assert all(qnet.get_submodule(n).pad_value == fp_pad for n in found)


@pytest.mark.parametrize("builder", [*BUILDERS, "v3_large_negative_padding"])
def test_unquantized_model_computes_the_float_model_exactly(builder):
    if builder == "v3_large_negative_padding":
        net = _small(mobilenet_v3_large, negative_padding=True)
    else:
        net = _small(builder)
    net = _perturb_bn(net).eval()
    qnet = quantize_model(copy.deepcopy(net), None, None).eval()
    assert _census(qnet)[1] > 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(qnet(x), net(x))


def test_quantized_forward_runs_and_changes_the_output():
    net = _perturb_bn(_small(mobilenet_v3_small)).eval()
    qnet = quantize_model(copy.deepcopy(net), 4, 4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, ref = qnet(x), net(x)
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.equal(out, ref)


@pytest.mark.parametrize("builder", BUILDERS)
def test_models_trace_with_torch_fx(builder):
    """quantize_model traces each model with torch.fx to find which convs read h-swish outputs: the trace must be
    the whole network (every conv and quantization point called, the same outputs), not a partial graph."""
    net = _perturb_bn(_small(builder)).eval()
    graph = _PointTracer().trace(net)
    called = {node.target for node in graph.nodes if node.op == "call_module"}
    convs = {name for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    points = {name for name, m in net.named_modules() if isinstance(m, QuantPoint)}
    assert convs <= called and points <= called
    traced = torch.fx.GraphModule(net, graph)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x), rtol=0, atol=0)


def test_float_negative_padding_changes_only_border_pixels():
    plain = _perturb_bn(_small(mobilenet_v3_large)).eval()
    padded = _small(mobilenet_v3_large, negative_padding=True).eval()
    padded.load_state_dict(plain.state_dict())
    maps = {}
    for key, net in (("plain", plain), ("padded", padded)):
        net.get_submodule("features.1.block.0.0").register_forward_hook(lambda m, i, o, key=key: maps.update({key: o}))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out_plain, out_padded = plain(x), padded(x)
    assert out_plain.shape == out_padded.shape and not torch.allclose(out_plain, out_padded)
    a, b = maps["plain"], maps["padded"]  # first depthwise conv (3x3, stride 1) on the stem's h-swish output
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], rtol=1e-6, atol=1e-6)
    border = torch.ones_like(a, dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    assert not torch.allclose(a[border], b[border])


# ------------------------------------------------------------------ arguments and API
@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"width_mult": 0.0}, r"width_mult must be a positive number"),
        ({"width_mult": -0.5}, r"width_mult must be a positive number"),
        ({"num_classes": 0}, r"num_classes must be an int >= 1"),
        ({"stem_stride": 3}, r"stem_stride must be one of \(1, 2\) or None"),
        ({"stem_stride": 0}, r"stem_stride must be one of \(1, 2\) or None"),
    ],
)
def test_bad_arguments(builder, kwargs, match):
    with pytest.raises(ValueError, match=match):
        builder(**kwargs)


@pytest.mark.parametrize("builder", [mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small])
def test_bad_dropout(builder):
    with pytest.raises(ValueError, match=r"dropout must be a probability in \[0, 1\)"):
        builder(dropout=1.0)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="num_classes"):
        mobilenet_v2(num_classes=10.0)
    with pytest.raises(TypeError, match="negative_padding"):
        mobilenet_v3_small(negative_padding="yes")
    with pytest.raises(TypeError, match="cifar_stem"):
        mobilenet_v1(cifar_stem=1)


def test_public_names():
    assert pm.__all__ and all(not n.startswith("_") for n in pm.__all__)
    assert all(hasattr(pm, n) for n in pm.__all__)


@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize("quantized", [False, True])
def test_inputs_of_another_dtype_say_which_dtypes_are_accepted(builder, quantized):
    # issue 13: an int64 or float64 batch gave "expected scalar type Long but found Float" from deep inside a conv
    from profit_edu.layers import quantize_model

    net = builder(num_classes=10, width_mult=0.25, cifar_stem=True).eval()
    if quantized:
        quantize_model(net, weight_bits=4, act_bits=4)
    name = type(net).__name__
    with pytest.raises(TypeError, match=rf"{name} takes normalised float images of dtype torch\.float32, got "
                                        r"torch\.int64: convert integer pixels with x\.float\(\) / 255 and normalise"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(TypeError, match=rf"{name} takes images of its weights' dtype torch\.float32, got "
                                        r"torch\.float64: cast them with x\.to\(torch\.float32\)"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(TypeError, match=rf"{name} takes a tensor of images \(N, 3, H, W\), got list"):
        net([[0.0]])
    assert net.double()(torch.zeros(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net.float()(torch.zeros(1, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, 10)
