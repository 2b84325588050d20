"""Figures of the AIWQ chapter: the per-layer ranking PROFIT freezes by, AIWQ against bit width, and the raw
per-step values against their EMA.

Each function takes plain numbers (what :class:`~profit_edu.aiwq.AIWQTracker` returns: ``values()``,
``raw(name)``; kinds from :func:`~profit_edu.aiwq.layer_kinds`), draws one figure with seaborn, and returns the
``Figure``; nothing is shown or saved here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = ["KIND_COLORS", "ema_with_skip", "plot_aiwq_ranking", "plot_aiwq_vs_bits", "plot_raw_vs_ema"]

#: One colour per layer kind (as :func:`profit_edu.aiwq.layer_kinds` names them).
KIND_COLORS = {"stem": "#7f7f7f", "depthwise": "#d62728", "pointwise": "#1f77b4", "last": "#9467bd",
               "conv": "#2ca02c", "linear": "#ff7f0e"}


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def ema_with_skip(values: Sequence[float], *, ema: float = 0.999, skip_above: float = 1.0,
                  start: float = 0.0) -> np.ndarray:
    """The tracker's EMA over a sequence of raw values: M <- ema M + (1 - ema) v, skipping v > skip_above.

    >>> ema_with_skip([1.0, 5.0, 1.0], ema=0.5, skip_above=2.0).tolist()
    [0.5, 0.5, 0.75]
    """
    out, m = [], start
    for v in values:
        if not (math.isnan(v) or v > skip_above):
            m = ema * m + (1.0 - ema) * v
        out.append(m)
    return np.asarray(out)


def plot_aiwq_ranking(values: Mapping[str, float], kinds: Mapping[str, str], *,
                      fractions: Sequence[Fraction | float] = (Fraction(1, 3), Fraction(2, 3)),
                      log: bool = True, ax: Axes | None = None) -> Figure:
    """Per-layer AIWQ as bars sorted from most to least unstable, coloured by layer kind, with PROFIT's cut-offs.

    A dashed line after bar ``floor(L * f)`` for each freeze fraction f: ft2 freezes the layers left of the
    first line, ft3 those left of the second.

    Args:
        values: layer name -> M(l) (e.g. ``tracker.values()``).
        kinds: layer name -> kind (e.g. ``layer_kinds(model)``).
        fractions: the freeze fractions to mark.
        log: logarithmic y axis (AIWQ spans orders of magnitude).
        ax: draw into these axes instead of a new figure.
    """
    missing = sorted(set(values) - set(kinds))
    if missing:
        raise ValueError(f"no kind given for layers {missing[:4]}")
    order = sorted(values, key=lambda n: -values[n])
    L = len(order)
    fig, ax = _axes(ax, (max(6.0, 0.16 * L), 3.2))
    heights = [max(values[n], 1e-12) if log else values[n] for n in order]
    colors = [KIND_COLORS.get(kinds[n], "#333333") for n in order]
    ax.bar(np.arange(L), heights, color=colors, width=0.85)
    if log:
        ax.set_yscale("log")
    for f in fractions:
        k = math.floor(L * Fraction(f))
        ax.axvline(k - 0.5, color="black", ls="--", lw=1)
        ax.annotate(f"freeze top {k} ({Fraction(f)})", (k - 0.5, 0.03), xycoords=("data", "axes fraction"),
                    ha="right", va="bottom", fontsize="small", rotation=90,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    ax.set_xticks(np.arange(L), order, rotation=90, fontsize=6)
    ax.set_xlim(-0.7, L - 0.3)
    ax.set_xlabel("layer (most unstable first)")
    ax.set_ylabel("AIWQ (EMA of per-step KL)")
    present = [k for k in KIND_COLORS if k in set(kinds[n] for n in order)]
    ax.legend(handles=[Patch(color=KIND_COLORS[k], label=k) for k in present], fontsize="small", ncols=len(present),
              loc="upper right")
    sns.despine(ax=ax)
    return fig


def plot_aiwq_vs_bits(by_bits: Mapping[int, Mapping[str, float]], kinds: Mapping[str, str], *,
                      ax: Axes | None = None) -> Figure:
    """AIWQ against weight bit width: one point per layer and bit width, and the median per layer kind.

    Args:
        by_bits: bit width -> (layer name -> AIWQ), e.g. one tracker run per bit width.
        kinds: layer name -> kind.
        ax: draw into these axes instead of a new figure.
    """
    rows = [(b, kinds[n], v) for b, vals in by_bits.items() for n, v in vals.items() if v > 0]
    if not rows:
        raise ValueError("no positive AIWQ values to plot")
    fig, ax = _axes(ax, (5.0, 3.4))
    bits = np.array([r[0] for r in rows], dtype=float)
    kind = [r[1] for r in rows]
    vals = np.array([r[2] for r in rows])
    palette = {k: KIND_COLORS.get(k, "#333333") for k in set(kind)}
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(rows))
    sns.scatterplot(x=bits + jitter, y=vals, hue=kind, palette=palette, s=12, alpha=0.5, ax=ax, legend=False)
    for k in sorted(set(kind)):
        xs = sorted(set(int(b) for b, kk in zip(bits, kind) if kk == k))
        med = [float(np.median([v for b, kk, v in zip(bits, kind, vals) if kk == k and b == x])) for x in xs]
        ax.plot(xs, med, marker="o", color=palette[k], label=f"{k} (median)")
    ax.set_yscale("log")
    ax.set_xticks(sorted(by_bits))
    ax.invert_xaxis()  # fewer bits to the right
    ax.set_xlabel("weight bits")
    ax.set_ylabel("AIWQ")
    ax.legend(fontsize="small")
    sns.despine(ax=ax)
    return fig


def plot_raw_vs_ema(steps: Sequence[int], raw: Sequence[float], *, ema: float = 0.999, skip_above: float = 1.0,
                    title: str | None = None, ax: Axes | None = None) -> Figure:
    """One layer's raw per-step AIWQ and its EMA, with the skipped outliers marked.

    The EMA is recomputed from ``raw`` with the tracker's rule (:func:`ema_with_skip`), starting at 0, so it
    shows why the first hundreds of steps underestimate M and how one outlier would jump without the skip.

    Args:
        steps, raw: e.g. ``tracker.raw(name)``.
        ema, skip_above: the tracker's settings.
        title: the axes title (e.g. the layer name).
        ax: draw into these axes instead of a new figure.
    """
    if len(steps) != len(raw):
        raise ValueError(f"steps and raw must have one length, got {len(steps)} and {len(raw)}")
    fig, ax = _axes(ax, (6.0, 3.0))
    steps_a, raw_a = np.asarray(steps), np.asarray(raw, dtype=float)
    skipped = raw_a > skip_above
    ax.plot(steps_a, raw_a, lw=0.6, alpha=0.6, color="#1f77b4", label="per-step KL")
    ax.plot(steps_a, ema_with_skip(raw_a, ema=ema, skip_above=skip_above), lw=2, color="#d62728",
            label=f"EMA ({ema:g})")
    if skipped.any():
        ax.scatter(steps_a[skipped], raw_a[skipped], marker="x", color="black", zorder=3,
                   label=f"skipped (> {skip_above:g})")
    if len(raw_a) and (raw_a > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("AIWQ")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    sns.despine(ax=ax)
    return fig
