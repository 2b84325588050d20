"""Quantized layers, negative padding, and the one verb that quantizes a float model.

Where quantizers sit (PROFIT's placement, B.5 of the notes):

* every ``nn.Conv2d`` and ``nn.Linear`` gets a *signed* weight quantizer;
* every ReLU / ReLU6 module gets an *unsigned* activation quantizer, every ``nn.Hardswish`` module an
  *h-swish* (offset) one;
* a :class:`QuantPoint` marks a tensor that is quantized without an activation: the signed input of a
  residual block, or a pooled vector. Models place them; float models run them as the identity.

Everything else (SE's hard-sigmoid, residual adds, pooling, functional activations) stays float.

*Negative padding.* After an h-swish quantizer, integer code 0 stands for the real value -3/8, not 0.
A convolution over such codes with ordinary integer-zero padding is therefore a convolution over real
values padded with -3/8. :class:`QConv2d` pads with the real value of its input quantizer's code 0, so
the fake-quantized model and an integer engine compute the same thing at every pixel, border included::

    conv(y padded with -3/8) = step * conv(codes padded with 0) - 3/8 * sum(w)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .clip_init import clip_range, sample_values
from .grid import _check_mode, check_bits
from .quant import Quantizer, make_quantizer

__all__ = [
    "KEEP",
    "Conv2dPad",
    "QAct",
    "QConv2d",
    "QLinear",
    "QuantPoint",
    "calibrate",
    "quantize_model",
    "quantizers",
    "set_bits",
]

log = logging.getLogger(__name__)

#: Sentinel for :func:`set_bits`: leave this bit width as it is.
KEEP: Any = type("Keep", (), {"__repr__": lambda self: "KEEP"})()

FilterFn = Callable[[nn.Module, str], bool]
#: How :func:`calibrate` runs BatchNorm: running statistics, batch statistics, or train mode (updating them).
BN_MODES = ("running", "batch", "update")
UNSIGNED_ACTS = (nn.ReLU, nn.ReLU6)


class QuantPoint(nn.Identity):
    """A named place where the paper quantizes a tensor that no activation module produces.

    ``mode="signed"`` at residual-block inputs (block outputs are signed), ``"unsigned"`` / ``"hswish"``
    for pooled vectors. It is the identity in a float model; :func:`quantize_model` replaces it by a
    quantizer-only :class:`QAct`.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = _check_mode(mode)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class Conv2dPad(nn.Conv2d):
    """``nn.Conv2d`` that pads with a constant ``pad_value`` (e.g. -3/8) before an unpadded convolution.

    With ``pad_value=0`` it is exactly ``nn.Conv2d``. Same parameters, so state dicts are interchangeable.
    """

    def __init__(self, *args: Any, pad_value: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("Conv2dPad needs numeric padding with padding_mode='zeros'")
        self.pad_value = float(pad_value)

    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        ph, pw = self.padding
        if self.pad_value != 0.0 and (ph or pw):
            x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", pad_value={self.pad_value}" if self.pad_value else "")


def _weight_quantizer(method: str, bits: int | None, init_style: str) -> Quantizer:
    return make_quantizer(method, "signed", bits, role="weight", init_style=init_style)


class QConv2d(Conv2dPad):
    """Conv2d with a signed weight quantizer and padding by the real value of its input's code 0.

    Attributes:
        weight_quant: the weight quantizer (``bits=None``: float weights).
        fp_pad_value: what the float layer padded with (used while the input is not quantized).
        input_from: name of the :class:`QAct` feeding this conv, when known; :func:`set_bits` then sets
            ``pad_value`` to that quantizer's ``zero_value`` (-3/8 after h-swish DuQ).
    """

    def __init__(self, *args: Any, weight_quant: Quantizer, input_from: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.weight_quant = weight_quant
        self.fp_pad_value = self.pad_value
        self.input_from = input_from

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quant: Quantizer, input_from: str | None = None) -> QConv2d:
        """Wrap a float conv, sharing its weight and bias tensors (nothing is copied)."""
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
            pad_value=getattr(conv, "pad_value", 0.0), weight_quant=weight_quant, input_from=input_from,
            device="meta",
        )
        q.weight, q.bias = conv.weight, conv.bias
        return q

    def to_float(self) -> Conv2dPad:
        conv = Conv2dPad(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, bias=self.bias is not None, pad_value=self.fp_pad_value,
            device="meta",
        )
        conv.weight, conv.bias = self.weight, self.bias
        return conv

    def quantized_weight(self) -> Tensor:
        return self.weight_quant(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight_quant(self.weight))


