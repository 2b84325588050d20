"""MobileNet-v2 (Sandler et al., CVPR 2018), architecture-identical to torchvision's, with PROFIT's quantization points.

The network is a 3x3 stem conv followed by *inverted residual* blocks (Table 1 of the paper): a 1x1
expansion conv that widens the ``c_in`` channels ``t`` times, a 3x3 depthwise conv, and a 1x1 *linear*
projection (no activation) back to ``c`` channels, with a residual add when shape allows. Table 2 lists the
blocks as rows of four numbers:

``t``
    expansion factor (hidden width = ``t * c_in``; ``t = 1`` blocks have no expansion conv).
``c``
    output channels (times the width multiplier, rounded to a multiple of 8).
``n``
    how many times the block repeats.
``s``
    stride of the first repeat (the others have stride 1).

Where PROFIT quantizes (section B.5 of the notes, from the official code):

* every conv and linear gets a signed weight quantizer (done by :func:`~profit_edu.layers.quantize_model`);
* every ``nn.ReLU6`` module is an unsigned activation quantization point;
* block outputs (BN, no activation, plus the skip) are signed: a ``QuantPoint("signed")`` sits at the start
  of the residual branch of every block except the first, so a block computes ``x + F(Q(x))`` and the skip
  path stays float;
* one more ``QuantPoint("signed")`` in front of the last 1x1 conv (320 -> 1280); that conv's ReLU6 is applied
  as a function (float), then global average pooling, then ``QuantPoint("unsigned")`` on the pooled vector,
  dropout, and the classifier.

Quantization points are extra *attributes* of the blocks, never entries in the ``Sequential`` containers,
so the state-dict keys are torchvision's and its checkpoints load strictly
(:func:`~profit_edu.models.load_torchvision_weights`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import QuantPoint
from ._common import ConvBNAct, check_builder_args, check_images, init_weights, make_divisible, stem_stride_for

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenet_v2"]


class BlockRow(NamedTuple):
    """One row of Table 2 of Sandler et al. 2018 (see the module docstring)."""

    t: int
    c: int
    n: int
    s: int


# Table 2 of Sandler et al. 2018 (input resolution for a 224x224 image in the comments).
BLOCKS: tuple[BlockRow, ...] = (
    BlockRow(1, 16, 1, 1),  # 112^2 x 32 -> 112^2 x 16
    BlockRow(6, 24, 2, 2),  # 112^2 x 16 -> 56^2 x 24   (the first stride-2 stage: stride 1 with cifar_stem)
    BlockRow(6, 32, 3, 2),  # 56^2 x 24  -> 28^2 x 32
    BlockRow(6, 64, 4, 2),  # 28^2 x 32  -> 14^2 x 64
    BlockRow(6, 96, 3, 1),  # 14^2 x 64  -> 14^2 x 96
    BlockRow(6, 160, 3, 2),  # 14^2 x 96  -> 7^2 x 160
    BlockRow(6, 320, 1, 1),  # 7^2 x 160  -> 7^2 x 320
)
STEM_CHANNELS = 32  # first row of Table 2: conv2d 3x3, 32 channels, stride 2
LAST_CHANNELS = 1280  # row "conv2d 1x1, 1280"; torchvision never shrinks it below 1280 for width_mult < 1


class InvertedResidual(nn.Module):
    """Expansion 1x1 -> depthwise 3x3 -> linear projection 1x1, with a residual add when shapes match.

    Children (torchvision's names): ``conv`` = Sequential(expansion ConvBNAct if t != 1, depthwise ConvBNAct,
    projection Conv2d, BatchNorm2d); ``quant_in`` = ``QuantPoint("signed")`` on the branch input, or None.

    Shapes: x: (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int, *,
                 quantize_input: bool) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.quant_in = QuantPoint("signed") if quantize_input else None
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, activation=nn.ReLU6()))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6()),
            nn.Conv2d(hidden, out_channels, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.conv(x if self.quant_in is None else self.quant_in(x))
        return x + branch if self.use_res_connect else branch  # the skip path carries the float x


class MobileNetV2(nn.Module):
    """MobileNet-v2 with torchvision's layout and PROFIT's quantization points; see :func:`mobilenet_v2`.

    Children: ``features`` (stem, 17 blocks, last 1x1 conv + BN), ``quant_head`` (signed, before the last
    conv), ``quant_pool`` (unsigned, on the pooled vector), ``classifier`` = Sequential(Dropout, Linear).

    Shapes: x: (N, 3, H, W) -> (N, num_classes)
    """

    def __init__(self, num_classes: int = 1000, *, width_mult: float = 1.0, cifar_stem: bool = False,
                 stem_stride: int | None = None, dropout: float = 0.2) -> None:
        super().__init__()
        num_classes, width_mult, stem_stride, dropout = check_builder_args(num_classes, width_mult, stem_stride,
                                                                           dropout)
        c_in = make_divisible(STEM_CHANNELS * width_mult)
        self.last_channel = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        layers: list[nn.Module] = [
            ConvBNAct(3, c_in, 3, stem_stride_for(cifar_stem, stem_stride), activation=nn.ReLU6())
        ]
        reduce_first_stride = cifar_stem  # CIFAR: the first stride-2 stage keeps the resolution (total stride 8)
        for row in BLOCKS:
            c_out = make_divisible(row.c * width_mult)
            stride = row.s
            if stride == 2 and reduce_first_stride:
                stride, reduce_first_stride = 1, False
            for i in range(row.n):
                layers.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, row.t,
                                               quantize_input=len(layers) > 1))
                c_in = c_out
        layers.append(ConvBNAct(c_in, self.last_channel, 1))  # its ReLU6 is applied in forward (float)
        self.features = nn.Sequential(*layers)
        self.quant_head = QuantPoint("signed")
        self.quant_pool = QuantPoint("unsigned")
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        check_images(x, self.features[0][0].weight, type(self).__name__)
        *body, last_conv = self.features
        for stage in body:
            x = stage(x)
        x = F.relu6(last_conv(self.quant_head(x)))  # (N, 1280, H/32, W/32)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, 1280)
        return self.classifier(self.quant_pool(x))


