"""MobileNet-v1 (Howard et al., arXiv 2017), with PROFIT's quantization points.

MobileNet-v1 factorises each 3x3 convolution into a *depthwise* 3x3 conv (one filter per channel) and a
*pointwise* 1x1 conv that mixes channels, each followed by BatchNorm and an activation (Figure 3 of the
paper). That cuts the MACs of a 3x3 conv by a factor of about 8-9. Table 1 of the paper lists the network:
a 3x3 stem conv, 13 depthwise-separable blocks, global average pooling and a fully connected classifier.

The *width multiplier* (alpha in the paper, section 3.3) scales every channel count; here counts are
rounded to multiples of 8 as in v2 and v3, which equals TensorFlow's reference ``int(alpha * d)`` for the
paper's alpha in {1, 0.75, 0.5, 0.25}.

Activation: the paper says ReLU; TensorFlow's reference implementation (and its pretrained checkpoints) use
ReLU6, which we follow. BatchNorm uses PyTorch's defaults (eps 1e-5, momentum 0.1). There is no torchvision
MobileNet-v1, so there are no checkpoints to load and no key layout to match.

Quantization points (PROFIT's official code has no v1; we follow its v2 rules, section B.5 of the notes):
every ``nn.ReLU6`` module is an unsigned point. The last pointwise conv's ReLU6 is applied as a function
(float), then average pooling, then ``QuantPoint("unsigned")`` on the pooled vector, then the classifier.
There are no residual adds, so no signed points.
"""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import QuantPoint
from ._common import ConvBNAct, check_builder_args, check_images, init_weights, make_divisible, stem_stride_for

__all__ = ["DepthwiseSeparable", "MobileNetV1", "mobilenet_v1"]


class SeparableRow(NamedTuple):
    """One "conv dw / s + conv 1x1" pair of rows of Table 1 of Howard et al. 2017."""

    s: int  # stride of the depthwise conv
    c: int  # output channels of the pointwise conv


# Table 1 of Howard et al. 2017; input of the depthwise conv for a 224x224 image in the comments.
# Stem ("Conv / s2"): 3x3x3x32, stride 2.
BLOCKS: tuple[SeparableRow, ...] = (
    SeparableRow(1, 64),  # 112^2 x 32
    SeparableRow(2, 128),  # 112^2 x 64  (the first stride-2 block: stride 1 with cifar_stem)
    SeparableRow(1, 128),  # 56^2 x 128
    SeparableRow(2, 256),  # 56^2 x 128
    SeparableRow(1, 256),  # 28^2 x 256
    SeparableRow(2, 512),  # 28^2 x 256
    SeparableRow(1, 512),  # 14^2 x 512   } the table's "5x" rows
    SeparableRow(1, 512),  # 14^2 x 512   }
    SeparableRow(1, 512),  # 14^2 x 512   }
    SeparableRow(1, 512),  # 14^2 x 512   }
    SeparableRow(1, 512),  # 14^2 x 512   }
    SeparableRow(2, 1024),  # 14^2 x 512
    SeparableRow(1, 1024),  # 7^2 x 1024  (the table prints s2, a known typo: its output is still 7x7)
)
# Then "Avg Pool / s1, 7x7" and "FC / s1, 1024 x 1000".
STEM_CHANNELS = 32


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv + BN + ReLU6, then pointwise 1x1 conv + BN + ReLU6 (Figure 3 of the paper).

    Children: ``dw`` and ``pw`` (:class:`~profit_edu.models._common.ConvBNAct`). With ``last_activation=False``
    the pointwise block ends after BN (the network's last block: the caller applies ReLU6 as a function).

    Shapes: x: (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, last_activation: bool = True) -> None:
        super().__init__()
        self.dw = ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels, activation=nn.ReLU6())
        self.pw = ConvBNAct(in_channels, out_channels, 1, activation=nn.ReLU6() if last_activation else None)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class MobileNetV1(nn.Module):
    """MobileNet-v1; see :func:`mobilenet_v1`.

    Children: ``features`` (stem + 13 blocks), ``quant_pool`` (unsigned, on the pooled vector), ``classifier``
    (Linear).

    Shapes: x: (N, 3, H, W) -> (N, num_classes)
    """

    def __init__(self, num_classes: int = 1000, *, width_mult: float = 1.0, cifar_stem: bool = False,
                 stem_stride: int | None = None) -> None:
        super().__init__()
        num_classes, width_mult, stem_stride, _ = check_builder_args(num_classes, width_mult, stem_stride)
        c_in = make_divisible(STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [
            ConvBNAct(3, c_in, 3, stem_stride_for(cifar_stem, stem_stride), activation=nn.ReLU6())
        ]
        reduce_first_stride = cifar_stem  # CIFAR: the first stride-2 block keeps the resolution (total stride 8)
        for i, row in enumerate(BLOCKS):
            c_out = make_divisible(row.c * width_mult)
            stride = row.s
            if stride == 2 and reduce_first_stride:
                stride, reduce_first_stride = 1, False
            layers.append(DepthwiseSeparable(c_in, c_out, stride, last_activation=i < len(BLOCKS) - 1))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.quant_pool = QuantPoint("unsigned")
        self.classifier = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        check_images(x, self.features[0][0].weight, type(self).__name__)
        x = F.relu6(self.features(x))  # the last pointwise activation, kept float: (N, 1024, H/32, W/32)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, 1024)
        return self.classifier(self.quant_pool(x))


def mobilenet_v1(num_classes: int = 1000, *, width_mult: float = 1.0, cifar_stem: bool = False,
                 stem_stride: int | None = None) -> MobileNetV1:
    """MobileNet-v1 (Howard et al. 2017, Table 1) with ReLU6, a float model with named quantization points.

    The paper uses ReLU; TensorFlow's reference implementation uses ReLU6, as we do. Parameters at width 1.0
    with 1000 classes: 4,231,976 (the paper: 4.2 M).

    Cost (:func:`~profit_edu.models.count_macs`, 1000 classes for 224x224, 10 classes for 32x32):

    =============================================  =========  ==========
    variant                                        MACs       params
    =============================================  =========  ==========
    stock, 224x224 (the paper: 569 M)              568.7 M    4.232 M
    ``cifar_stem=True``, 32x32 (stride 8)          175.6 M    3.217 M
    ``cifar_stem=True, stem_stride=2``, 32x32      43.9 M     3.217 M
    ``cifar_stem=True, width_mult=0.5``, 32x32     45.3 M     0.824 M
    =============================================  =========  ==========

    Args:
        num_classes: size of the classifier output (>= 1).
        width_mult: the paper's width multiplier alpha (> 0); channel counts are rounded to multiples of 8.
        cifar_stem: for 32x32 inputs: stem stride 1 and the first stride-2 block at stride 1 (total stride 8).
        stem_stride: 1 or 2, overrides only the stem's stride (default: 2, or 1 with ``cifar_stem``).

    Returns:
        A :class:`MobileNetV1` in train mode, randomly initialised.

    Raises:
        ValueError / TypeError: an argument outside the ranges above.

    >>> import torch
    >>> mobilenet_v1(num_classes=10, width_mult=0.25, cifar_stem=True)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """
    return MobileNetV1(num_classes, width_mult=width_mult, cifar_stem=cifar_stem, stem_stride=stem_stride)
