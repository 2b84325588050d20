"""MobileNet-v3 Large and Small (Howard et al., ICCV 2019), architecture-identical to torchvision's, with
PROFIT's quantization points and its negative padding for h-swish.

MobileNet-v3 keeps v2's inverted residual ("bneck") block and adds two things found by architecture search:
a squeeze-and-excitation (SE) module in some blocks, and the *h-swish* nonlinearity
``hswish(x) = x * relu6(x + 3) / 6`` in the deeper half. Tables 1 and 2 of the paper list the blocks; each
row here is one bneck row of those tables:

``k``
    depthwise kernel size (3 or 5).
``exp``
    expansion size: the hidden width of the block (no expansion conv when it equals the input width).
``out``
    output channels.
``se``
    whether the block has an SE module (squeeze width: ``exp / 4`` rounded to a multiple of 8).
``nl``
    the nonlinearity: ``"RE"`` (ReLU) or ``"HS"`` (h-swish).
``s``
    stride of the depthwise conv.

Channel counts are multiplied by ``width_mult`` and rounded to multiples of 8, as torchvision does.

Where PROFIT quantizes (section B.5 of the notes; ``Q`` below is a :class:`~profit_edu.layers.QuantPoint`,
replaced by a quantizer-only ``QAct`` in :func:`~profit_edu.layers.quantize_model`):

* stem: conv + BN + ``nn.Hardswish`` module (an h-swish quantization point);
* every block except the first: ``Q("signed")`` on the block input (the skip path stays float), expansion
  conv + BN + activation module, depthwise conv + BN + activation module, then SE if present, then the
  projection conv + BN (no activation);
* SE: average pool -> ``Q`` (``"hswish"`` in h-swish blocks, else ``"unsigned"``) -> fc1 (1x1 conv) ->
  ``nn.ReLU`` module (quantized) -> fc2 -> ``nn.Hardsigmoid`` (kept float: a gate in [0, 1], as in the
  official code) -> multiply -> ``Q`` of the block's activation mode, so the projection conv reads
  quantized values;
* head: ``Q("signed")`` -> last 1x1 conv + BN -> h-swish as a function (float) -> average pool ->
  ``Q("hswish")`` -> Linear -> ``nn.Hardswish`` module (quantized) -> Dropout -> Linear.

*SE placement.* This is torchvision's layout (and the paper's): SE scales the depthwise conv's activated
output. The official PROFIT code applied SE to the BN output *before* the nonlinearity; torchvision's
checkpoints need torchvision's order, so we keep it.

*Negative padding* (section C of the notes). A depthwise conv that reads an h-swish output is a
:class:`~profit_edu.layers.Conv2dPad`. When the h-swish is quantized, ``quantize_model`` finds these convs
(by tracing the model with torch.fx) and pads them with -3/8, the real value of integer code 0. In the
float model they pad with 0 (torchvision's function, for its checkpoints) unless ``negative_padding=True``,
which pads with -3/8 in float too: the paper's pretrained v3 was trained that way, so the float and the
quantized network see the same borders.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import QuantPoint
from ..quant import HSWISH_OFFSET
from ._common import ConvBNAct, check_builder_args, check_images, init_weights, make_divisible, stem_stride_for

__all__ = ["MobileNetV3", "SqueezeExcitation", "V3Block", "mobilenet_v3_large", "mobilenet_v3_small"]

BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # torchvision's v3 BatchNorm settings (TF's decay 0.99)


class BneckRow(NamedTuple):
    """One "bneck" row of Table 1 or 2 of Howard et al. 2019 (see the module docstring)."""

    k: int
    exp: int
    out: int
    se: bool
    nl: str
    s: int


# Table 1 of Howard et al. 2019 (MobileNetV3-Large); input for a 224x224 image in the comments.
# Stem: conv2d 3x3, 16 channels, HS, stride 2.
LARGE: tuple[BneckRow, ...] = (
    BneckRow(3, 16, 16, False, "RE", 1),  # 112^2 x 16
    BneckRow(3, 64, 24, False, "RE", 2),  # 112^2 x 16  (the first stride-2 block: stride 1 with cifar_stem)
    BneckRow(3, 72, 24, False, "RE", 1),  # 56^2 x 24
    BneckRow(5, 72, 40, True, "RE", 2),  # 56^2 x 24
    BneckRow(5, 120, 40, True, "RE", 1),  # 28^2 x 40
    BneckRow(5, 120, 40, True, "RE", 1),  # 28^2 x 40
    BneckRow(3, 240, 80, False, "HS", 2),  # 28^2 x 40
    BneckRow(3, 200, 80, False, "HS", 1),  # 14^2 x 80
    BneckRow(3, 184, 80, False, "HS", 1),  # 14^2 x 80
    BneckRow(3, 184, 80, False, "HS", 1),  # 14^2 x 80
    BneckRow(3, 480, 112, True, "HS", 1),  # 14^2 x 80
    BneckRow(3, 672, 112, True, "HS", 1),  # 14^2 x 112
    BneckRow(5, 672, 160, True, "HS", 2),  # 14^2 x 112
    BneckRow(5, 960, 160, True, "HS", 1),  # 7^2 x 160
    BneckRow(5, 960, 160, True, "HS", 1),  # 7^2 x 160
)
# Head: conv2d 1x1 960 HS; pool 7x7; "conv2d 1x1, NBN" 1280 HS (a Linear); "conv2d 1x1, NBN" k (a Linear).
LARGE_LAST = 1280

# Table 2 of Howard et al. 2019 (MobileNetV3-Small). Stem: conv2d 3x3, 16 channels, HS, stride 2.
SMALL: tuple[BneckRow, ...] = (
    BneckRow(3, 16, 16, True, "RE", 2),  # 112^2 x 16  (the first stride-2 block: stride 1 with cifar_stem)
    BneckRow(3, 72, 24, False, "RE", 2),  # 56^2 x 16
    BneckRow(3, 88, 24, False, "RE", 1),  # 28^2 x 24
    BneckRow(5, 96, 40, True, "HS", 2),  # 28^2 x 24
    BneckRow(5, 240, 40, True, "HS", 1),  # 14^2 x 40
    BneckRow(5, 240, 40, True, "HS", 1),  # 14^2 x 40
    BneckRow(5, 120, 48, True, "HS", 1),  # 14^2 x 40
    BneckRow(5, 144, 48, True, "HS", 1),  # 14^2 x 48
    BneckRow(5, 288, 96, True, "HS", 2),  # 14^2 x 48
    BneckRow(5, 576, 96, True, "HS", 1),  # 7^2 x 96
    BneckRow(5, 576, 96, True, "HS", 1),  # 7^2 x 96
)
# Head: conv2d 1x1 576 HS (the table marks SE here; torchvision, whose checkpoints we load, has none);
# pool 7x7; "conv2d 1x1, NBN" 1024 HS; "conv2d 1x1, NBN" k.
SMALL_LAST = 1024
STEM_CHANNELS = 16


def _act(nl: str) -> nn.Module:
    return nn.Hardswish() if nl == "HS" else nn.ReLU()


def _mode(nl: str) -> str:
    """The DuQ grid for values produced by this nonlinearity."""
    return "hswish" if nl == "HS" else "unsigned"


class SqueezeExcitation(nn.Module):
    """SE (Hu et al. 2018) as in MobileNet-v3: ``x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))``.

    Children (torchvision's names): ``avgpool``, ``fc1``, ``activation`` (ReLU, a quantization point), ``fc2``,
    ``scale_activation`` (Hardsigmoid, float); PROFIT's ``quant_pool`` on the pooled vector and ``quant_out``
    on the product, both with the grid of the block's activation (``mode``).

    Shapes: x: (N, C, H, W) -> (N, C, H, W)
    """

    def __init__(self, channels: int, squeeze_channels: int, mode: str) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.quant_pool = QuantPoint(mode)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.scale_activation = nn.Hardsigmoid()
        self.quant_out = QuantPoint(mode)

    def forward(self, x: Tensor) -> Tensor:
        s = self.quant_pool(self.avgpool(x))  # (N, C, 1, 1)
        s = self.scale_activation(self.fc2(self.activation(self.fc1(s))))  # per-channel gate in [0, 1]
        return self.quant_out(x * s)


class V3Block(nn.Module):
    """MobileNet-v3 bneck: [expansion 1x1] -> depthwise kxk -> [SE] -> projection 1x1, residual when shapes match.

    Children (torchvision's names): ``block`` = Sequential(expansion ConvBNAct if exp != in, depthwise
    ConvBNAct, SqueezeExcitation if se, projection ConvBNAct without activation); ``quant_in`` =
    ``QuantPoint("signed")`` on the block input, or None.

    Args:
        in_channels: input width (after the width multiplier).
        row: the table row, channel counts already multiplied and rounded.
        stride: the depthwise stride (may differ from ``row.s`` with ``cifar_stem``).
        quantize_input: put a signed quantization point on the block input (all blocks but the first).
        input_is_hswish: the block input is an h-swish output (the first block reads the stem's); decides the
            depthwise conv's padding when there is no expansion conv.
        negative_padding: pad depthwise convs that read h-swish outputs with -3/8 in float too.

    Shapes: x: (N, in_channels, H, W) -> (N, row.out, H / stride, W / stride)
    """

    def __init__(self, in_channels: int, row: BneckRow, stride: int, *, quantize_input: bool,
                 input_is_hswish: bool, negative_padding: bool) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == row.out
        self.quant_in = QuantPoint("signed") if quantize_input else None
        bn = {"bn_eps": BN_EPS, "bn_momentum": BN_MOMENTUM}
        layers: list[nn.Module] = []
        expands = row.exp != in_channels
        if expands:
            layers.append(ConvBNAct(in_channels, row.exp, 1, activation=_act(row.nl), **bn))
        dw_reads_hswish = row.nl == "HS" if expands else input_is_hswish
        pad = (-HSWISH_OFFSET if negative_padding else 0.0) if dw_reads_hswish else None
        layers.append(ConvBNAct(row.exp, row.exp, row.k, stride, groups=row.exp, activation=_act(row.nl),
                                pad_value=pad, **bn))
        if row.se:
            layers.append(SqueezeExcitation(row.exp, make_divisible(row.exp // 4), _mode(row.nl)))
        layers.append(ConvBNAct(row.exp, row.out, 1, **bn))  # linear bottleneck: no activation
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.block(x if self.quant_in is None else self.quant_in(x))
        return x + branch if self.use_res_connect else branch  # the skip path carries the float x


class MobileNetV3(nn.Module):
    """MobileNet-v3 from a bneck table; see :func:`mobilenet_v3_large` and :func:`mobilenet_v3_small`.

    Children: ``features`` (stem, blocks, last 1x1 conv + BN), ``quant_head`` (signed, before the last conv),
    ``avgpool``, ``quant_pool`` (h-swish grid, on the pooled vector), ``classifier`` = Sequential(Linear,
    Hardswish, Dropout, Linear).

    Shapes: x: (N, 3, H, W) -> (N, num_classes)
    """

    def __init__(self, rows: tuple[BneckRow, ...], last_channel: int, num_classes: int = 1000, *,
                 width_mult: float = 1.0, cifar_stem: bool = False, stem_stride: int | None = None,
                 dropout: float = 0.2, negative_padding: bool = False) -> None:
        super().__init__()
        num_classes, width_mult, stem_stride, dropout = check_builder_args(num_classes, width_mult, stem_stride,
                                                                           dropout)
        if not isinstance(negative_padding, bool):
            raise TypeError(f"negative_padding must be True or False, got {negative_padding!r}")
        bn = {"bn_eps": BN_EPS, "bn_momentum": BN_MOMENTUM}
        c_in = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [
            ConvBNAct(3, c_in, 3, stem_stride_for(cifar_stem, stem_stride), activation=nn.Hardswish(), **bn)
        ]
        reduce_first_stride = cifar_stem  # CIFAR: the first stride-2 block keeps the resolution (total stride 8)
        for i, row in enumerate(rows):
            row = row._replace(exp=make_divisible(row.exp * width_mult), out=make_divisible(row.out * width_mult))
            stride = row.s
            if stride == 2 and reduce_first_stride:
                stride, reduce_first_stride = 1, False
            layers.append(V3Block(c_in, row, stride, quantize_input=i > 0, input_is_hswish=i == 0,
                                  negative_padding=negative_padding))
            c_in = row.out
        last_conv = 6 * c_in  # 960 (Large) / 576 (Small) at width 1
        layers.append(ConvBNAct(c_in, last_conv, 1, **bn))  # its h-swish is applied in forward (float)
        self.features = nn.Sequential(*layers)
        self.quant_head = QuantPoint("signed")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.quant_pool = QuantPoint("hswish")
        last_channel = make_divisible(last_channel * width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),  # the table's "conv2d 1x1, NBN" on a 1x1 map
            nn.Hardswish(),
            nn.Dropout(dropout),
            nn.Linear(last_channel, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        check_images(x, self.features[0][0].weight, type(self).__name__)
        *body, last_conv = self.features
        for stage in body:
            x = stage(x)
        x = F.hardswish(last_conv(self.quant_head(x)))  # (N, 960, H/32, W/32) for Large
        x = self.avgpool(x).flatten(1)  # (N, 960)
        return self.classifier(self.quant_pool(x))


def mobilenet_v3_large(num_classes: int = 1000, *, width_mult: float = 1.0, cifar_stem: bool = False,
                       stem_stride: int | None = None, dropout: float = 0.2,
                       negative_padding: bool = False) -> MobileNetV3:
    """MobileNet-v3-Large (Howard et al. 2019, Table 1), a float model with named quantization points.

    Same modules, state-dict keys, shapes and BatchNorm settings (eps 1e-3, momentum 0.01) as
    ``torchvision.models.mobilenet_v3_large``; with ``negative_padding=False`` the outputs agree with it.

    Cost (:func:`~profit_edu.models.count_macs`, 1000 classes for 224x224, 10 classes for 32x32):

    =============================================  =========  ==========
    variant                                        MACs       params
    =============================================  =========  ==========
    stock, 224x224                                 216.6 M    5.483 M
    ``cifar_stem=True``, 32x32 (stride 8)          66.5 M     4.215 M
    ``cifar_stem=True, stem_stride=2``, 32x32      18.7 M     4.215 M
    ``cifar_stem=True, width_mult=0.5``, 32x32     19.6 M     1.100 M
    =============================================  =========  ==========

    Args:
        num_classes: size of the classifier output (>= 1).
        width_mult: width multiplier (> 0); channel counts are rounded to multiples of 8.
        cifar_stem: for 32x32 inputs: stem stride 1 and the first stride-2 block at stride 1 (total stride 8).
        stem_stride: 1 or 2, overrides only the stem's stride (default: 2, or 1 with ``cifar_stem``).
        dropout: dropout probability in the classifier, in [0, 1).
        negative_padding: pad the depthwise convs that read h-swish outputs with -3/8 in the float model (the
            paper's pretrained v3); False pads with 0 like torchvision. Quantized h-swish inputs always get -3/8.

    Returns:
        A :class:`MobileNetV3` in train mode, randomly initialised.

    Raises:
        ValueError / TypeError: an argument outside the ranges above.

    >>> import torch
    >>> mobilenet_v3_large(num_classes=10, width_mult=0.5, cifar_stem=True)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return MobileNetV3(LARGE, LARGE_LAST, num_classes, width_mult=width_mult, cifar_stem=cifar_stem,
                       stem_stride=stem_stride, dropout=dropout, negative_padding=negative_padding)


def mobilenet_v3_small(num_classes: int = 1000, *, width_mult: float = 1.0, cifar_stem: bool = False,
                       stem_stride: int | None = None, dropout: float = 0.2,
                       negative_padding: bool = False) -> MobileNetV3:
    """MobileNet-v3-Small (Howard et al. 2019, Table 2), a float model with named quantization points.

    Same modules, state-dict keys, shapes and BatchNorm settings as ``torchvision.models.mobilenet_v3_small``
    (which, unlike the paper's table, has no SE on the last 1x1 conv). The official PROFIT code has no
    v3-Small; the quantization points follow the v3-Large rules.

    Cost (:func:`~profit_edu.models.count_macs`, 1000 classes for 224x224, 10 classes for 32x32):

    =============================================  =========  ==========
    variant                                        MACs       params
    =============================================  =========  ==========
    stock, 224x224                                 56.5 M     2.543 M
    ``cifar_stem=True``, 32x32 (stride 8)          17.5 M     1.528 M
    ``cifar_stem=True, stem_stride=2``, 32x32      5.2 M      1.528 M
    ``cifar_stem=True, width_mult=0.5``, 32x32     5.5 M      0.409 M
    =============================================  =========  ==========

    Args: as :func:`mobilenet_v3_large`.

    Returns:
        A :class:`MobileNetV3` in train mode, randomly initialised.

    Raises:
        ValueError / TypeError: an argument outside the allowed ranges.

    >>> import torch
    >>> mobilenet_v3_small(num_classes=10, cifar_stem=True)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return MobileNetV3(SMALL, SMALL_LAST, num_classes, width_mult=width_mult, cifar_stem=cifar_stem,
                       stem_stride=stem_stride, dropout=dropout, negative_padding=negative_padding)
