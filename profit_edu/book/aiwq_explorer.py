"""The AIWQ explorer: train a quantized MobileNet for a few steps, record what its quantized weights do at every
step, and show it with sliders (weight bits, learning rate, layer, step).

Chapter 5 asks what happens inside a network while it trains with quantized weights. Three things, per layer and
per training step, each measured by a hook of :mod:`profit_edu.aiwq` or :mod:`profit_edu.diagnostics`:

* **AIWQ** (:class:`~profit_edu.aiwq.AIWQTracker`, the raw per-step values): how far one optimizer step moved the
  layer's per-channel output distribution, as a Gaussian KL divergence;
* **weight flips** (:class:`~profit_edu.diagnostics.FlipTracker`): the fraction of the layer's weight codes that
  changed;
* **BN drift** (:class:`~profit_edu.diagnostics.BNStatsTracker`): how far the batch mean at the input of the BatchNorm
  after the layer lies from its running mean (the one evaluation uses), in running standard deviations,
  averaged over channels.

Numbers, figures and widgets are kept apart, so the tests check each without a browser:

* :func:`reestimate_bn` and :func:`prepare`: a quantized copy of a float model whose BatchNorm statistics match its
  quantized weights, the starting point of every run (as after PROFIT's BN stabilisation);
* :func:`record_steps` -> :class:`ExplorerRun`: the training loop (batch, forward, loss, backward, step) with the
  three trackers attached; all the numbers;
* :func:`draw_frame`: one figure for one (run, layer, step); :func:`frame_limits` keeps axes equal across runs;
* :class:`AIWQExplorer`: the sliders. Moving *bits* or *learning rate* trains a new copy live (seconds; runs are
  cached), moving *layer* or *step* only redraws. Without a kernel (the static book) a chapter shows
  :func:`draw_frame` pictures of runs made in advance with :func:`~profit_edu.book.widgets.image_stepper`.

Steps are numbered 1..S, one per training batch. AIWQ and flips compare step t with step t - 1, so step 1 has no
value (NaN); BN drift compares each step's batch statistics with the running statistics *before* that step
updates them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from torch import Tensor, nn

from .. import aiwq, diagnostics, train
from ..layers import QAct, calibrate, quantize_model
from ..quant import check_bits
from .aiwq_plots import KIND_COLORS

__all__ = [
    "BIT_CHOICES",
    "LEARNING_RATES",
    "AIWQExplorer",
    "ExplorerRun",
    "bn_after",
    "describe_frame",
    "draw_frame",
    "frame_limits",
    "prepare",
    "record_steps",
    "reestimate_bn",
]

#: The explorer's bit-width slider, from float weights (None) down to 2 bits.
BIT_CHOICES: tuple[int | None, ...] = (None, 8, 6, 5, 4, 3, 2)
#: The explorer's learning-rate slider (SGD, Nesterov momentum 0.9, as in :func:`profit_edu.train.make_optimizer`).
LEARNING_RATES: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)


# --------------------------------------------------------------------------------------------
# Preparing a model
# --------------------------------------------------------------------------------------------
def bn_after(model: nn.Module) -> dict[str, str]:
    """Each conv's BatchNorm: conv name -> the name of the ``BatchNorm2d`` that normalises its output.

    It is the next ``BatchNorm2d`` in module order with the conv's channel count, when no other conv comes
    between (MobileNets register each conv just before its BN; a squeeze-excitation conv has none).

    >>> bn_after(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)))
    {'0': '1'}
    """
    pairs: dict[str, str] = {}
    pending: tuple[str, int] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            pending = (name, m.out_channels)
        elif isinstance(m, nn.BatchNorm2d) and pending is not None:
            if m.num_features == pending[1]:
                pairs[pending[0]] = name
            pending = None
    return pairs


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """Replace every BatchNorm's running statistics by their average over ``batches``; returns the model.

    Math: running_mean = mean over batches of the batch means, running_var = mean of the unbiased batch variances
    (PyTorch's cumulative average, ``momentum=None``), computed with train-mode forwards under ``no_grad``. The
    momentum and the model's train/eval mode are restored; nothing else changes (no parameter has a gradient).

    Raises:
        ValueError: ``batches`` is empty.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    >>> x = torch.randn(8, 3, 5, 5)
    >>> torch.allclose(reestimate_bn(net, [x])[1].running_mean, net[0](x).mean((0, 2, 3)))
    True
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x[0] if isinstance(x, (tuple, list)) else x)
            seen += 1
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise ValueError("reestimate_bn needs at least one batch")
    return model


