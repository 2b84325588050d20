"""AIWQ: activation instability induced by weight quantization, measured per layer during training.

PROFIT (Park & Yoo, ECCV 2020) observes that at 4 bits and below, every SGD step moves a few latent weights
across a rounding threshold, so the *quantized* weights jump from level to level. A depthwise channel depends
on only 9 weights, so one jump shifts that channel's output distribution, and BatchNorm's running statistics
(averages over many steps) never match any single weight state. AIWQ measures how much one step of training
moves a layer's output distribution, *caused by the layer's own weights alone*:

1. keep last step's quantized weight ``W_old = Q(W_{t-1})`` (taken after step t-1's forward, before its
   optimizer step, with the ``a`` and ``c`` of that moment);
2. at step t, feed the layer's actual input ``X_t`` through both weights, with the layer's own stride,
   dilation, groups and padding: ``Y_new = conv(X_t, Q(W_t))`` (the real output) and
   ``Y_old = conv(X_t, W_old)``;
3. per output channel j, fit a Gaussian to each output (mean mu, *unbiased* variance sigma^2 over the batch
   and all pixels) and take the KL divergence of the new one from the old one; drop channels where either
   sigma is 0; average over the remaining channels.

Math (notes D.5; KL(N_new || N_old), no epsilon)::

    KL_j = ln(sigma_old / sigma_new) + (sigma_new^2 + (mu_new - mu_old)^2) / (2 sigma_old^2) - 1/2
    v_t(l) = mean_j KL_j                          # over channels with sigma_old, sigma_new > 0
    M(l) <- 0.999 M(l) + 0.001 v_t(l)             # M starts at 0; skipped when v_t(l) > 1

Why these choices:

* *Same input, pre-BN.* Both outputs see the same ``X_t`` and neither goes through BN, so only this layer's
  own weight (and weight quantizer) change is measured, not the drift of the layers before it, and not BN's
  normalisation, which would hide exactly the mean/variance jumps that upset BN's running statistics.
* *Per channel.* BN normalises each channel with its own running mean and variance, so a jump matters per
  channel; pooling all channels into one distribution would let large stable channels hide small unstable
  ones (typical in depthwise layers).
* *Gaussian.* Two moments per channel are cheap (two sums, :func:`channel_stats`) and are exactly what BN
  tracks; the KL of two Gaussians has the closed form above.
* *EMA and outlier skip.* Single-step values are noisy (a new batch, a learning-rate change); the EMA with
  time constant ~1000 steps averages them, and values above 1 (rare, huge jumps) are dropped so that one
  outlier cannot decide the ranking. Both are configurable.

What this module offers:

* :func:`gaussian_kl`, :func:`channel_stats`, :func:`aiwq_from_outputs` - the formula as pure tensor functions;
* :func:`layer_aiwq` - the metric for one layer and one batch, computed directly (the book's oracle);
* :class:`AIWQTracker` - forward hooks on every :class:`~profit_edu.layers.QConv2d` that measure AIWQ at every
  (or every k-th) training step at the cost of one extra convolution per layer, and the EMA ranking PROFIT
  freezes by;
* :class:`HookSet` - the hook owner the tracker shares with :mod:`profit_edu.diagnostics` (weight flips and BN
  drift, the instability's symptoms that chapter 5 plots).
* :func:`tracked_layers`, :func:`layer_kinds` - which layers are measured, and their kinds (defined in
  :mod:`profit_edu.models.kinds`, re-exported here).

Glossary: ``l`` a layer, ``t`` a training step, ``j`` an output channel, ``M(l)`` the EMA of AIWQ that ranks
the layers, ``Q(W)`` the fake-quantized weight (:meth:`QConv2d.quantized_weight`).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import check_int
from .layers import Conv2dPad
from .models.kinds import layer_kinds, tracked_layers

__all__ = [
    "AIWQTracker",
    "HookSet",
    "aiwq_from_outputs",
    "aiwq_from_stats",
    "channel_stats",
    "gaussian_kl",
    "layer_aiwq",
    "layer_kinds",
    "tracked_layers",
]

DEFAULT_EMA = 0.999  # official code: M <- 0.999 M + 0.001 v
DEFAULT_SKIP_ABOVE = 1.0  # official code: values > 1 are discarded
#: How the ranks of a distributed run combine AIWQ (see :class:`AIWQTracker`).
DISTRIBUTED_MODES = ("average", "batch")


# --------------------------------------------------------------------------------------------
# The formula, as pure functions
# --------------------------------------------------------------------------------------------
def gaussian_kl(mean_new: Tensor, var_new: Tensor, mean_old: Tensor, var_old: Tensor) -> Tensor:
    """KL(N(mean_new, var_new) || N(mean_old, var_old)), elementwise.

    Math: ln(sigma_old / sigma_new) + (sigma_new^2 + (mu_new - mu_old)^2) / (2 sigma_old^2) - 1/2

    Shapes: four tensors of one shape (or broadcastable) -> that shape. Variances must be > 0.

    >>> gaussian_kl(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1.0))
    tensor(0.5000)
    """
    return 0.5 * torch.log(var_old / var_new) + (var_new + (mean_new - mean_old) ** 2) / (2 * var_old) - 0.5


def _partial_sums(y: Tensor, *, inplace: bool = False, work: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel pivot p (the channel's first value) and the sums of d = y - p and of d^2 over the batch and the
    pixels (:func:`_sum_but_channels`, in float64). ``inplace=True`` overwrites ``y``
    with d^2 (for a temporary the caller owns); ``work`` is a buffer of y's shape to hold d (saves an allocation,
    which costs more than the arithmetic on a CPU).

    Shapes: y: (N, C, H, W) or (N, C) -> p (C,), s1 (C,), s2 (C,)
    """
    if y.dim() < 2:
        raise ValueError(f"a layer output needs a batch and a channel dim, got shape {tuple(y.shape)}")
    if y.dtype not in (torch.float32, torch.float64):
        y, inplace = y.float(), True  # half-precision outputs (autocast): square and sum in float32
    pixels = tuple(range(2, y.dim()))
    pivot = y[(slice(0, 1), slice(None), *[slice(0, 1)] * len(pixels))]  # (1, C, 1, 1)
    if inplace:
        pivot = pivot.clone()  # y is about to change under the view
        d = y.sub_(pivot)
    elif work is not None:
        d = torch.sub(y, pivot, out=work)
    else:
        d = y - pivot  # the one temporary
    s1 = _sum_but_channels(d, pixels)
    s2 = _sum_but_channels(d.mul_(d), pixels)
    return pivot.reshape(-1), s1, s2