class QLinear(nn.Linear):
    """Linear layer with a signed weight quantizer (biases stay float, as in the paper)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, weight_quant: Quantizer,
                 **kwargs: Any) -> None:
        super().__init__(in_features, out_features, bias, **kwargs)
        self.weight_quant = weight_quant

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quant: Quantizer) -> QLinear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, weight_quant=weight_quant,
                device="meta")
        q.weight, q.bias = linear.weight, linear.bias
        return q

    def to_float(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None, device="meta")
        lin.weight, lin.bias = self.weight, self.bias
        return lin

    def quantized_weight(self) -> Tensor:
        return self.weight_quant(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_quant(self.weight), self.bias)


class QAct(nn.Module):
    """An activation followed by its quantizer, or a quantizer alone (``act=None``).

    With ``quantizer.bits=None`` it computes exactly the float activation. When quantizing, an unsigned
    quantizer already clips at 0 and at its learnable clip, so it *replaces* ReLU and ReLU6 (the official
    code does the same: the learned clip ``a`` takes over ReLU6's bound 6, which only caps ``a``'s
    initial value). H-swish is applied, then quantized on the offset grid.
    """

    def __init__(self, act: nn.Module | None, quantizer: Quantizer) -> None:
        super().__init__()
        if act is not None and not isinstance(act, (*UNSIGNED_ACTS, nn.Hardswish)):
            raise TypeError(f"QAct supports ReLU, ReLU6, Hardswish or None, got {type(act).__name__}")
        if act is not None and hasattr(act, "inplace"):
            act = type(act)(inplace=False)  # the pre-activation may be needed for initialisation
        self.act = act
        self.quantizer = quantizer
        self._subsumed = isinstance(act, UNSIGNED_ACTS) and quantizer.mode == "unsigned"
        self._cap = 6.0 if isinstance(act, nn.ReLU6) else None

    def forward(self, x: Tensor) -> Tensor:
        q = self.quantizer
        if q.bits is None:
            return x if self.act is None else self.act(x)
        y = x if (self.act is None or self._subsumed) else self.act(x)
        if not q._ready:  # first quantized batch: initialise a, c from it (see clip_init.act_init_value)
            self.init_quantizer(x, y)
        return q.quantize(y)

    def init_quantizer(self, x: Tensor, y: Tensor | None = None) -> None:
        """Initialise the quantizer from a batch of this module's *inputs* ``x``, as its first quantized forward
        does: from ``x`` itself in the ``"reference"`` style, else from the activation's output (``y``, when the
        caller has it). Training on several processes calls it with every process's batch (see
        :mod:`profit_edu.distributed`), so that all initialise alike."""
        q = self.quantizer
        if y is None:
            y = x if (self.act is None or self._subsumed) else self.act(x)
        post = self.act(x) if self._subsumed else y
        q.init_on_first_use(x if q.init_style == "reference" else post, cap=self._cap)


# --------------------------------------------------------------------------------------------
# Model surgery
# --------------------------------------------------------------------------------------------
def quantizers(model: nn.Module, role: str | None = None) -> Iterator[tuple[str, Quantizer]]:
    """All quantizers of a model with their names, optionally only ``role="weight"`` or ``"act"``."""
    for name, m in model.named_modules():
        if isinstance(m, Quantizer) and (role is None or m.role == role):
            yield name, m


class _PointTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (QuantPoint, QAct, nn.Conv2d, nn.Linear, *UNSIGNED_ACTS, nn.Hardswish)):
            return True
        return super().is_leaf_module(m, qualname)


def _find_conv_inputs(model: nn.Module) -> dict[str, str]:
    """Map each conv that directly consumes an activation/quant-point module's output to that module's name."""
    try:
        graph = _PointTracer().trace(model)
    except Exception as err:  # fx raises many error types on untraceable code
        raise TypeError(
            "quantize_model needs to know which convs read h-swish outputs (for negative padding), but "
            f"torch.fx could not trace {type(model).__name__}: {err}. Pass input_quantizers={{conv_name: "
            "act_name}} explicitly."
        ) from err
    modules = dict(model.named_modules())
    points = (QuantPoint, QAct, *UNSIGNED_ACTS, nn.Hardswish)
    found: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        src = node.args[0] if node.args else None
        if isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(modules[src.target], points):
            found[node.target] = src.target
    return found


def _needs_padding_map(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Hardswish) or (isinstance(m, QuantPoint) and m.mode == "hswish")
               for m in model.modules())


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _quantized_twin(m: nn.Module, name: str, method: str, weight_bits: int | None, act_bits: int | None,
                    init_style: str, input_from: str | None) -> nn.Module | None:
    """The quantized module that replaces ``m`` (named ``name`` in the model), or None if ``m`` stays as it is."""
    def act_q(mode: str) -> Quantizer:
        return make_quantizer(method, mode, act_bits, role="act", init_style=init_style)

    if isinstance(m, nn.Conv2d):
        weight_q = _weight_quantizer(method, weight_bits, init_style)
        new: nn.Module = QConv2d.from_float(m, weight_q, input_from=input_from)
    elif isinstance(m, nn.Linear):
        new = QLinear.from_float(m, _weight_quantizer(method, weight_bits, init_style))
    elif isinstance(m, UNSIGNED_ACTS):
        new = QAct(m, act_q("unsigned"))
    elif isinstance(m, nn.Hardswish):
        new = QAct(m, act_q("hswish"))
    elif isinstance(m, QuantPoint):
        new = QAct(None, act_q(m.mode))
    else:
        return None
    if isinstance(new, QAct):
        new.quantizer.where = f"the activation quantizer {name}"
    else:
        new.weight_quant.where = f"the weight quantizer of {name}"
    return new


def quantize_model(
    model: nn.Module,
    weight_bits: int | None = 4,
    act_bits: int | None = 4,
    *,
    method: str = "duq",
    init_style: str = "fixed",
    filter_fn: FilterFn | None = None,
    input_quantizers: dict[str, str] | None = None,
) -> nn.Module:
    """Replace a float model's layers by quantized ones, in place, keeping every weight; returns the model.

    Convs and linears become :class:`QConv2d` / :class:`QLinear` (signed weight quantizers); ReLU, ReLU6,
    Hardswish modules and :class:`QuantPoint` markers become :class:`QAct`. Quantizers initialise from the
    first batch they see (activations) or from the weight (a = c = 0.9 max|W|), unless :func:`calibrate`
    ran first. Convs fed by an h-swish quantizer pad with -3/8 once activations are quantized.

    Args:
        model: a float model (any ``nn.Module``).
        weight_bits, act_bits: 2..8, or None for float (then the model computes exactly what it did).
        method: "duq" (PROFIT), "pact" or "lsq".
        init_style: "fixed" or "reference" (the official code's initialisation, see ``clip_init.act_init_value``).
        filter_fn: ``filter_fn(module, name) -> bool`` chooses which modules to quantize (default: all).
        input_quantizers: ``{conv_name: act_name}`` for models that torch.fx cannot trace.

    Raises:
        TypeError / ValueError: bad bit widths or method; an already-quantized model.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU6(), nn.Flatten(), nn.Linear(64, 2))
    >>> qnet = quantize_model(net, weight_bits=4, act_bits=4)
    >>> [type(m).__name__ for m in qnet]
    ['QConv2d', 'QAct', 'Flatten', 'QLinear']
    """
    check_bits(weight_bits, "weight_bits")
    check_bits(act_bits, "act_bits")
    if any(isinstance(m, (QConv2d, QLinear, QAct)) for m in model.modules()):
        raise ValueError("model is already quantized: use set_bits(model, ...) to change its bit widths")
    if input_quantizers is None:
        input_quantizers = _find_conv_inputs(model) if _needs_padding_map(model) else {}
    keep = filter_fn or (lambda m, n: True)

    device = next(model.parameters(), torch.empty(0)).device
    for name, m in list(model.named_modules()):
        if name and keep(m, name):
            new = _quantized_twin(m, name, method, weight_bits, act_bits, init_style, input_quantizers.get(name))
            if new is not None:
                _replace(model, name, new.to(device))
    _sync_padding(model)
    return model


def set_bits(
    model: nn.Module, weight_bits: int | None = KEEP, act_bits: int | None = KEEP, *,
    filter_fn: FilterFn | None = None,
) -> nn.Module:
    """Change bit widths of a quantized model; learned a and c are kept (PROFIT lowers 8 -> 5 -> 4 this way).

    Omit an argument (or pass ``KEEP``) to leave it unchanged; None switches quantization off.
    ``filter_fn(module, name)`` selects which :class:`QConv2d`/:class:`QLinear`/:class:`QAct` to change.
    """
    if weight_bits is not KEEP:
        check_bits(weight_bits, "weight_bits")
    if act_bits is not KEEP:
        check_bits(act_bits, "act_bits")
    found = False
    for name, m in model.named_modules():
        if isinstance(m, (QConv2d, QLinear, QAct)):
            found = True
            if filter_fn is not None and not filter_fn(m, name):
                continue
            if isinstance(m, QAct):
                if act_bits is not KEEP:
                    m.quantizer.bits = act_bits
            elif weight_bits is not KEEP:
                m.weight_quant.bits = weight_bits
    if not found:
        raise ValueError("model has no quantized layers: call quantize_model(model, ...) first")
    _sync_padding(model)
    return model


def _sync_padding(model: nn.Module) -> None:
    """Pad each conv with the real value of its input quantizer's code 0 while that quantizer is on."""
    for name, m in model.named_modules():
        if isinstance(m, QConv2d) and m.input_from is not None:
            try:
                src = model.get_submodule(m.input_from)
            except AttributeError as err:
                raise KeyError(f"{name}.input_from names {m.input_from!r}, which is not a module of the model") from err
            if isinstance(src, QAct) and src.quantizer.bits is not None:
                m.pad_value = src.quantizer.zero_value
            else:
                m.pad_value = m.fp_pad_value


