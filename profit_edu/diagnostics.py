"""The symptoms AIWQ summarises, measured directly: weight codes that flip and BN statistics that drift.

Chapter 5 shows *why* PROFIT ranks layers before it shows the ranking: at low bit widths a training step moves
some latent weights across a rounding threshold, so their integer codes change (a **flip**); in a depthwise
channel of 9 weights one flip shifts the channel's output, and BatchNorm's running statistics, averaged over many
steps, no longer match the batch it normalises (**BN drift**). :mod:`profit_edu.aiwq` condenses both into one
number per layer; the two trackers here record them step by step for plots and the AIWQ explorer:

* :class:`FlipTracker` - per layer and step, the fraction of weight codes that changed since the previous step;
* :class:`BNStatsTracker` - per BatchNorm and step, the batch mean and variance of its input beside its running
  mean and variance.

Both are forward hooks owned like :class:`~profit_edu.aiwq.AIWQTracker` (``remove()`` or a ``with`` block), and
keep the last ``history`` steps on the model's device until read. Diagnostics only: they cost one extra
quantization (flips) or two reductions (BN) per layer and step.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from ._validate import check_int
from .aiwq import HookSet, channel_stats, tracked_layers
from .quant import DuQ

__all__ = ["BNStatsTracker", "FlipTracker"]


class _Ring:
    """The last ``size`` values of a per-step series (tensors stay on their device until read)."""

    def __init__(self, size: int) -> None:
        self.steps: deque[int] = deque(maxlen=size)
        self.values: deque[Any] = deque(maxlen=size)

    def append(self, step: int, value: Any) -> None:
        self.steps.append(step)
        self.values.append(value)


class FlipTracker(HookSet):
    """The fraction of each layer's weight *codes* that changed since the previous training step.

    Math: flips_t(l) = mean over weights of [code_t != code_{t-1}], with code = round(clip(W/a) * K) (DuQ's
    integer code, so a change of the scale ``c`` alone is not a flip; a change of the clip ``a`` can be).

    A forward hook on each tracked conv computes the codes of the weight it just used (training forwards only),
    compares them with the previous step's and keeps the last ``history`` values per layer on the device.
    Layers whose weights are float at that step record nothing. Diagnostic only: it costs one quantization of
    every weight per step.

    Args:
        model: a model quantized with DuQ.
        include_linear: also track linear layers.
        history: values kept per layer.

    Raises:
        TypeError: a tracked layer's weight quantizer is not DuQ (no integer codes to compare).

    >>> from profit_edu import models, quantize_model
    >>> net = quantize_model(models.mobilenet_v2(10, width_mult=0.25, cifar_stem=True), 4, 4)
    >>> flips = FlipTracker(net); _ = net(torch.randn(2, 3, 32, 32)); _ = net(torch.randn(2, 3, 32, 32))
    >>> flips.series("features.1.conv.0.0")
    ([2], [0.0])
    """

    def __init__(self, model: nn.Module, *, include_linear: bool = False, history: int = 1000) -> None:
        super().__init__()
        self.history = check_int("history", history, 1)
        layers = tracked_layers(model, include_linear=include_linear)
        wrong = [n for n, m in layers if not isinstance(m.weight_quant, DuQ)]
        if wrong:
            raise TypeError(f"FlipTracker compares DuQ integer codes, but {wrong[:3]} use another quantizer")
        self.layers = [n for n, _ in layers]
        self.step = 0
        self._codes: dict[str, Tensor] = {}
        self._series = {n: _Ring(self.history) for n in self.layers}
        self._handles.append(model.register_forward_pre_hook(self._count))
        for name, layer in layers:
            self._handles.append(layer.register_forward_hook(self._hook(name)))

    def _count(self, model: nn.Module, inputs: tuple[Any, ...]) -> None:
        if model.training:
            self.step += 1

    def _hook(self, name: str):
        def hook(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            q = layer.weight_quant
            if not layer.training or q.bits is None:
                return
            with torch.no_grad():
                codes = q.codes(layer.weight).to(torch.int16)
            prev = self._codes.get(name)
            if prev is not None and prev.shape == codes.shape:
                self._series[name].append(self.step, (codes != prev).float().mean())
            self._codes[name] = codes

        return hook

    def reset(self) -> None:
        """Forget the previous codes (the next step records nothing) and the series."""
        self._codes.clear()
        self._series = {n: _Ring(self.history) for n in self.layers}

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, flip fractions) of one layer, oldest first."""
        if name not in self._series:
            raise KeyError(f"{name!r} is not a tracked layer; tracked: {self.layers[:4]} ...")
        ring = self._series[name]
        values = torch.stack(list(ring.values)).tolist() if ring.values else []
        return list(ring.steps), values

    def mean_rates(self) -> dict[str, float]:
        """Each layer's mean flip fraction over the recorded steps (NaN when none)."""
        out = {}
        for name in self.layers:
            _, v = self.series(name)
            out[name] = sum(v) / len(v) if v else math.nan
        return out