def _sum_but_channels(d: Tensor, pixels: tuple[int, ...]) -> Tensor:
    """Sum over every dim but dim 1, in float64, in the order that is fast on a CPU: the contiguous pixels first
    for large maps, the batch first for maps of a few pixels (many tiny rows make a slow reduction)."""
    if not pixels:
        return d.sum(0, dtype=torch.float64)
    if d[0, 0].numel() >= 16:
        return d.sum(dim=pixels).sum(0, dtype=torch.float64)
    return d.sum(0).sum(dim=tuple(p - 1 for p in pixels), dtype=torch.float64)


def _finish_stats(pivot: Tensor, s1: Tensor, s2: Tensor, n: Tensor | int) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance per channel from :func:`_partial_sums` (n values per channel), in float64."""
    mean_d = s1 / n
    var = ((s2 - s1 * mean_d) / (n - 1)).clamp_min(0.0)
    return pivot.double() + mean_d, var


def channel_stats(y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased variance of a layer output, over the batch and all pixels.

    Math: with a per-channel pivot p (the channel's first value) and d = y - p over its n = N*H*W values,
    mean = p + sum(d)/n and var = (sum(d^2) - sum(d)^2/n) / (n - 1).

    Why not ``torch.var_mean(y, dim=(0, 2, 3))``: on the CPU that strided reduction is about 10x slower than
    plain sums over the contiguous pixel dims followed by a small sum over the batch (or batch first for maps of
    a few pixels), and it would dominate the tracker's cost. The shift by a pivot keeps the sum-of-squares
    formula accurate when a channel's mean is large against its spread, and gives exactly 0 for a constant
    channel (which AIWQ then drops). Partial sums are combined in float64. No permute or reshape copies; one
    temporary the size of ``y``.

    Shapes: y: (N, C, H, W) or (N, C) -> mean (C,), var (C,), float64

    >>> mean, var = channel_stats(torch.tensor([[1.0, 5.0], [3.0, 5.0]]))
    >>> mean.tolist(), var.tolist()
    ([2.0, 5.0], [2.0, 0.0])
    """
    if y.dim() < 2:
        raise ValueError(f"a layer output needs a batch and a channel dim, got shape {tuple(y.shape)}")
    n = y.numel() // y.shape[1] if y.shape[1] else 0
    if n < 2:
        raise ValueError(f"an unbiased variance needs >= 2 values per channel, got shape {tuple(y.shape)}")
    return _finish_stats(*_partial_sums(y), n)