def _as_batches(data: Tensor | Iterable[Tensor] | Iterable[tuple[Tensor, ...]],
                device: torch.device | None = None) -> list[Tensor]:
    """One tensor, or an iterable of tensors or of ``(x, y)`` pairs (a loader), as a list of input batches (moved
    to ``device`` when given)."""
    items = [data] if isinstance(data, Tensor) else list(data)
    batches = [b[0] if isinstance(b, (tuple, list)) else b for b in items]
    for i, b in enumerate(batches):
        if not isinstance(b, Tensor):
            raise TypeError(f"calibrate takes a tensor, or tensors or (x, y) pairs; item {i} is {type(b).__name__}")
    if not batches or all(b.numel() == 0 for b in batches):
        raise ValueError("calibrate got no images: pass at least one non-empty batch")
    return [b if device is None else b.to(device, non_blocking=True) for b in batches if b.numel() > 0]


class _Collector:
    """What calibration keeps of one quantizer's input: a bounded random sample of all batches and its range."""

    def __init__(self, name: str, seed: int, *, keep_first: bool) -> None:
        self.name, self.seed, self.keep_first = name, seed, keep_first
        self.samples: list[Tensor] = []
        self.first: Tensor | None = None  # the whole first batch: the official percentile rule uses only it
        self.high = -math.inf

    def add(self, v: Tensor, mode: str) -> None:
        v = v.detach()
        bad = int((~torch.isfinite(v)).sum())
        if bad:
            raise ValueError(f"calibration: the input of {self.name} has {bad} NaN or inf values (of {v.numel()}); "
                             "check the images and the float model")
        if self.keep_first and self.first is None:
            self.first = v
        self.high = max(self.high, clip_range(v, mode))
        self.samples.append(sample_values(v, seed=self.seed + len(self.samples)))