class BNStatsTracker(HookSet):
    """Each BatchNorm2d's batch statistics of its input against its running statistics, per training step.

    A forward *pre*-hook on each chosen BN layer records, before BN updates its running averages with the batch:
    the batch mean and unbiased variance of its input per channel (what AIWQ's Gaussians describe: the BN input is
    the conv's pre-BN output) and copies of ``running_mean`` / ``running_var``. When weight flips keep moving the
    batch statistics, the running statistics lag behind and the eval-mode network sees mismatched normalisation
    (the paper's Fig. 2 story).

    Memory: 4 vectors of C floats per layer per step, for the last ``history`` steps; choose ``layers``.

    Args:
        model: any model with ``nn.BatchNorm2d`` layers.
        layers: exact module names of the BN layers to watch (default: all).
        history: steps kept per layer.

    Raises:
        ValueError: a name is not a BatchNorm2d of the model, or the model has none.

    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    >>> bn = BNStatsTracker(net); _ = net(torch.randn(8, 3, 6, 6))
    >>> sorted(bn.series("1"))
    ['batch_mean', 'batch_var', 'running_mean', 'running_var', 'steps']
    """

    def __init__(self, model: nn.Module, *, layers: Iterable[str] | None = None, history: int = 1000) -> None:
        super().__init__()
        self.history = check_int("history", history, 1)
        modules = dict(model.named_modules())
        bns = [n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)]
        if layers is None:
            names = bns
        else:
            names = list(layers)
            bad = [n for n in names if n not in bns]
            if bad:
                raise ValueError(f"{bad} are not BatchNorm2d layers of {type(model).__name__}; e.g. {bns[:4]}")
        if not names:
            raise ValueError(f"{type(model).__name__} has no BatchNorm2d layer to watch")
        self.layers = names
        self.step = 0
        self._series = {n: _Ring(self.history) for n in names}
        self._handles.append(model.register_forward_pre_hook(self._count))
        for name in names:
            self._handles.append(modules[name].register_forward_pre_hook(self._hook(name)))

    def _count(self, model: nn.Module, inputs: tuple[Any, ...]) -> None:
        if model.training:
            self.step += 1

    def _hook(self, name: str):
        def hook(bn: nn.BatchNorm2d, inputs: tuple[Tensor, ...]) -> None:
            if not bn.training or bn.running_mean is None:
                return
            with torch.no_grad():
                mean, var = channel_stats(inputs[0])
                self._series[name].append(self.step, (mean, var, bn.running_mean.clone(), bn.running_var.clone()))

        return hook

    def series(self, name: str) -> dict[str, Any]:
        """One layer's record: ``steps`` (list) and ``batch_mean``, ``batch_var``, ``running_mean``,
        ``running_var`` as (steps, C) CPU tensors (running values as they were *before* that step's update)."""
        if name not in self._series:
            raise KeyError(f"{name!r} is not a watched BN layer; watched: {self.layers[:4]} ...")
        ring = self._series[name]
        out: dict[str, Any] = {"steps": list(ring.steps)}
        keys = ("batch_mean", "batch_var", "running_mean", "running_var")
        for k, key in enumerate(keys):
            out[key] = torch.stack([v[k] for v in ring.values]).cpu() if ring.values else torch.empty(0, 0)
        return out

    def mismatch(self, name: str) -> dict[str, list[float]]:
        """Per-step summaries of one layer: ``mean_shift`` = mean_j |mu_batch - mu_running| / sigma_running and
        ``var_ratio`` = mean_j sigma_batch^2 / sigma_running^2 (0 and 1 when batch and running agree)."""
        s = self.series(name)
        if not s["steps"]:
            return {"steps": [], "mean_shift": [], "var_ratio": []}
        std_run = s["running_var"].clamp_min(1e-12).sqrt()
        shift = ((s["batch_mean"] - s["running_mean"]).abs() / std_run).mean(dim=1)
        ratio = (s["batch_var"] / s["running_var"].clamp_min(1e-12)).mean(dim=1)
        return {"steps": s["steps"], "mean_shift": shift.tolist(), "var_ratio": ratio.tolist()}
