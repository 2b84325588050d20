"""The recipe chapter's figure: a PROFIT schedule drawn as a timeline, from the phases a recipe file expands to.

:func:`plot_timeline` takes :func:`profit_edu.schedule.expand_phases`'s list (never a hand-written one), so the
picture is the recipe: three lanes over the epochs, the activation bits, the weight bits, and the phases coloured by
kind (float fine-tune, BN stabilisation, AIWQ sampling, fine-tune), with the share of ranked layers each fine-tune
freezes hatched. :func:`phase_starts` gives each phase's first epoch, to draw measurements on the same axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

__all__ = ["BIT_COLORS", "KIND_COLORS", "KIND_LABELS", "phase_starts", "plot_timeline"]

#: One colour per phase kind (:data:`profit_edu.schedule.PHASE_KINDS`).
KIND_COLORS = {"fp": "#7f7f7f", "bn": "#9ecae1", "sampling": "#fdae6b", "ft": "#3182bd"}
KIND_LABELS = {"fp": "float fine-tune", "bn": "BN stabilisation (weights frozen)", "sampling": "AIWQ sampling",
               "ft": "fine-tune"}
#: Bit widths from light (8) to dark (2); None (float) is grey.
BIT_COLORS = {None: "#d9d9d9", 8: "#fee0d2", 7: "#fcbba1", 6: "#fc9272", 5: "#fb6a4a", 4: "#ef3b2c", 3: "#cb181d",
              2: "#99000d"}
_LANES = ("activations", "weights", "phase")


def phase_starts(phases: Sequence[Any]) -> list[int]:
    """The first epoch of each phase (0-based, counted over the whole schedule).

    >>> from profit_edu.schedule import Phase
    >>> phase_starts([Phase("a", "bn", 2, 0, 8, None), Phase("b", "ft", 3, 0, 8, None)])
    [0, 2]
    """
    starts, t = [], 0
    for p in phases:
        starts.append(t)
        t += p.epochs
    return starts


def _spans(values: Sequence[Any], starts: Sequence[int], ends: Sequence[int]) -> list[tuple[Any, int, int]]:
    """Consecutive phases with the same value merged into (value, start, end)."""
    out: list[tuple[Any, int, int]] = []
    for v, s, e in zip(values, starts, ends):
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1], e)
        else:
            out.append((v, s, e))
    return out


def _label(ax: Axes, x: float, y: float, text: str, width: float, total: float, color: str = "black") -> None:
    """Write ``text`` in a bar when the bar is wide enough for it (about one character per 1.3 % of the axis)."""
    if width / total >= 0.013 * len(text):
        ax.text(x, y, text, ha="center", va="center", fontsize="small", color=color)


def _bits_lane(ax: Axes, row: int, bits: Sequence[int | None], starts: list[int], ends: list[int], total: int) -> None:
    for b, s, e in _spans(bits, starts, ends):
        ax.add_patch(Rectangle((s, row - 0.4), e - s, 0.8, facecolor=BIT_COLORS.get(b, "#444444"), edgecolor="white"))
        _label(ax, (s + e) / 2, row, "fp" if b is None else f"{b}", e - s, total,
               color="white" if b is not None and b <= 4 else "black")


def _phase_lane(ax: Axes, row: int, phases: Sequence[Any], starts: list[int], total: int) -> None:
    for p, s in zip(phases, starts):
        ax.add_patch(Rectangle((s, row - 0.4), p.epochs, 0.8, facecolor=KIND_COLORS[p.kind], edgecolor="white"))
        if p.freeze_fraction:  # the share of ranked layers frozen, hatched from the bottom
            ax.add_patch(Rectangle((s, row - 0.4), p.epochs, 0.8 * float(p.freeze_fraction), facecolor="none",
                                   edgecolor="black", hatch="///", lw=0))
        short = p.name.split("_", 1)[1] if "_" in p.name else p.name
        _label(ax, s + p.epochs / 2, row, short, p.epochs, total, color="white" if p.kind == "ft" else "black")


def plot_timeline(phases: Sequence[Any], *, ax: Axes | None = None, title: str | None = None,
                  legend: bool = True) -> Figure:
    """A schedule as three lanes over the epochs: activation bits, weight bits, and the phases by kind.

    Args:
        phases: :func:`profit_edu.schedule.expand_phases` of a recipe (objects with ``name``, ``kind``, ``epochs``,
            ``act_bits``, ``weight_bits`` and ``freeze_fraction``).
        ax: draw into these axes instead of a new figure.
        title: the axes' title.
        legend: add the legend of phase kinds and of the frozen share, below the axes.

    Raises:
        ValueError: no phases, or a phase kind without a colour.
    """
    if not phases:
        raise ValueError("plot_timeline needs at least one phase")
    unknown = sorted({p.kind for p in phases} - set(KIND_COLORS))
    if unknown:
        raise ValueError(f"phase kinds {unknown} have no colour; known: {sorted(KIND_COLORS)}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.2, 1.9), layout="constrained")
    fig = ax.figure
    starts = phase_starts(phases)
    ends = [s + p.epochs for s, p in zip(starts, phases)]
    total = ends[-1]
    _bits_lane(ax, 2, [p.act_bits for p in phases], starts, ends, total)
    _bits_lane(ax, 1, [p.weight_bits for p in phases], starts, ends, total)
    _phase_lane(ax, 0, phases, starts, total)
    ax.set_xlim(0, total)
    ax.set_ylim(-0.6, 2.6)
    ax.set_yticks([2, 1, 0], list(_LANES))
    ax.set_xlabel("epoch")
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize="medium")
    if legend:
        kinds = [k for k in KIND_COLORS if any(p.kind == k for p in phases)]
        handles = [Patch(color=KIND_COLORS[k], label=KIND_LABELS[k]) for k in kinds]
        if any(p.freeze_fraction for p in phases):
            handles.append(Patch(facecolor="white", edgecolor="black", hatch="///", label="share of layers frozen"))
        ax.legend(handles=handles, fontsize="small", ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.62),
                  frameon=False)
    sns.despine(ax=ax, left=True)
    return fig
