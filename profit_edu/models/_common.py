"""Pieces shared by the MobileNets: conv + BN + activation, channel rounding, argument checks, MAC and
parameter counting, and strict loading of torchvision state dicts.

Counting conventions (the ones torchvision's model cards and the MobileNet papers use):

``MACs``
    multiply-accumulates of the convolutions and linear layers only, for one image:
    a conv costs ``out_elements * (in_channels / groups) * kh * kw``, a linear ``in_features * out_features``.
    BatchNorm, activations, pooling, residual adds and the SE multiply are not counted. (torchvision calls
    the same number "GFLOPS" in its weight records: 0.301 for MobileNet-v2 at 224x224.)
``params``
    the number of scalars in ``model.parameters()`` (BatchNorm's running statistics are buffers, not counted).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..layers import Conv2dPad

__all__ = [
    "ConvBNAct",
    "check_builder_args",
    "check_images",
    "count_macs",
    "count_params",
    "init_weights",
    "load_torchvision_weights",
    "make_divisible",
    "stem_stride_for",
]

log = logging.getLogger(__name__)

STEM_STRIDES = (1, 2)
_MAX_KEYS_SHOWN = 12  # long key lists are cut in error messages


# --------------------------------------------------------------------------------------------
# Channel rounding and argument checks
# --------------------------------------------------------------------------------------------
def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor``, never below ``divisor`` or 90% of ``v``.

    This is the rounding of TensorFlow's MobileNet reference (and torchvision's), used by the width multiplier.

    >>> make_divisible(32 * 0.75), make_divisible(16 * 0.35), make_divisible(100)
    (24, 8, 104)
    """
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # rounding down must not remove more than 10% of the channels
        new_v += divisor
    return new_v