def prepare(float_model: nn.Module, calibration: Sequence[Tensor], *, weight_bits: int | None,
            act_bits: int | None = None) -> nn.Module:
    """A quantized copy of ``float_model`` ready to train: quantizers calibrated, BN statistics re-estimated.

    The float model is not changed. ``act_bits=None`` keeps activations in float, so that only the weights'
    quantization moves anything (the paper's Fig. 2 setting). With ``weight_bits=None`` too the copy computes what
    the float model does, through the same layers (so the same hooks measure it).

    Raises:
        ValueError / TypeError: bad bit widths; no calibration batches.
    """
    check_bits(weight_bits, "weight_bits")
    check_bits(act_bits, "act_bits")
    if len(calibration) == 0:
        raise ValueError("prepare needs calibration batches (a few hundred training images)")
    model = quantize_model(copy.deepcopy(float_model), weight_bits=weight_bits, act_bits=act_bits)
    if act_bits is not None:
        calibrate(model, list(calibration), bn="batch")
    elif weight_bits is not None:  # weight clips need no images; calibrate still runs some, so give it a few
        calibrate(model, [calibration[0][:16]], bn="batch")
    return reestimate_bn(model, calibration)


# --------------------------------------------------------------------------------------------
# Recording a run
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExplorerRun:
    """What :func:`record_steps` measured: per step (rows, steps 1..S) and per tracked conv (columns, model order).

    Attributes:
        weight_bits, act_bits, lr: the setting (None bits: float).
        layers: the tracked convs (every quantized conv, as AIWQ measures them), in model order.
        kinds: layer -> "stem", "depthwise", "pointwise" or "last" (:func:`profit_edu.aiwq.layer_kinds`).
        bn_of: layer -> the BatchNorm after it (:func:`bn_after`).
        loss: (S,) the training loss of each step.
        aiwq: (S, L) float64, the raw AIWQ of each layer at each step (NaN at step 1).
        flips: (S, L) float64, the fraction of weight codes that changed (NaN at step 1 and for float weights).
        bn_drift: (S, L) float64, mean over channels of |batch mean - running mean| / running std at the layer's BN.
        batch_mean, running_mean: layer -> (S, C) float64, the BN input's batch mean and BN's running mean (before
            that step's update), per channel.
    """

    weight_bits: int | None
    act_bits: int | None
    lr: float
    layers: tuple[str, ...]
    kinds: dict[str, str]
    bn_of: dict[str, str]
    loss: Tensor
    aiwq: Tensor
    flips: Tensor
    bn_drift: Tensor
    batch_mean: dict[str, Tensor]
    running_mean: dict[str, Tensor]

    @property
    def steps(self) -> int:
        """S, the number of training steps."""
        return int(self.loss.numel())

    @property
    def label(self) -> str:
        """``"4-bit weights, lr 0.001"`` (or ``"float weights, ..."``)."""
        bits = "float" if self.weight_bits is None else f"{self.weight_bits}-bit"
        return f"{bits} weights, lr {self.lr:g}"

    def index(self, layer: str) -> int:
        """The column of ``layer``.

        Raises:
            KeyError: not a tracked layer (the message lists a few).
        """
        if layer not in self.layers:
            raise KeyError(f"{layer!r} is not a tracked layer; tracked: {list(self.layers[:4])} ...")
        return self.layers.index(layer)

    def mean_over_steps(self, what: str = "aiwq") -> dict[str, float]:
        """Each layer's mean of ``"aiwq"``, ``"flips"`` or ``"bn_drift"`` over the steps with a value (NaN if none)."""
        if what not in ("aiwq", "flips", "bn_drift"):
            raise ValueError(f"what must be 'aiwq', 'flips' or 'bn_drift', got {what!r}")
        values = getattr(self, what)
        return dict(zip(self.layers, torch.nanmean(values, dim=0).tolist()))

    def most_unstable(self, kind: str | None = None) -> str:
        """The layer (of ``kind``, if given) with the largest mean AIWQ over the run (ties: model order).

        Raises:
            ValueError: no layer of that kind has an AIWQ value.
        """
        means = {n: v for n, v in self.mean_over_steps("aiwq").items()
                 if (kind is None or self.kinds[n] == kind) and not math.isnan(v)}
        if not means:
            raise ValueError(f"no layer of kind {kind!r} has an AIWQ value in this run")
        return max(means, key=means.get)


