"""Seaborn figures for the book: each function draws one kind of figure and returns its Figure or Axes.

Nothing here calls ``plt.show()``: a notebook displays the returned figure, a test inspects it. The
functions take plain tensors or dicts of them and do no quantization themselves, so a chapter computes
the numbers in front of the reader and only hands them over for drawing.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.animation import FuncAnimation
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

__all__ = [
    "PALETTE",
    "figure_png",
    "flipbook",
    "plot_border_fraction",
    "plot_channel_ranges",
    "plot_error_heatmap",
    "plot_grid_histogram",
    "plot_levels_per_channel",
    "plot_quantization",
    "plot_quantizer_panels",
    "plot_transfer",
    "tensor_stats",
    "use_book_style",
]

#: One colour per idea, used across chapters (float reference, then the quantizer families).
PALETTE = {"float": "#444444", "duq": "#1f77b4", "pact": "#d62728", "lsq": "#2ca02c", "other": "#9467bd"}


def use_book_style(context: str = "notebook") -> None:
    """Seaborn's whitegrid theme with small fonts; call once per chapter."""
    sns.set_theme(context=context, style="whitegrid", font_scale=0.85,
                  rc={"figure.dpi": 90, "savefig.dpi": 90, "axes.titlesize": "medium"})


def _np(x: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def figure_png(fig: Figure, *, close: bool = True) -> bytes:
    """The figure as PNG bytes (for image widgets); closes it unless ``close=False``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    if close:
        plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Transfer curves and quantizer panels (chapters 2 and 3)
# --------------------------------------------------------------------------------------------
def plot_transfer(
    x: Tensor,
    curves: Mapping[str, Tensor],
    *,
    ax: Axes | None = None,
    title: str | None = None,
    xlabel: str = "input x",
    ylabel: str = "output y",
) -> Axes:
    """Line plot of one or more functions of ``x`` (e.g. a quantizer's y(x) against the identity)."""
    ax = _axes(ax, (4.2, 3.0))
    xs = _np(x)
    for name, y in curves.items():
        style = {"color": PALETTE["float"], "ls": "--", "lw": 1} if name in ("float", "identity") else {"lw": 1.6}
        ax.plot(xs, _np(y), label=name, drawstyle="default", **style)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend(loc="best", fontsize="small")
    return ax


def plot_quantization(
    x: Tensor,
    y: Tensor,
    levels: Tensor,
    *,
    title: str | None = None,
    fig: Figure | None = None,
    sample: Tensor | None = None,
) -> Figure:
    """Two panels: the transfer curve y(x) with its levels, and a histogram of ``sample`` with the levels.

    Args:
        x, y: a sorted input range and the quantizer's output on it.
        levels: the grid's output levels (horizontal lines on the left, vertical on the right).
        sample: data to histogram (default: ``x``).
        fig: draw into this figure (cleared first), e.g. one frame of a flipbook.
    """
    if fig is None:
        fig = plt.figure(figsize=(7.0, 2.8), layout="constrained")
    else:
        fig.clear()
    ax1, ax2 = fig.subplots(1, 2)
    lv = _np(levels)
    for v in lv:
        ax1.axhline(v, color="0.85", lw=0.6, zorder=0)
    ax1.plot(_np(x), _np(x), color=PALETTE["float"], ls="--", lw=1, label="float")
    ax1.plot(_np(x), _np(y), color=PALETTE["duq"], lw=1.6, label="quantized")
    ax1.set(xlabel="input x", ylabel="output y", title="transfer curve")
    ax1.legend(loc="upper left", fontsize="small")
    data = _np(sample if sample is not None else x)
    # log scale: data after a ReLU has a tall spike at 0 that would hide everything else
    sns.histplot(x=data, bins=60, stat="density", color="0.6", ax=ax2, edgecolor=None)
    ax2.set_yscale("log")
    for v in lv:
        ax2.axvline(v, color=PALETTE["duq"], lw=0.8, alpha=0.8)
    ax2.set(xlabel="value", ylabel="density (log)", title=f"data and the {len(lv)} levels")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def plot_quantizer_panels(
    x: Tensor,
    panels: Mapping[str, Mapping[str, Tensor]],
    *,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A grid of line plots: one row per quantizer, one column per quantity (y, dy/dx, dy/da, ...).

    ``panels[row][column]`` is a tensor over ``x``; a missing column leaves that cell empty with a note.
    """
    rows = list(panels)
    cols: list[str] = []
    for r in rows:
        cols += [c for c in panels[r] if c not in cols]
    figsize = figsize or (2.3 * len(cols), 1.8 * len(rows))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=figsize, layout="constrained", squeeze=False,
                             sharex=True)
    xs = _np(x)
    for i, r in enumerate(rows):
        colour = PALETTE.get(r.split()[0].lower(), PALETTE["other"])
        for j, c in enumerate(cols):
            ax = axes[i, j]
            if c in panels[r]:
                ax.plot(xs, _np(panels[r][c]), color=colour, lw=1.5)
            else:
                ax.text(0.5, 0.5, "no such\nparameter", ha="center", va="center", transform=ax.transAxes,
                        color="0.5", fontsize="small")
                ax.tick_params(left=False, labelleft=False)
                ax.grid(False)
            if i == 0:
                ax.set_title(c)
            if j == 0:
                ax.set_ylabel(r)
            if i == len(rows) - 1:
                ax.set_xlabel("x")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


#: matplotlib's animation controls draw FontAwesome icons, loaded from a CDN; the book is read offline, so each
#: icon becomes a plain character (the buttons keep their titles and aria-labels).
_FLIPBOOK_ICONS = {"fa-minus": "\u2212", "fa-fast-backward": "\u21e4", "fa-step-backward": "\u2039",
                   "fa-play fa-flip-horizontal": "\u25c0", "fa-pause": "\u275a\u275a", "fa-play": "\u25b6",
                   "fa-step-forward": "\u203a", "fa-fast-forward": "\u21e5", "fa-plus": "+"}
_FONTAWESOME_LINK = re.compile(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">\s*')
_FA_ICON = re.compile(r'<i class="fa ([\w -]+?)"></i>')


def _offline_controls(html: str) -> str:
    """``html`` from ``to_jshtml`` without its FontAwesome stylesheet link, each icon a plain character.

    Raises:
        RuntimeError: the HTML still names an external URL or an unknown icon (a new matplotlib template).
    """
    html = _FONTAWESOME_LINK.sub("", html)

    def glyph(match: re.Match) -> str:
        if match.group(1) not in _FLIPBOOK_ICONS:
            raise RuntimeError(f"flipbook: unknown FontAwesome icon {match.group(1)!r} in matplotlib's template")
        return f'<span aria-hidden="true">{_FLIPBOOK_ICONS[match.group(1)]}</span>'

    html = _FA_ICON.sub(glyph, html)
    left = re.search(r"https?://|fa fa-", html)
    if left:
        rest = html[left.start():][:80]
        raise RuntimeError(f"flipbook: matplotlib's HTML still loads something from outside: {rest!r}")
    return html


def flipbook(
    draw: Callable[[Figure, object], None],
    frames: Sequence[object],
    *,
    figsize: tuple[float, float] = (7.0, 2.8),
    interval_ms: int = 900,
) -> str:
    """A kernel-free animation: ``draw(fig, frame)`` for each frame, returned as HTML with a slider.

    Uses ``matplotlib.animation.FuncAnimation(...).to_jshtml()``; the page needs no Python kernel to play
    it, and loads nothing from outside (the buttons' FontAwesome icons become plain characters). Keep
    ``frames`` short (about ten) and figures small: every frame is a PNG inside the page.
    """
    if len(frames) == 0:
        raise ValueError("flipbook needs at least one frame")
    fig = plt.figure(figsize=figsize, layout="constrained")

    def update(i: int) -> list:
        draw(fig, frames[i])
        return []

    anim = FuncAnimation(fig, update, frames=len(frames), interval=interval_ms, blit=False, repeat=True)
    try:
        html = anim.to_jshtml(default_mode="once")
    finally:
        plt.close(fig)
    return _offline_controls(html)


# --------------------------------------------------------------------------------------------
# Depthwise fragility (chapter 1)
# --------------------------------------------------------------------------------------------
def plot_channel_ranges(ranges: Mapping[str, Tensor], *, ax: Axes | None = None, log: bool = True) -> Axes:
    """Strip plot of per-output-channel weight ranges (max |w|), one column per layer.

    ``ranges[name]`` is a 1-D tensor with one value per output channel.
    """
    ax = _axes(ax, (5.0, 3.0))
    names, values = [], []
    for name, r in ranges.items():
        v = _np(r).reshape(-1)
        names += [name] * len(v)
        values.append(v)
    sns.stripplot(x=names, y=np.concatenate(values), hue=names, size=3, alpha=0.7, jitter=0.25, ax=ax, legend=False)
    if log:
        ax.set_yscale("log")
    ax.set(ylabel="per-channel max |w|", xlabel="")
    ax.tick_params(axis="x", labelrotation=15)
    return ax


def plot_levels_per_channel(counts: Mapping[str, Tensor], bits: int, *, ax: Axes | None = None) -> Axes:
    """Histogram of how many grid levels each output channel actually uses, one colour per layer."""
    ax = _axes(ax, (5.0, 3.0))
    top = 2**bits - 1
    bins = np.arange(0.5, top + 1.5, 1.0)
    for name, c in counts.items():
        v = _np(c).reshape(-1)
        ax.hist(v, bins=bins, weights=np.full(len(v), 100.0 / max(len(v), 1)), alpha=0.55, label=name)
    ax.set(xlabel=f"levels used by a channel (of {top} on the {bits}-bit signed grid)", ylabel="% of channels")
    ax.set_xlim(0.5, top + 0.5)
    # beside the axes, so that it never covers a bar
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


# --------------------------------------------------------------------------------------------
# Grids, padding and borders (chapter 4)
# --------------------------------------------------------------------------------------------
def plot_grid_histogram(
    values: Tensor,
    grids: Mapping[str, Tensor],
    *,
    mse: Mapping[str, float] | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One panel per grid, stacked in a column with a shared value axis: the histogram of ``values`` with
    that grid's levels drawn over it.

    Stacked, every panel keeps the full width of a book column, and the grids line up level by level.
    Levels outside the data's range are drawn dotted and grey: no value lies there. ``mse`` adds each
    grid's error to its title.
    """
    n = len(grids)
    fig, axes = plt.subplots(n, 1, figsize=figsize or (6.4, 1.7 * n + 0.5), layout="constrained", sharex=True,
                             squeeze=False)
    data = _np(values).reshape(-1)
    lo, hi = float(data.min()), float(data.max())
    for ax, (name, levels) in zip(axes[:, 0], grids.items(), strict=True):
        sns.histplot(x=data, bins=80, stat="density", color="0.65", edgecolor=None, ax=ax)
        lv = _np(levels)
        for v in lv:
            unused = v < lo - 1e-9 or v > hi + 1e-9
            ax.axvline(v, color="0.5" if unused else PALETTE["duq"], lw=0.9, ls=":" if unused else "-")
        t = name if mse is None else f"{name}: MSE {mse[name]:.2e}"
        ax.set_title(t, fontsize="small", loc="left")
        ax.set_ylabel("density")
        ax.grid(axis="x", visible=False)  # only the levels are vertical lines
    axes[-1, 0].set_xlabel("value")
    return fig


def plot_error_heatmap(error: Tensor, *, ax: Axes | None = None, title: str | None = None,
                       label: str = "mean |error|\nover channels") -> Axes:
    """Heat map of a 2-D error map (e.g. |zero-padded - negative-padded| conv outputs, mean over channels).

    The axes are the output map's rows and columns (ticks at the first and last index), and the colour bar
    says what the colour measures (``label``).
    """
    ax = _axes(ax, (3.2, 2.8))
    e = _np(error)
    if e.ndim != 2:
        raise ValueError(f"plot_error_heatmap needs a 2-D map, got shape {e.shape}")
    sns.heatmap(e, ax=ax, cmap="rocket_r", square=True, vmin=0, xticklabels=False, yticklabels=False,
                cbar_kws={"shrink": 0.8, "label": label})
    h, w = e.shape
    ax.set_xticks([0.5, w - 0.5], ["0", str(w - 1)])
    ax.set_yticks([0.5, h - 0.5], ["0", str(h - 1)])
    ax.tick_params(length=0, labelsize="small")
    ax.set(xlabel="output column", ylabel="output row")
    if title:
        ax.set_title(title, fontsize="small")
    return ax


def plot_border_fraction(
    sizes: Sequence[int], fractions: Mapping[int, Sequence[float]], *, ax: Axes | None = None
) -> Axes:
    """Line plot of the fraction of border pixels against map size, one line per kernel size."""
    ax = _axes(ax, (4.2, 3.0))
    for k, fr in fractions.items():
        ax.plot(list(sizes), [100 * f for f in fr], marker="o", label=f"{k}x{k} kernel")
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(sizes), [str(s) for s in sizes])
    ax.set(xlabel="feature map size (H = W)", ylabel="% of output pixels touching padding")
    ax.legend(fontsize="small")
    return ax


def tensor_stats(t: Tensor) -> dict[str, float]:
    """Min, max, mean and std of a tensor as floats (for printing next to a figure)."""
    t = t.detach().double()
    return {"min": float(t.min()), "max": float(t.max()), "mean": float(t.mean()), "std": float(t.std())}