@torch.no_grad()
def calibrate(
    model: nn.Module,
    data: Tensor | Iterable[Tensor] | Iterable[tuple[Tensor, ...]],
    *,
    bn: str = "running",
    keep_learned: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Initialise every quantizer of a quantized model from data; returns the model.

    The batches run through the *float* network (every activation quantizer switched off), and each activation
    quantizer records its input. Then, for every quantizer with a bit width, ``init_from`` chooses the clip:
    in ``"fixed"`` style the clip that minimises the quantization MSE over a sample of all the batches (see
    :func:`~profit_edu.clip_init.mse_clip`), in ``"reference"`` style the official code's percentile rule over the
    first batch. Weight quantizers initialise from their weights. Quantizers with ``bits=None`` stay as they are.

    Args:
        model: a model returned by :func:`quantize_model`.
        data: one batch ``(N, C, H, W)``, or an iterable of batches or of ``(x, y)`` pairs (a loader; every
            batch it yields is used, so pass a few: 4 batches of 256 CIFAR-10 images take seconds). Batches on
            another device than the model (a plain ``DataLoader`` yields CPU tensors) are moved to the model's.
        bn: how BatchNorm normalises during the pass. ``"running"`` (default; for post-training quantization):
            eval mode, with the running statistics, which stay as they are. ``"batch"`` (before quantization-aware
            training): with each batch's own statistics, as training will, and the running statistics still
            untouched (a model whose running statistics lag its weights, e.g. one trained briefly, otherwise
            gets clips for activations it never produces in training). ``"update"``: train mode, updating the
            running statistics once per batch, as the official code did.
        keep_learned: for quantizers already initialised (e.g. trained at more bits before ``set_bits`` lowered
            them), keep the learned parameters unless the new clip quantizes the same data with a lower mean
            squared error at the current bit width. Uninitialised quantizers are initialised either way.
        seed: seeds the subsampling of large activations.

    Raises:
        ValueError: no quantized layer; no images; NaN or inf in an activation or a weight (naming the layer).
        RuntimeError: a quantizer the batches never reached.
    """
    batches = _as_batches(data, device=next((p.device for p in model.parameters()), None))
    acts = {name: m for name, m in model.named_modules() if isinstance(m, QAct)}
    weights = {name: m for name, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))}
    if not acts and not weights:
        raise ValueError("model has no quantized layers: call quantize_model(model, ...) first")
    for name, m in weights.items():
        if m.weight_quant.bits is not None:
            _init_quantizer(m.weight_quant, m.weight, f"the weight of {name}", keep_learned=keep_learned)
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    collectors = _collect(model, acts, batches, bn=bn, seed=seed)
    for name, m in acts.items():
        q = m.quantizer
        if q.bits is None:
            continue
        col = collectors[name]
        if not col.samples:
            raise RuntimeError(f"activation quantizer {name} was not reached by the calibration batches")
        if q.init_style == "reference":
            _init_quantizer(q, col.first, name, keep_learned=keep_learned, cap=m._cap)
        else:
            _init_quantizer(q, torch.cat(col.samples), name, keep_learned=keep_learned, cap=m._cap, high=col.high)
    return model


@torch.no_grad()
def _init_quantizer(q: Quantizer, x: Tensor, where: str, *, keep_learned: bool, **kwargs: Any) -> None:
    """``q.init_from(x)``; with ``keep_learned``, an initialised quantizer keeps its state unless that is worse."""
    learned = {k: v.clone() for k, v in q.state_dict().items()} if keep_learned and q._ready else None
    x = x.detach()
    try:
        q.init_from(x, **kwargs)
    except ValueError as err:
        raise ValueError(f"calibration of {where}: {err}") from err
    if learned is not None:
        new_error = float((q.quantize(x) - x).pow(2).mean())
        fresh = {k: v.clone() for k, v in q.state_dict().items()}
        q.load_state_dict(learned)
        learned_error = float((q.quantize(x) - x).pow(2).mean())
        if not math.isfinite(learned_error) or new_error < learned_error:
            q.load_state_dict(fresh)


def _collect(model: nn.Module, acts: dict[str, QAct], batches: list[Tensor], *, bn: str,
             seed: int) -> dict[str, _Collector]:
    """Run ``batches`` through the float network; each QAct's collector keeps what its quantizer would see.

    A ``"reference"``-style quantizer sees its raw input (the official code's hook saw the pre-activation);
    a ``"fixed"`` one sees the activation's output, the tensor it actually quantizes.
    """
    collectors = {name: _Collector(name, seed, keep_first=m.quantizer.init_style == "reference")
                  for name, m in acts.items()}
    saved_bits = {name: m.quantizer.bits for name, m in acts.items()}
    modes = {m: (m.training, getattr(m, "track_running_stats", None)) for m in model.modules()}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(mod: QAct, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            seen = inputs[0] if mod.quantizer.init_style == "reference" else output
            collectors[name].add(seen, mod.quantizer.mode)
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in acts.items()]
    try:
        for m in acts.values():
            m.quantizer.bits = None
        model.train(bn == "update")
        if bn == "batch":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()  # normalise with the batch's statistics ...
                    m.track_running_stats = False  # ... and leave the running ones (and their count) alone
        for b in batches:
            model(b)
    finally:
        for h in handles:
            h.remove()
        for name, m in acts.items():
            m.quantizer.bits = saved_bits[name]
        for m, (training, track) in modes.items():
            m.training = training
            if track is not None:
                m.track_running_stats = track
    return collectors