def _series_matrix(layers: Sequence[str], steps: int, series: Mapping[str, tuple[list[int], list[float]]]) -> Tensor:
    """(S, L) float64 from per-layer (steps, values) pairs, NaN where a layer has no value."""
    out = torch.full((steps, len(layers)), math.nan, dtype=torch.float64)
    for j, name in enumerate(layers):
        for step, value in zip(*series.get(name, ([], []))):
            if 1 <= step <= steps:
                out[step - 1, j] = value
    return out


def record_steps(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], *, lr: float,
                 weight_decay: float = 0.0, seed: int = 0) -> ExplorerRun:
    """Train ``model`` (quantized, e.g. by :func:`prepare`) one SGD step per batch, recording every step.

    The loop is the plain one: batch, forward, cross-entropy, backward, step. The optimizer is PROFIT's
    (:func:`profit_edu.train.make_optimizer`: Nesterov momentum 0.9, the quantizers' ``a`` and ``c`` at lr/100).
    The model changes in place and is left in train mode; the hooks are removed afterwards.

    Args:
        model: a model with quantized convs (:func:`~profit_edu.layers.quantize_model`), DuQ weight quantizers.
        batches: (images, labels) pairs on the model's device; one step each.
        lr: the learning rate (> 0).
        weight_decay: L2 decay of the conv and linear weights.
        seed: seeds dropout, so a run can be repeated exactly.

    Raises:
        ValueError: no batches, or a bad learning rate.
    """
    if len(batches) == 0:
        raise ValueError("record_steps needs at least one (images, labels) batch")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    names = [n for n, _ in aiwq.tracked_layers(model)]
    kinds = aiwq.layer_kinds(model)
    bn_of = {n: b for n, b in bn_after(model).items() if n in names}
    steps = len(batches)
    aiwq_hooks = aiwq.AIWQTracker(model, skip_above=math.inf, raw_history=steps)
    flip_hooks = diagnostics.FlipTracker(model, history=steps)
    bn_hooks = diagnostics.BNStatsTracker(model, layers=sorted(set(bn_of.values())), history=steps)
    optimizer = train.make_optimizer(model, train.TrainConfig(lr=lr, weight_decay=weight_decay, ema_decay=None))
    losses = []
    device = next(model.parameters()).device
    model.train()
    try:  # dropout draws from a seeded generator; the caller's random state is restored afterwards
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for x, y in batches:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
    finally:
        aiwq_hooks.remove()
        flip_hooks.remove()
        bn_hooks.remove()
    drift: dict[str, tuple[list[int], list[float]]] = {}
    batch_mean, running_mean = {}, {}
    for name, bn in bn_of.items():
        mism = bn_hooks.mismatch(bn)
        drift[name] = (mism["steps"], mism["mean_shift"])
        s = bn_hooks.series(bn)
        batch_mean[name], running_mean[name] = s["batch_mean"].double(), s["running_mean"].double()
    return ExplorerRun(
        weight_bits=_weight_bits(model), act_bits=_act_bits(model), lr=float(lr), layers=tuple(names), kinds=kinds,
        bn_of=bn_of, loss=torch.stack(losses).double().cpu(),
        aiwq=_series_matrix(names, steps, {n: aiwq_hooks.raw(n) for n in names}),
        flips=_series_matrix(names, steps, {n: flip_hooks.series(n) for n in names}),
        bn_drift=_series_matrix(names, steps, drift), batch_mean=batch_mean, running_mean=running_mean,
    )


def _weight_bits(model: nn.Module) -> int | None:
    bits = {m.weight_quant.bits for _, m in aiwq.tracked_layers(model)}
    return bits.pop() if len(bits) == 1 else None


def _act_bits(model: nn.Module) -> int | None:
    bits = {m.quantizer.bits for m in model.modules() if isinstance(m, QAct)}
    return bits.pop() if len(bits) == 1 else None


