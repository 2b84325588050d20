"""ipywidgets explorers for the book, with the numbers kept apart from the widgets.

Two kinds of widget, for the two places a chapter is read:

* :class:`QuantizerExplorer` - live sliders (bits, clip) that recompute and redraw with Python. It needs a
  kernel: Jupyter or Colab. It uses only core widgets, an ``Output`` and ``clear_output(wait=True)``, which
  work in Colab's ipywidgets 7 as well as in ipywidgets 8.
* :func:`image_stepper` - a slider over pictures drawn in advance, linked in the browser (``jslink``). It
  keeps working on the static book page, where there is no kernel.

The arithmetic lives in plain functions (:func:`explorer_state`), so tests check it without a browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from .. import quant
from . import plots

__all__ = ["ExplorerState", "QuantizerExplorer", "default_sample", "describe_state", "explorer_state", "image_stepper"]


@dataclass(frozen=True)
class ExplorerState:
    """What the explorer shows for one setting of the sliders.

    Attributes:
        bits, clip, mode: the setting.
        x, y: an input range and the quantizer's output on it (the transfer curve).
        levels: all output levels of the grid.
        mse: mean squared error of the quantized sample against the sample.
        clipped: fraction of the sample outside the clip range.
        used: how many distinct levels the sample actually lands on.
    """

    bits: int
    clip: float
    mode: str
    x: Tensor
    y: Tensor
    levels: Tensor
    mse: float
    clipped: float
    used: int


def default_sample(mode: str = "unsigned", n: int = 20_000, seed: int = 0) -> Tensor:
    """A fixed, seeded sample: ReLU of a unit Gaussian (unsigned) or a Laplace-like weight sample (signed)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=gen)
    if mode == "unsigned":
        return torch.relu(z)
    if mode == "signed":
        e = torch.empty(n).exponential_(1.0, generator=gen)
        return torch.sign(z) * e * 0.5
    raise ValueError(f"mode must be 'unsigned' or 'signed', got {mode!r}")


def explorer_state(sample: Tensor, bits: int, clip: float, mode: str = "unsigned") -> ExplorerState:
    """Quantize ``sample`` on DuQ's grid with ``a = c = clip`` and summarise what happened.

    >>> s = explorer_state(torch.tensor([0.1, 0.5, 2.0]), bits=2, clip=1.0)
    >>> s.used, round(s.clipped, 3)
    (3, 0.333)
    """
    quant.check_bits(bits)
    if mode not in ("unsigned", "signed"):
        raise ValueError(f"mode must be 'unsigned' or 'signed', got {mode!r}")
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    sample = sample.detach().double()
    span = max(float(sample.abs().max()), clip) * 1.1
    lo = -span if mode == "signed" else min(float(sample.min()), 0.0) - 0.1 * span
    x = torch.linspace(lo, span, 801, dtype=torch.float64)
    y = quant.duq(x, clip, clip, bits, mode)
    q = quant.duq(sample, clip, clip, bits, mode)
    low = -clip if mode == "signed" else 0.0
    clipped = float(((sample > clip) | (sample < low)).double().mean())
    return ExplorerState(
        bits=bits, clip=float(clip), mode=mode, x=x, y=y, levels=quant.duq_levels(clip, bits, mode),
        mse=float(((q - sample) ** 2).mean()), clipped=clipped, used=int(torch.unique(q).numel()),
    )


def describe_state(s: ExplorerState) -> str:
    """One line of text under the explorer's plot."""
    return (f"{s.bits} bits, clip {s.clip:.2f}: {len(s.levels)} levels, {s.used} used by the data, "
            f"{100 * s.clipped:.1f}% of the data clipped, MSE {s.mse:.2e}")


class QuantizerExplorer:
    """Sliders over bit width and clip that redraw the transfer curve and the data's histogram.

    In a notebook: ``ex = QuantizerExplorer(); display(ex.widget)``. ``ex.update(bits, clip)`` does what
    moving the sliders does and returns the new :class:`ExplorerState`.
    """

    def __init__(self, sample: Tensor | None = None, *, mode: str = "unsigned", bits: int = 3,
                 clip: float | None = None) -> None:
        self.sample = default_sample(mode) if sample is None else sample.detach().reshape(-1)
        self.mode = mode
        top = float(self.sample.abs().max())
        clip = clip if clip is not None else round(0.5 * top, 2)
        self.bits_slider = widgets.IntSlider(value=bits, min=2, max=8, step=1, description="bits",
                                             continuous_update=False)
        self.clip_slider = widgets.FloatSlider(value=clip, min=0.05, max=round(top, 2), step=0.05,
                                               description="clip a", continuous_update=False, readout_format=".2f")
        self.output = widgets.Output()
        self.label = widgets.HTML()
        self.state = explorer_state(self.sample, bits, clip, mode)
        self.bits_slider.observe(self._on_change, names="value")
        self.clip_slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.bits_slider, self.clip_slider]), self.output, self.label])
        self.update(bits, clip)

    def _on_change(self, change: dict) -> None:
        self.update(self.bits_slider.value, self.clip_slider.value)

    def update(self, bits: int, clip: float) -> ExplorerState:
        """Recompute for (bits, clip), redraw into the Output, and return the new state."""
        self.state = explorer_state(self.sample, bits, clip, self.mode)
        self.label.value = describe_state(self.state)
        with self.output:
            from IPython.display import clear_output, display

            clear_output(wait=True)
            fig = plots.plot_quantization(self.state.x, self.state.y, self.state.levels, sample=self.sample)
            display(fig)
            plt.close(fig)
        return self.state


def image_stepper(images: Sequence[bytes], labels: Sequence[str], *, description: str = "") -> widgets.VBox:
    """A slider that flips between pre-rendered PNG images, entirely in the browser.

    The slider's index is linked to the selected child with ``jslink``, so the static HTML page (no kernel)
    still responds. ipywidgets 8 has ``Stack`` for this; ipywidgets 7 (Colab) gets a ``Tab`` instead.

    Raises:
        ValueError: no images, or a different number of labels.
    """
    if len(images) == 0:
        raise ValueError("image_stepper needs at least one image")
    if len(labels) != len(images):
        raise ValueError(f"image_stepper needs one label per image: {len(images)} images, {len(labels)} labels")
    pictures = [widgets.Image(value=png, format="png", layout=widgets.Layout(max_width="100%")) for png in images]
    slider = widgets.SelectionSlider(options=list(labels), value=labels[0], description=description,
                                     continuous_update=True, layout=widgets.Layout(width="28em"),
                                     style={"description_width": "initial"})
    if hasattr(widgets, "Stack"):
        pages = widgets.Stack(pictures, selected_index=0)
    else:  # ipywidgets 7 (Colab): a Tab shows the same pages with clickable titles
        pages = widgets.Tab(pictures)
        for i, label in enumerate(labels):
            pages.set_title(i, str(label))
    widgets.jslink((slider, "index"), (pages, "selected_index"))
    return widgets.VBox([slider, pages])