def aiwq_from_stats(mean_new: Tensor, var_new: Tensor, mean_old: Tensor, var_old: Tensor) -> Tensor:
    """Mean over channels of :func:`gaussian_kl`, leaving out channels where either variance is 0.

    Returns a 0-dim tensor on the inputs' device (NaN when no channel is left), so a caller can keep it
    there without a device sync.

    Shapes: four (C,) tensors -> ()
    """
    keep = (var_new > 0) & (var_old > 0)
    kl = torch.where(keep, gaussian_kl(mean_new, var_new, mean_old, var_old), 0.0)
    return kl.sum() / keep.sum()  # 0 / 0 = NaN when every channel was dropped


def aiwq_from_outputs(y_new: Tensor, y_old: Tensor) -> Tensor:
    """AIWQ of one layer from its outputs under this step's and last step's weights (same input).

    Shapes: y_new, y_old: (N, C, H, W) or (N, C) -> () (NaN when every channel has zero variance)

    >>> y = torch.randn(8, 3, 4, 4)
    >>> float(aiwq_from_outputs(y, y))
    0.0
    """
    if y_new.shape != y_old.shape:
        raise ValueError(f"y_new and y_old must have one shape, got {tuple(y_new.shape)} and {tuple(y_old.shape)}")
    return aiwq_from_stats(*channel_stats(y_new), *channel_stats(y_old))


# --------------------------------------------------------------------------------------------
# One layer, computed directly
# --------------------------------------------------------------------------------------------
def _layer_output(layer: nn.Module, x: Tensor, weight: Tensor, *, aiwq_zero_pad: bool = False) -> Tensor:
    """The layer's pre-BN output with ``weight`` in place of its own, padded the way the layer pads.

    ``aiwq_zero_pad=True`` replays the official code's bug: pad with zeros even when the layer pads with -3/8.
    """
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    if isinstance(layer, Conv2dPad) and not aiwq_zero_pad:
        return layer._conv(x, weight)  # pads with pad_value (-3/8 after an h-swish quantizer), like forward
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" and not aiwq_zero_pad:
            return layer._conv_forward(x, weight, layer.bias)
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    raise TypeError(f"AIWQ is defined for Conv2d and Linear layers, got {type(layer).__name__}")