def mobilenet_v2(num_classes: int = 1000, *, width_mult: float = 1.0, cifar_stem: bool = False,
                 stem_stride: int | None = None, dropout: float = 0.2) -> MobileNetV2:
    """MobileNet-v2 (Sandler et al. 2018, Table 2), a float model with named quantization points.

    Same modules, state-dict keys, shapes and BatchNorm settings (eps 1e-5, momentum 0.1) as
    ``torchvision.models.mobilenet_v2``, so :func:`~profit_edu.models.load_torchvision_weights` loads its
    checkpoints and the outputs agree.

    Cost (:func:`~profit_edu.models.count_macs`, 1000 classes for 224x224, 10 classes for 32x32):

    =============================================  =========  ==========
    variant                                        MACs       params
    =============================================  =========  ==========
    stock, 224x224                                 300.8 M    3.505 M
    ``cifar_stem=True``, 32x32 (stride 8)          88.0 M     2.237 M
    ``cifar_stem=True, stem_stride=2``, 32x32      22.0 M     2.237 M
    ``cifar_stem=True, width_mult=0.5``, 32x32     28.0 M     0.700 M
    =============================================  =========  ==========

    Args:
        num_classes: size of the classifier output (>= 1).
        width_mult: width multiplier (> 0); channel counts are rounded to multiples of 8.
        cifar_stem: for 32x32 inputs: stem stride 1 and the first stride-2 stage at stride 1 (total stride 8).
        stem_stride: 1 or 2, overrides only the stem's stride (default: 2, or 1 with ``cifar_stem``).
        dropout: dropout probability before the classifier, in [0, 1).

    Returns:
        A :class:`MobileNetV2` in train mode, randomly initialised.

    Raises:
        ValueError / TypeError: an argument outside the ranges above.

    >>> import torch
    >>> net = mobilenet_v2(num_classes=10, width_mult=0.5, cifar_stem=True)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return MobileNetV2(num_classes, width_mult=width_mult, cifar_stem=cifar_stem, stem_stride=stem_stride,
                       dropout=dropout)