# --------------------------------------------------------------------------------------------
# One frame
# --------------------------------------------------------------------------------------------
def frame_limits(runs: Iterable[ExplorerRun]) -> dict[str, tuple[float, float]]:
    """Common y ranges for frames of several runs (so a flipbook compares like with like).

    Returns ``{"aiwq": (low, high), "flips": (0, high)}`` over the finite, positive values of all runs.
    """
    runs = list(runs)
    values = torch.cat([r.aiwq.flatten() for r in runs]) if runs else torch.empty(0)
    values = values[torch.isfinite(values) & (values > 0)]
    lo, hi = (float(values.min()), float(values.max())) if values.numel() else (1e-8, 1.0)
    flips = torch.cat([r.flips.flatten() for r in runs]) if runs else torch.empty(0)
    flips = flips[torch.isfinite(flips)]
    top = float(flips.max()) if flips.numel() else 0.0
    return {"aiwq": (lo / 2, hi * 2), "flips": (0.0, max(100 * top * 1.1, 0.1))}


def _check_step(run: ExplorerRun, step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= run.steps:
        raise ValueError(f"step must be an int in 1..{run.steps}, got {step!r}")
    return step


def describe_frame(run: ExplorerRun, layer: str, step: int) -> str:
    """One line under a frame: the setting and the selected layer's numbers at ``step``."""
    j, t = run.index(layer), _check_step(run, step) - 1
    parts = [f"{run.label}, step {step}: {layer} ({run.kinds[layer]})"]
    a, f, d = float(run.aiwq[t, j]), float(run.flips[t, j]), float(run.bn_drift[t, j])
    parts.append("AIWQ -" if math.isnan(a) else f"AIWQ {a:.2e}")
    if not math.isnan(f):
        parts.append(f"{100 * f:.2f}% of its weights flipped")
    if not math.isnan(d):
        parts.append(f"BN drift {d:.3f} std")
    return ", ".join(parts)


def _draw_aiwq_panel(ax_a: Axes, run: ExplorerRun, j: int, step: int, ylim: tuple[float, float]) -> None:
    """Every layer's AIWQ at ``step`` (bars in model order, coloured by kind), layer ``j`` marked."""
    t = step - 1
    values = run.aiwq[t].numpy()
    colors = [KIND_COLORS.get(run.kinds[n], "#333333") for n in run.layers]
    heights = np.where(np.isfinite(values) & (values > 0), values, np.nan)
    ax_a.bar(np.arange(len(run.layers)), heights, color=colors, width=0.85)
    ax_a.set_yscale("log")
    ax_a.set_ylim(*ylim)
    ax_a.set_xlim(-1, len(run.layers))
    low = ylim[0]
    ax_a.scatter([j], [heights[j] * 1.8 if np.isfinite(heights[j]) else low * 1.8], marker="v", color="black",
                 zorder=3, s=22)
    if step == 1:
        ax_a.text(0.5, 0.5, "no value at step 1:\nAIWQ compares two steps", transform=ax_a.transAxes, ha="center",
                  va="center", fontsize="small", color="0.4")
    elif not np.isfinite(heights[j]):  # exactly 0 (no code moved), or no channel with a spread
        ax_a.annotate("0", (j, low * 1.8), xytext=(4, 0), textcoords="offset points", va="center",
                      fontsize="small")
    ax_a.set(xlabel="layer (model order; \u25bc the selected one)", ylabel="AIWQ at this step (KL)",
             title=f"every layer at step {step}")


def _draw_flips_panel(ax_f: Axes, run: ExplorerRun, layer: str, t: int, ylim: tuple[float, float]) -> None:
    """The weight flips of ``layer`` per step, step ``t + 1`` darker."""
    j, steps = run.index(layer), np.arange(1, run.steps + 1)
    flips = 100 * run.flips[:, j].numpy()
    if np.isfinite(flips).any():
        shade = ["#1f77b4" if i == t else "#aec7e8" for i in range(run.steps)]
        ax_f.bar(steps, np.nan_to_num(flips), color=shade, width=0.8)
        ax_f.set_ylim(*ylim)
    else:
        ax_f.text(0.5, 0.5, "float weights:\nno codes to flip", transform=ax_f.transAxes, ha="center", va="center",
                  fontsize="small", color="0.4")
    ax_f.set_xlim(0.3, run.steps + 0.7)
    ax_f.set(xlabel="training step", ylabel="weights flipped (%)", title=f"{layer} ({run.kinds[layer]})")


def _draw_bn_panel(ax_bn: Axes, run: ExplorerRun, layer: str, step: int) -> None:
    """One channel of the BN after ``layer`` (the one that drifts most): batch mean per step, running mean."""
    steps = np.arange(1, run.steps + 1)
    if layer in run.batch_mean and run.batch_mean[layer].numel():
        bm, rm = run.batch_mean[layer], run.running_mean[layer]
        channel = int((bm - rm).abs().mean(dim=0).argmax())
        ax_bn.plot(steps, bm[:, channel].numpy(), "o", ms=3, color="#d62728", label="batch mean")
        ax_bn.plot(steps, rm[:, channel].numpy(), "-", lw=1.6, color="#444444", label="running mean (used in eval)")
        ax_bn.axvline(step, color="#1f77b4", lw=1, ls=":")
        ax_bn.set_title(f"its BN, channel {channel}")
    else:
        ax_bn.text(0.5, 0.5, "no BatchNorm after this layer", transform=ax_bn.transAxes, ha="center", va="center",
                   fontsize="small", color="0.4")
    ax_bn.set(xlabel="training step", ylabel="mean of the BN input")


def draw_frame(run: ExplorerRun, layer: str, step: int, *, fig: Figure | None = None,
               limits: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """Three panels for one (run, layer, step); returns the figure (nothing is shown).

    * top: every layer's AIWQ at ``step`` (bars in model order, coloured by kind; the selected layer marked);
    * bottom left: the selected layer's weight flips per step (the current step darker);
    * bottom right: one channel of the BatchNorm after it (the channel that drifts most over the run): its batch
      mean at each step against its running mean, which evaluation uses.

    Args:
        run, layer, step: what to draw (step in 1..S).
        fig: draw into this figure (cleared first), e.g. a widget's; default a new one.
        limits: y ranges from :func:`frame_limits` (default: this run's own).

    Raises:
        KeyError: an unknown layer. ValueError: a step outside 1..S.
    """
    j, t = run.index(layer), _check_step(run, step) - 1
    limits = limits or frame_limits([run])
    if fig is None:
        fig = plt.figure(figsize=(7.2, 5.4), layout="constrained")
    else:
        fig.clear()
    panels = fig.subplot_mosaic([["aiwq", "aiwq"], ["flips", "bn"]])  # sized for a book's column

    _draw_aiwq_panel(panels["aiwq"], run, j, step, limits["aiwq"])
    _draw_flips_panel(panels["flips"], run, layer, t, limits["flips"])
    _draw_bn_panel(panels["bn"], run, layer, step)

    present = [k for k in KIND_COLORS if k in set(run.kinds[n] for n in run.layers)]
    handles = [Patch(color=KIND_COLORS[k], label=k) for k in present]
    handles += [Line2D([], [], marker="o", ls="", ms=3, color="#d62728", label="batch mean"),
                Line2D([], [], color="#444444", lw=1.6, label="running mean"),
                Line2D([], [], color="#1f77b4", lw=1, ls=":", label="this step")]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize="small", frameon=False)
    fig.suptitle(run.label, fontsize="medium")
    return fig


# --------------------------------------------------------------------------------------------
# The widget
# --------------------------------------------------------------------------------------------
FLOAT_BITS = 32  # the bit slider's value for float weights (a selection slider cannot hold None)


def _bits_label(bits: int | None) -> str:
    return "float" if bits is None else str(bits)


def _from_slider(value: int) -> int | None:
    return None if value == FLOAT_BITS else value


class AIWQExplorer:
    """Sliders over weight bits, learning rate, layer and step, over live training runs (see the module docstring).

    ``ex = AIWQExplorer(float_model, train_batches, calibration); display(ex.widget)``. ``ex.update(...)`` does
    what moving the sliders does and returns the run shown. Runs already recorded (e.g. by the chapter, with
    :func:`prepare` and :func:`record_steps` on the same batches) can be handed in as ``runs`` so the first
    pictures appear without training.

    Args:
        float_model: the float network every run starts from (not changed).
        train_batches: (images, labels) batches, one training step each.
        calibration: image batches for :func:`prepare`.
        bits, lr: the initial setting (``bits`` from :data:`BIT_CHOICES`, ``lr`` from ``learning_rates``).
        learning_rates: the learning-rate slider's values.
        runs: recorded runs, keyed by ``(weight_bits, lr)``.
        layer: the initially selected layer (default: the most unstable depthwise layer).

    Raises:
        ValueError: ``bits`` or ``lr`` not among the slider's values, no training batches.
    """

    def __init__(self, float_model: nn.Module, train_batches: Sequence[tuple[Tensor, Tensor]],
                 calibration: Sequence[Tensor], *, bits: int | None = 4, lr: float = 1e-3,
                 learning_rates: Sequence[float] = LEARNING_RATES,
                 runs: Mapping[tuple[int | None, float], ExplorerRun] | None = None, layer: str | None = None) -> None:
        if bits not in BIT_CHOICES:
            raise ValueError(f"bits must be one of {BIT_CHOICES}, got {bits!r}")
        if lr not in learning_rates:
            raise ValueError(f"lr must be one of the slider's values {tuple(learning_rates)}, got {lr!r}")
        if len(train_batches) < 2:
            raise ValueError("the explorer needs at least 2 training batches (AIWQ compares two steps)")
        self.float_model = float_model
        self.train_batches = list(train_batches)
        self.calibration = list(calibration)
        self.runs: dict[tuple[int | None, float], ExplorerRun] = dict(runs or {})
        run = self.run_for(bits, lr)
        self.layer = layer if layer is not None else run.most_unstable("depthwise")
        run.index(self.layer)
        self.bits_slider = widgets.SelectionSlider(
            options=[(_bits_label(b), FLOAT_BITS if b is None else b) for b in BIT_CHOICES],
            value=FLOAT_BITS if bits is None else bits, description="weight bits", continuous_update=False)
        self.lr_slider = widgets.SelectionSlider(options=[(f"{v:g}", v) for v in learning_rates], value=lr,
                                                 description="learning rate", continuous_update=False)
        self.layer_menu = widgets.Dropdown(options=[(f"{n} ({run.kinds[n]})", n) for n in run.layers],
                                           value=self.layer, description="layer")
        self.step_slider = widgets.IntSlider(value=run.steps, min=1, max=run.steps, description="step",
                                             continuous_update=False)
        for w in (self.bits_slider, self.lr_slider, self.layer_menu, self.step_slider):
            w.style.description_width = "initial"
            w.observe(self._on_change, names="value")
        self.output = widgets.Output()
        self.label = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.bits_slider, self.lr_slider]),
                                    widgets.HBox([self.layer_menu, self.step_slider]), self.output, self.label])
        self.run = run
        self.update(bits, lr, self.layer, run.steps)

    def run_for(self, bits: int | None, lr: float) -> ExplorerRun:
        """The run at (bits, lr): recorded now (a quantized copy trained on the batches) unless cached."""
        key = (bits, float(lr))
        if key not in self.runs:
            model = prepare(self.float_model, self.calibration, weight_bits=bits)
            self.runs[key] = record_steps(model, self.train_batches, lr=lr)
        return self.runs[key]

    def _on_change(self, change: dict) -> None:
        self.update(_from_slider(self.bits_slider.value), self.lr_slider.value, self.layer_menu.value,
                    self.step_slider.value)

    def update(self, bits: int | None, lr: float, layer: str, step: int) -> ExplorerRun:
        """Show (bits, lr, layer, step): train a run if needed, redraw, and return the run shown."""
        if (bits, float(lr)) not in self.runs:
            self.label.value = f"training {_bits_label(bits)}-bit weights at lr {lr:g} ..."
        self.run = self.run_for(bits, lr)
        self.layer = layer
        step = min(max(int(step), 1), self.run.steps)
        self.label.value = describe_frame(self.run, layer, step)
        with self.output:
            from IPython.display import clear_output, display

            clear_output(wait=True)
            fig = draw_frame(self.run, layer, step, limits=frame_limits(self.runs.values()))
            display(fig)
            plt.close(fig)
        return self.run