@torch.no_grad()
def layer_aiwq(conv: nn.Module, x: Tensor, w_old_q: Tensor, w_new_q: Tensor, *, aiwq_zero_pad: bool = False
               ) -> float:
    """AIWQ of one layer on one batch: the mean per-channel Gaussian KL between its outputs under two weights.

    Math: mean_j KL(N(mu_new_j, sigma_new_j^2) || N(mu_old_j, sigma_old_j^2)) over channels with sigma > 0,
    where Y_new = conv(x, w_new_q), Y_old = conv(x, w_old_q) (unbiased sigma over batch and pixels).

    Shapes: x: (N, C_in, H, W) (or (N, in_features) for a linear layer); weights: the layer's weight shape.

    Args:
        conv: a ``Conv2d`` (e.g. :class:`~profit_edu.layers.QConv2d`) or ``Linear``; its stride, dilation,
            groups, bias and padding (the value it pads with, e.g. -3/8) are used for both outputs.
        x: the layer's input.
        w_old_q, w_new_q: last step's and this step's quantized weights.
        aiwq_zero_pad: recompute ``Y_old`` with zero padding even where the layer pads with another value, as the
            official code does (notes D); ``Y_new`` keeps the layer's padding. Only for reproducing it (the
            recipe quirk of the same name).

    Returns:
        The value as a float (NaN when every channel has zero variance).

    Raises:
        TypeError: ``conv`` is neither a Conv2d nor a Linear.
        ValueError: a weight's shape differs from the layer's.

    >>> conv = nn.Conv2d(2, 3, 3, padding=1); x = torch.randn(4, 2, 5, 5); w = conv.weight.detach()
    >>> layer_aiwq(conv, x, w, w)
    0.0
    """
    if not isinstance(conv, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"AIWQ is defined for Conv2d and Linear layers, got {type(conv).__name__}")
    for name, w in (("w_old_q", w_old_q), ("w_new_q", w_new_q)):
        if not isinstance(w, Tensor) or w.shape != conv.weight.shape:
            shape = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"{name} must have the layer's weight shape {tuple(conv.weight.shape)}, got {shape}")
    y_new = _layer_output(conv, x, w_new_q)
    y_old = _layer_output(conv, x, w_old_q, aiwq_zero_pad=aiwq_zero_pad)
    return float(aiwq_from_outputs(y_new, y_old))


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------
class HookSet:
    """Owns forward hooks; ``remove()`` (or leaving a ``with`` block) detaches them all."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def remove(self) -> None:
        """Detach every hook; the recorded values stay readable."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> HookSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _world_size() -> int:
    """The number of processes of ``torch.distributed`` (1 when it is not initialised)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _add_up_ranks(parts: list[Tensor], n: Tensor) -> tuple[list[Tensor], Tensor]:
    """Every rank's per-channel partial sums (:func:`_partial_sums` of y_new, then of y_old) as the sums of the
    whole global batch: each rank shifts its sums to rank 0's pivots p0 (d' = d + delta, delta = p - p0, so
    s1' = s1 + n delta and s2' = s2 + 2 delta s1 + n delta^2; rank 0's are unchanged), then one ``all_reduce``
    adds them and the counts ``n`` up. Returns the six tensors (pivots now p0) and the total counts."""
    import torch.distributed as dist

    pivots = torch.stack([parts[0], parts[3]]).double()
    p0 = pivots.clone()
    dist.broadcast(p0, src=0)
    delta = pivots - p0
    s1, s2 = torch.stack([parts[1], parts[4]]), torch.stack([parts[2], parts[5]])
    total = torch.cat([s1 + n * delta, s2 + 2 * delta * s1 + n * delta**2, n[None]])
    dist.all_reduce(total)
    return [p0[0], total[0], total[2], p0[1], total[1], total[3]], total[4]


# --------------------------------------------------------------------------------------------
# The tracker
# --------------------------------------------------------------------------------------------
class AIWQTracker(HookSet):
    """Measures AIWQ of every quantized conv during training with forward hooks, and ranks the layers by its EMA.

    How it works, per training step t (a forward in train mode; evaluation forwards are ignored):

    * a hook on each layer's *weight quantizer* keeps the quantized weight the forward just used, ``Q(W_t)``
      (no recomputation; a copy only when the weights are float and share the parameter's storage);
    * a hook on the layer computes ``Y_old = conv(X_t, W_old)`` with last step's snapshot, under
      ``torch.no_grad``, padded exactly as the layer pads (zero-padded with ``aiwq_zero_pad=True``, the
      official code's bug), and reduces ``Y_new`` and ``Y_old`` to per-channel sums (:func:`channel_stats`;
      ``Y_old`` in place, so one temporary for ``Y_new`` is the only extra memory);
    * then ``Q(W_t)`` becomes the snapshot for step t+1: taken after step t's forward and before its
      optimizer step, with the ``a`` and ``c`` of that moment, as in the official code;
    * at the start of the next forward (or when you read the results) the KL of every channel of every layer
      is computed at once, on the device, and the EMA ``M`` is updated with tensor ops: no ``.item()``, so no
      device sync, and a few dozen small kernels per step instead of a few per layer.

    The extra convolution with last step's weights is the floor of the cost; see
    ``benchmarks/aiwq_overhead.py`` for the measured ratio.

    *Sampling every k-th step* (``every=k``): the snapshot is kept only at steps t = k-1, 2k-1, ... and used at
    the next step, so each value still measures one optimizer step, at 1/k of the cost.

    *Epochs.* Call :meth:`reset_epoch` at the start of each epoch: snapshots are dropped, so the first step
    after it gives no value (as in the official code).

    *Distributed training (DDP).* With ``distributed="average"`` (the default) each rank measures AIWQ on its own
    sub-batch and keeps its own EMA (the official code used GPU 0's sub-batch only). :meth:`sync` averages ``M``
    over all ranks with one ``all_reduce``; :meth:`values` and :meth:`ranking` call it by default, so every rank
    freezes the same layers. Averaging the EMAs equals the EMA of the rank-averaged values, except where one rank
    skipped an outlier that another kept. Every rank must then call :meth:`values` / :meth:`ranking` together.
    With ``distributed="batch"`` the ranks add up their per-channel sums at every measured step (one
    ``all_reduce`` at the end of the step's forward), so each rank measures the whole global batch, exactly what one
    process training on it would, and all hold the same ``M``. Without ``torch.distributed`` both are the same.

    Args:
        model: a quantized model (the hooks go on its :class:`~profit_edu.layers.QConv2d` layers).
        ema: the EMA decay of ``M`` (official: 0.999).
        skip_above: per-step values above this are not averaged in (official: 1.0); ``math.inf`` keeps all.
        include_linear: also track linear layers (classifier, squeeze-excitation).
        every: measure every ``every``-th training step (1: every step).
        aiwq_zero_pad: recompute ``Y_old`` with zero padding, as the official code did for -3/8-padded layers
            (the recipe quirk of the same name).
        raw_history: how many recent raw per-step values to keep per layer for plots (0: none).
        distributed: ``"average"`` or ``"batch"``: how ranks combine their measurements (see above).

    Raises:
        ValueError: bad arguments, or a model without quantized convs.

    >>> from profit_edu import models, quantize_model
    >>> net = quantize_model(models.mobilenet_v2(10, width_mult=0.25, cifar_stem=True), 4, 4)
    >>> tracker = AIWQTracker(net)
    >>> for _ in range(3):
    ...     _ = net(torch.randn(4, 3, 32, 32))
    >>> len(tracker.layers), tracker.counts()["features.0.0"]
    (52, 2)
    """

    def __init__(self, model: nn.Module, *, ema: float = DEFAULT_EMA, skip_above: float = DEFAULT_SKIP_ABOVE,
                 include_linear: bool = False, every: int = 1, aiwq_zero_pad: bool = False,
                 raw_history: int = 1000, distributed: str = "average") -> None:
        super().__init__()
        if not isinstance(ema, (int, float)) or isinstance(ema, bool) or not 0 <= ema < 1:
            raise ValueError(f"ema must be a number in [0, 1), got {ema!r}")
        if not isinstance(skip_above, (int, float)) or isinstance(skip_above, bool) or not skip_above > 0:
            raise ValueError(f"skip_above must be a number > 0 (math.inf keeps every value), got {skip_above!r}")
        if not isinstance(raw_history, int) or isinstance(raw_history, bool) or raw_history < 0:
            raise ValueError(f"raw_history must be an int >= 0, got {raw_history!r}")
        if distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed must be one of {DISTRIBUTED_MODES}, got {distributed!r}")
        self.distributed = distributed
        self.ema = float(ema)
        self.skip_above = float(skip_above)
        self.every = check_int("every", every, 1)
        self.aiwq_zero_pad = bool(aiwq_zero_pad)
        self.raw_history = raw_history
        self.model = model
        layers = tracked_layers(model, include_linear=include_linear)
        self.layers: list[str] = [n for n, _ in layers]
        self.step = 0  # training forwards seen
        self._measure = self._keep = False  # what this step does (set by the model's pre-hook)
        self._current: dict[int, Tensor] = {}  # Q(W_t) of this step, by layer index
        self._snapshot: dict[int, Tensor] = {}  # W_old, by layer index
        self._pending: list[tuple[int, int, tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]] = []
        self._segments: dict[tuple, tuple[Tensor, Tensor]] = {}  # cached channel -> layer maps
        self._m: Tensor | None = None  # M(l), (L,), on the device of the first measurement
        self._n: Tensor | None = None  # values averaged into M(l), (L,)
        self._raw: Tensor | None = None  # ring buffer (raw_history, L) of raw values, NaN = no value
        self._raw_steps: deque[int] = deque(maxlen=raw_history or None)
        self._raw_total = 0
        self._work: Tensor | None = None  # CPU scratch buffer for Y_new - pivot
        self._handles.append(model.register_forward_pre_hook(self._on_model_forward))
        if distributed == "batch":  # every rank adds up its sums at the same moment: the end of the step's forward
            self._handles.append(model.register_forward_hook(lambda m, inputs, out: self._flush()))
        for i, (_, layer) in enumerate(layers):
            self._handles.append(layer.weight_quant.register_forward_hook(self._weight_hook(i, layer)))
            self._handles.append(layer.register_forward_hook(self._layer_hook(i)))

    # -- hooks --------------------------------------------------------------------------------
    def _on_model_forward(self, model: nn.Module, inputs: tuple[Any, ...]) -> None:
        self._flush()
        if not model.training:
            self._measure = self._keep = False
            return
        self.step += 1
        self._measure = self.step % self.every == 0
        self._keep = (self.step + 1) % self.every == 0

    def _weight_hook(self, i: int, layer: nn.Module):
        def hook(quantizer: nn.Module, inputs: tuple[Tensor, ...], w_q: Tensor) -> None:
            if self._keep and layer.training:
                w_q = w_q.detach()
                if w_q.data_ptr() == layer.weight.data_ptr():  # float weights: the optimizer will overwrite them
                    w_q = w_q.clone()
                self._current[i] = w_q

        return hook

    def _layer_hook(self, i: int):
        def hook(layer: nn.Module, inputs: tuple[Tensor, ...], y_new: Tensor) -> None:
            if not layer.training:
                return
            w_old = self._snapshot.pop(i, None)
            if self._measure and w_old is not None:
                with torch.no_grad():
                    new = _partial_sums(y_new.detach(), work=self._workspace(y_new))
                    y_old = _layer_output(layer, inputs[0], w_old, aiwq_zero_pad=self.aiwq_zero_pad)
                    old = _partial_sums(y_old, inplace=True)  # y_old is ours: overwrite it, no temporary
                self._pending.append((i, y_new.numel() // y_new.shape[1], new, old))
            w_new = self._current.pop(i, None)
            if self._keep and w_new is not None:
                self._snapshot[i] = w_new

        return hook

    def _workspace(self, y: Tensor) -> Tensor | None:
        """A reused buffer of y's shape, on the CPU only (CUDA's caching allocator makes temporaries cheap)."""
        if y.device.type != "cpu" or y.dtype not in (torch.float32, torch.float64) or not y.is_contiguous():
            return None
        if self._work is None or self._work.numel() < y.numel() or self._work.dtype != y.dtype:
            self._work = torch.empty(y.numel(), dtype=y.dtype)
        return self._work[: y.numel()].view(y.shape)

    # -- the batched update ------------------------------------------------------------------------
    def _segment_map(self, ids: list[int], sizes: list[int], pixels: list[int], device: torch.device):
        """(layer index of each concatenated channel, values per channel) for this set of pending layers."""
        key = (tuple(ids), tuple(sizes), tuple(pixels), str(device))
        if key not in self._segments:
            counts = torch.tensor(sizes, device=device)
            seg = torch.repeat_interleave(torch.tensor(ids, device=device), counts)
            n = torch.repeat_interleave(torch.tensor(pixels, dtype=torch.float64, device=device), counts)
            self._segments[key] = (seg, n)
        return self._segments[key]

    def _flush(self) -> None:
        """Turn the pending per-channel sums of the last step into per-layer AIWQ values and update ``M``."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ids = [p[0] for p in pending]
        device = pending[0][2][0].device
        seg, n = self._segment_map(ids, [p[2][0].numel() for p in pending], [p[1] for p in pending], device)
        cat = [torch.cat([p[k][j] for p in pending], dim=-1) for k in (2, 3) for j in range(3)]
        if self.distributed == "batch" and _world_size() > 1:
            cat, n = _add_up_ranks(cat, n)
        mean_new, var_new = _finish_stats(*cat[:3], n)
        mean_old, var_old = _finish_stats(*cat[3:], n)
        keep = (var_new > 0) & (var_old > 0)
        kl = torch.where(keep, gaussian_kl(mean_new, var_new, mean_old, var_old), 0.0)
        L = len(self.layers)
        kl_sum = torch.zeros(L, dtype=torch.float64, device=device).index_add_(0, seg, kl)
        kept = torch.zeros(L, dtype=torch.float64, device=device).index_add_(0, seg, keep.double())
        v = kl_sum / kept  # NaN for layers with no channel left and for layers not measured this step
        self._update(v, pending_step=self.step)

    def _update(self, v: Tensor, pending_step: int) -> None:
        if self._m is None:
            self._m = torch.zeros(len(self.layers), dtype=torch.float64, device=v.device)
            self._n = torch.zeros(len(self.layers), dtype=torch.int64, device=v.device)
        elif self._m.device != v.device:  # restored on another device, or the model moved
            self._m, self._n = self._m.to(v.device), self._n.to(v.device)
        ok = (v <= self.skip_above) & ~torch.isnan(v)  # NaN: no value this step
        self._m = torch.where(ok, self.ema * self._m + (1.0 - self.ema) * v, self._m)
        self._n = self._n + ok
        if self.raw_history:
            if self._raw is None:
                self._raw = torch.full((self.raw_history, len(self.layers)), math.nan, dtype=torch.float64,
                                       device=v.device)
            self._raw[self._raw_total % self.raw_history] = v  # a ring buffer: bounded memory, no sync
            self._raw_total += 1
            self._raw_steps.append(pending_step)

    # -- control --------------------------------------------------------------------------------
    def reset_epoch(self) -> None:
        """Forget last step's weights (call at each epoch start): the next step gives no value."""
        self._flush()
        self._snapshot.clear()
        self._current.clear()

    def remove(self) -> None:
        """Detach the hooks; the values measured so far stay readable."""
        self._flush()
        self._work = None
        super().remove()

    def sync(self) -> None:
        """Average ``M`` (and sum the counts) over all ranks when ``torch.distributed`` is initialised."""
        import torch.distributed as dist

        self._flush()
        if self.distributed == "batch" or _world_size() == 1:  # "batch": every rank holds the global values already
            return
        m, n = self._state_tensors()
        dist.all_reduce(m)
        dist.all_reduce(n)
        self._m, self._n = m / dist.get_world_size(), n

    # -- results --------------------------------------------------------------------------------
    def _state_tensors(self) -> tuple[Tensor, Tensor]:
        self._flush()
        if self._m is None:
            device = next(self.model.parameters()).device
            return (torch.zeros(len(self.layers), dtype=torch.float64, device=device),
                    torch.zeros(len(self.layers), dtype=torch.int64, device=device))
        return self._m, self._n

    def values(self, *, sync: bool = True) -> dict[str, float]:
        """``M(l)`` of every tracked layer, in model order (0.0 for a layer that got no value yet)."""
        if sync:
            self.sync()
        return dict(zip(self.layers, self._state_tensors()[0].tolist()))

    def counts(self) -> dict[str, int]:
        """How many per-step values went into each layer's EMA (skipped outliers are not counted)."""
        return dict(zip(self.layers, self._state_tensors()[1].tolist()))

    def ranking(self, *, sync: bool = True) -> list[tuple[str, float]]:
        """Layers sorted by ``M`` in descending order (the most unstable first); ties keep model order."""
        return sorted(self.values(sync=sync).items(), key=lambda kv: -kv[1])

    def raw(self, name: str) -> tuple[list[int], list[float]]:
        """The raw per-step values of one layer (outliers included) over the last ``raw_history`` measured steps,
        oldest first, as (steps, values); steps where the layer had no value are left out."""
        if name not in self.layers:
            raise KeyError(f"{name!r} is not a tracked layer; tracked: {self.layers[:4]} ...")
        self._flush()
        if self._raw is None:
            return [], []
        total, cap = self._raw_total, self.raw_history
        column = self._raw[:, self.layers.index(name)].tolist()
        values = column[total % cap:] + column[: total % cap] if total > cap else column[:total]
        pairs = [(s, v) for s, v in zip(self._raw_steps, values) if not math.isnan(v)]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs (JSON-friendly): layer names, ``M``, counts and the step counter."""
        m, n = self._state_tensors()
        return {"layers": list(self.layers), "ema_values": m.tolist(), "counts": n.tolist(), "step": self.step,
                "ema": self.ema, "skip_above": self.skip_above, "every": self.every}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Snapshots are not restored: the next step gives no value.

        Raises:
            ValueError: the state was saved for other layers.
        """
        if list(state.get("layers", [])) != self.layers:
            raise ValueError("the saved AIWQ state tracks other layers than this tracker "
                             f"({len(state.get('layers', []))} saved, {len(self.layers)} here)")
        device = next(self.model.parameters()).device
        self._pending.clear()
        self._m = torch.tensor([float(v) for v in state["ema_values"]], dtype=torch.float64, device=device)
        self._n = torch.tensor([int(v) for v in state["counts"]], dtype=torch.int64, device=device)
        self.step = int(state["step"])
        self.reset_epoch()