def check_builder_args(
    num_classes: object, width_mult: object, stem_stride: object, dropout: object = 0.0
) -> tuple[int, float, int | None, float]:
    """Validate the arguments every MobileNet builder takes; return them normalised.

    Raises:
        TypeError: ``num_classes`` or ``stem_stride`` not an int, ``width_mult`` or ``dropout`` not a number.
        ValueError: ``num_classes < 1``, ``width_mult <= 0``, ``stem_stride`` not in (1, 2) or None,
            ``dropout`` outside [0, 1).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes}")
    if isinstance(width_mult, bool) or not isinstance(width_mult, numbers.Real):
        raise TypeError(f"width_mult must be a positive number (e.g. 1.0, 0.75, 0.5), got {width_mult!r}")
    if not (math.isfinite(width_mult) and width_mult > 0):
        raise ValueError(f"width_mult must be a positive number (e.g. 1.0, 0.75, 0.5), got {width_mult}")
    if stem_stride is not None and (isinstance(stem_stride, bool) or stem_stride not in STEM_STRIDES):
        raise ValueError(f"stem_stride must be one of {STEM_STRIDES} or None (the default), got {stem_stride!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
        raise TypeError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout}")
    return int(num_classes), float(width_mult), (None if stem_stride is None else int(stem_stride)), float(dropout)


def check_images(x: object, weight: Tensor, model: str) -> None:
    """A MobileNet's input must be a float tensor (N, 3, H, W) of its weights' dtype (or any float under autocast).

    Raises:
        TypeError: naming the dtype received and the one accepted (integer pixels must be converted and
            normalised first; a float64 batch must be cast to the model's float32).
    """
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing (quantize_model finds the h-swish inputs this way)
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{model} takes a tensor of images (N, 3, H, W), got {type(x).__name__}")
    if x.dtype == weight.dtype or (x.is_floating_point() and torch.is_autocast_enabled(x.device.type)):
        return
    if x.is_floating_point():
        raise TypeError(f"{model} takes images of its weights' dtype {weight.dtype}, got {x.dtype}: cast them with "
                        f"x.to({weight.dtype}) (or the model with model.to({x.dtype}))")
    raise TypeError(f"{model} takes normalised float images of dtype {weight.dtype}, got {x.dtype}: convert integer "
                    "pixels with x.float() / 255 and normalise them (profit_edu.data's loaders do both)")


def stem_stride_for(cifar_stem: bool, stem_stride: int | None) -> int:
    """The stem's stride: 2 for ImageNet, 1 for the CIFAR stem, unless ``stem_stride`` says otherwise."""
    if not isinstance(cifar_stem, bool):
        raise TypeError(f"cifar_stem must be True or False, got {cifar_stem!r}")
    if stem_stride is not None:
        return stem_stride
    return 1 if cifar_stem else 2


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
class ConvBNAct(nn.Sequential):
    """Conv (padding ``(k-1)//2``, no bias) -> BatchNorm -> activation, as children ``0``, ``1``, ``2``.

    The child names match torchvision's ``Conv2dNormActivation``, so state-dict keys are the same.
    With ``activation=None`` the block ends after BN (the activation, if any, is applied by the caller).
    With ``pad_value`` set, the conv is a :class:`~profit_edu.layers.Conv2dPad` that pads with that value
    (the depthwise convs that read h-swish outputs, see negative padding in :mod:`profit_edu.layers`).

    Shapes: x: (N, in_channels, H, W) -> (N, out_channels, ceil(H / stride), ceil(W / stride))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        *,
        groups: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
        activation: nn.Module | None = None,
        pad_value: float | None = None,
    ) -> None:
        padding = (kernel_size - 1) // 2
        if pad_value is None:
            conv: nn.Conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                                        bias=False)
        else:
            conv = Conv2dPad(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False,
                             pad_value=pad_value)
        norm = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        layers: list[nn.Module] = [conv, norm]
        if activation is not None:
            layers.append(activation)
        super().__init__(*layers)


def init_weights(model: nn.Module) -> None:
    """The usual MobileNet initialisation: He (fan-out) convs, BN at (1, 0), linears N(0, 0.01), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------
def _as_input_shape(input_size: object) -> tuple[int, int, int]:
    if isinstance(input_size, numbers.Integral) and not isinstance(input_size, bool):
        input_size = (3, int(input_size), int(input_size))
    if (not isinstance(input_size, tuple | list) or len(input_size) != 3
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in input_size)):
        raise ValueError(f"input_size must be (channels, height, width) of positive ints, or one int for a square "
                         f"RGB image, got {input_size!r}")
    return tuple(int(s) for s in input_size)  # type: ignore[return-value]


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int | tuple[int, int, int]) -> int:
    """Multiply-accumulates of all convs and linears for one image (see the module docstring).

    Math: conv: numel(out) * (C_in / groups) * kh * kw;  linear: numel(out) * in_features.

    Runs one forward pass of a zero image in eval mode (each module's train/eval flag is restored after),
    with forward hooks on ``nn.Conv2d`` and ``nn.Linear`` (so quantized layers, their subclasses, count too).

    Args:
        model: any network of convs and linears.
        input_size: ``(C, H, W)`` of one image, or an int ``S`` for ``(3, S, S)``.

    Returns:
        The MAC count as an int.

    Raises:
        ValueError: malformed ``input_size``.

    >>> count_macs(nn.Conv2d(3, 8, 3, padding=1), (3, 4, 4))  # 4*4*8 outputs, 3*3*3 MACs each
    3456
    """
    shape = _as_input_shape(input_size)
    total = 0

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += out.numel() * (m.in_channels // m.groups) * kh * kw
        else:
            total += out.numel() * m.in_features

    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    param = next(model.parameters(), None)
    x = torch.zeros(1, *shape, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None else torch.float32)
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    return total


def count_params(model: nn.Module, *, trainable_only: bool = False) -> int:
    """The number of parameter scalars (buffers such as BN running statistics are not parameters).

    >>> count_params(nn.Linear(10, 3))
    33
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------
# Strict loading of torchvision weights
# --------------------------------------------------------------------------------------------
def _show(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


def _check_keys(name: str, own: Mapping[str, Tensor], state_dict: Mapping[str, Tensor]) -> list[str]:
    """Raise a KeyError listing missing and unexpected keys; return the missing BN counters (allowed)."""
    missing = [k for k in own if k not in state_dict]
    counters = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in counters]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (in the model, not in state_dict): {_show(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (in state_dict, not in the model): {_show(unexpected)}")
        hint = ""
        if unexpected and all(k.startswith("module.") for k in unexpected):
            hint = " The keys start with 'module.': strip that DataParallel prefix first."
        raise KeyError(f"state_dict does not match {name}: {'; '.join(parts)}. Build the model with the "
                       f"checkpoint's architecture (v2 / v3-large / v3-small) and width_mult, and load before "
                       f"quantize_model.{hint}")
    return counters


def _check_shapes(name: str, own: Mapping[str, Tensor], state_dict: Mapping[str, Tensor]) -> None:
    """Raise a TypeError for a value that is not a tensor, a ValueError listing every shape mismatch."""
    bad = []
    for k, v in state_dict.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"state_dict[{k!r}] must be a tensor, got {type(v).__name__}")
        if v.shape != own[k].shape:
            bad.append(f"{k!r}: state_dict has {tuple(v.shape)}, model has {tuple(own[k].shape)}")
    if bad:
        raise ValueError(f"state_dict does not match {name}: {len(bad)} shape mismatch(es): {'; '.join(bad)}. "
                         f"Build the model with the checkpoint's num_classes and width_mult.")


def load_torchvision_weights(model: nn.Module, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Load a torchvision MobileNet state dict into the matching float model, strictly; returns the model.

    Every key of the model must be in ``state_dict`` with the same shape, and ``state_dict`` must have no
    other key. (PROFIT's official code loaded with ``strict=False``, which silently left mismatched layers
    random: the notes, section C, trace a reported 0% accuracy to it.) One exception, as in
    ``nn.Module.load_state_dict``: checkpoints saved before PyTorch 0.4.1 lack BatchNorm's
    ``num_batches_tracked`` counters; those start at 0 (logged), since they are counters, not weights.

    Load weights *before* ``quantize_model``: a quantized model has quantizer parameters that torchvision
    checkpoints do not have.

    Args:
        model: a model from :func:`~profit_edu.models.mobilenet_v2`, ``mobilenet_v3_large`` or
            ``mobilenet_v3_small`` with the checkpoint's ``num_classes`` and ``width_mult``.
        state_dict: e.g. ``torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").state_dict()``.

    Raises:
        TypeError: ``state_dict`` is not a mapping of names to tensors.
        KeyError: keys missing from ``state_dict`` or unexpected in it (the message lists them).
        ValueError: keys whose shapes differ (the message lists them with both shapes).

    >>> from profit_edu.models import mobilenet_v3_small
    >>> a, b = mobilenet_v3_small(num_classes=10), mobilenet_v3_small(num_classes=10)
    >>> _ = load_torchvision_weights(b, a.state_dict())
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of parameter names to tensors, got {type(state_dict).__name__}")
    own = model.state_dict()
    counters = _check_keys(type(model).__name__, own, state_dict)
    _check_shapes(type(model).__name__, own, state_dict)
    full = dict(state_dict)
    for k in counters:
        full[k] = torch.zeros_like(own[k])
    if counters:
        log.info("state_dict has no BatchNorm num_batches_tracked counters (an old checkpoint); %d set to 0",
                 len(counters))
    model.load_state_dict(full, strict=True)
    return model
