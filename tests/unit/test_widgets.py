"""profit_edu.book.widgets: the explorer's numbers, its slider wiring, and the kernel-free image stepper."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import ipywidgets
import pytest
import torch

from profit_edu import quant
from profit_edu.book import plots, widgets


def test_explorer_state_numbers() -> None:
    sample = torch.tensor([0.1, 0.5, 2.0, -1.0])
    s = widgets.explorer_state(sample, bits=2, clip=1.0)
    assert len(s.levels) == 4 and s.used == 3  # 0, 2/3 and 1 are hit
    assert s.clipped == pytest.approx(0.5)  # 2.0 above the clip, -1.0 below 0
    q = quant.duq(sample.double(), 1.0, 1.0, 2, "unsigned")
    assert s.mse == pytest.approx(float(((q - sample.double()) ** 2).mean()))
    assert torch.equal(s.y, quant.duq(s.x, 1.0, 1.0, 2, "unsigned"))


def test_explorer_state_signed_and_errors() -> None:
    s = widgets.explorer_state(widgets.default_sample("signed"), bits=3, clip=1.0, mode="signed")
    assert len(s.levels) == 7 and float(s.x.min()) < 0
    with pytest.raises(ValueError, match="clip must be > 0"):
        widgets.explorer_state(torch.ones(3), 3, 0.0)
    with pytest.raises(ValueError, match="mode"):
        widgets.explorer_state(torch.ones(3), 3, 1.0, mode="hswish")
    with pytest.raises(ValueError, match="bits"):
        widgets.explorer_state(torch.ones(3), 9, 1.0)


def test_more_bits_never_hurt_at_the_same_clip() -> None:
    sample = widgets.default_sample("unsigned")
    mses = [widgets.explorer_state(sample, b, 2.0).mse for b in range(2, 9)]
    assert all(a > b for a, b in itertools.pairwise(mses))


def test_explorer_sliders_drive_the_state() -> None:
    ex = widgets.QuantizerExplorer(bits=3, clip=1.0)
    assert ex.state.bits == 3 and ex.state.clip == 1.0
    assert "3 bits" in ex.label.value
    ex.bits_slider.value = 5  # what dragging the slider does
    assert ex.state.bits == 5 and "5 bits" in ex.label.value
    ex.clip_slider.value = 1.5
    assert ex.state.clip == pytest.approx(1.5)
    assert isinstance(ex.widget, ipywidgets.VBox)
    assert ex.update(2, 0.5).bits == 2


def test_image_stepper_links_slider_and_pages() -> None:
    import matplotlib.pyplot as plt

    pngs = []
    for v in (1, 2, 3):
        fig, ax = plt.subplots(figsize=(1, 1))
        ax.plot([0, v])
        pngs.append(plots.figure_png(fig))
    box = widgets.image_stepper(pngs, ["a", "b", "c"], description="pick")
    slider, pages = box.children
    assert isinstance(slider, ipywidgets.SelectionSlider) and slider.options == ("a", "b", "c")
    assert len(pages.children) == 3 and all(isinstance(c, ipywidgets.Image) for c in pages.children)
    slider.value = "c"  # jslink works in the browser; in Python the index is what it links
    assert slider.index == 2
    with pytest.raises(ValueError, match="one label per image"):
        widgets.image_stepper(pngs, ["a"])
    with pytest.raises(ValueError, match="at least one image"):
        widgets.image_stepper([], [])
