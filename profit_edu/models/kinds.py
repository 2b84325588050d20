"""Which layers of a quantized MobileNet AIWQ measures, and what kind each is (stem, depthwise, pointwise, ...).

:func:`tracked_layers` is the list every per-layer tool walks (the AIWQ tracker, the weight-flip and BN-drift
diagnostics, the freezing policy); :func:`layer_kinds` names each layer's role, for plots and for counting the
depthwise convs in the most unstable third. :mod:`profit_edu.aiwq` re-exports both.
"""

from __future__ import annotations

from torch import nn

from ..layers import QConv2d, QLinear
from .mobilenet_v3 import SqueezeExcitation

__all__ = ["layer_kinds", "tracked_layers"]


def _is_se_conv(name: str, model: nn.Module) -> bool:
    """A 1x1 conv inside a squeeze-excitation module: a linear layer in disguise (the official code used Linear)."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    return isinstance(parent, SqueezeExcitation)


def tracked_layers(model: nn.Module, *, include_linear: bool = False) -> list[tuple[str, nn.Module]]:
    """The layers AIWQ measures, in model order: every QConv2d, plus QLinear (and SE convs) if asked.

    As in the official code, the default is every conv with a weight quantizer (stem, depthwise, pointwise,
    last 1x1): 52 layers in MobileNet-v2. Linear layers (the classifier, and the squeeze-excitation layers that
    our MobileNet-v3 builds as 1x1 convs, as torchvision does) are left out unless ``include_linear``.

    Raises:
        ValueError: the model has no quantized conv (call :func:`~profit_edu.layers.quantize_model` first).
    """
    found = []
    for name, m in model.named_modules():
        if isinstance(m, QConv2d) and (include_linear or not _is_se_conv(name, model)):
            found.append((name, m))
        elif isinstance(m, QLinear) and include_linear:
            found.append((name, m))
    if not found:
        raise ValueError(f"{type(model).__name__} has no QConv2d layers to measure: call quantize_model(model, ...) "
                         "first (weight_bits=None keeps float weights but adds the layers AIWQ hooks into)")
    return found


def layer_kinds(model: nn.Module, *, include_linear: bool = False) -> dict[str, str]:
    """Each tracked layer's kind, for colouring plots: ``"stem"``, ``"depthwise"``, ``"pointwise"``, ``"last"``
    (the last 1x1 conv), ``"conv"`` (any other conv), ``"linear"``.

    >>> from profit_edu import models, quantize_model
    >>> kinds = layer_kinds(quantize_model(models.mobilenet_v2(10, width_mult=0.25), 4, 4))
    >>> kinds["features.0.0"], kinds["features.1.conv.0.0"], kinds["features.1.conv.1"], kinds["features.18.0"]
    ('stem', 'depthwise', 'pointwise', 'last')
    """
    layers = tracked_layers(model, include_linear=include_linear)
    convs = [n for n, m in layers if isinstance(m, nn.Conv2d) and not _is_se_conv(n, model)]
    kinds = {}
    for name, m in layers:
        if isinstance(m, nn.Linear) or _is_se_conv(name, model):
            kinds[name] = "linear"
        elif name == convs[0]:
            kinds[name] = "stem"
        elif m.groups > 1 and m.groups == m.in_channels:
            kinds[name] = "depthwise"
        elif name == convs[-1] and m.kernel_size == (1, 1):
            kinds[name] = "last"
        elif m.kernel_size == (1, 1):
            kinds[name] = "pointwise"
        else:
            kinds[name] = "conv"
    return kinds
