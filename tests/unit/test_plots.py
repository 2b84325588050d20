"""profit_edu.book.plots: each figure function draws what it is given and returns the Figure or Axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from profit_edu import quant
from profit_edu.book import plots


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_plot_transfer_draws_one_line_per_curve() -> None:
    x = torch.linspace(-1, 2, 50)
    ax = plots.plot_transfer(x, {"identity": x, "3-bit": quant.duq(x, 1.0, 1.0, 3, "unsigned")}, title="t")
    assert isinstance(ax, Axes)
    assert len(ax.lines) == 2 and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["identity", "3-bit"]


def test_plot_quantization_draws_levels_and_reuses_a_figure() -> None:
    x = torch.linspace(0, 2, 100)
    levels = quant.duq_levels(1.0, 2, "unsigned")
    fig = plots.plot_quantization(x, quant.duq(x, 1.0, 1.0, 2, "unsigned"), levels, title="x")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    left, right = fig.axes
    assert len(left.lines) == 2 + len(levels)  # identity, staircase, one line per level
    assert len(right.lines) == len(levels)
    again = plots.plot_quantization(x, x, levels, fig=fig)
    assert again is fig and len(fig.axes) == 2


def test_plot_quantizer_panels_grid_and_missing_cells() -> None:
    x = torch.linspace(0, 1, 20)
    fig = plots.plot_quantizer_panels(x, {"PACT": {"y": x, "dy/dx": x}, "DuQ": {"y": x, "dy/dx": x, "dy/dc": x}})
    assert len(fig.axes) == 6
    assert any(t.get_text() == "no such\nparameter" for ax in fig.axes for t in ax.texts)


def test_flipbook_is_html_with_one_frame_per_value() -> None:
    seen = []

    def draw(fig, value):
        seen.append(value)
        fig.clear()
        fig.add_subplot().plot([0, 1], [0, value])

    html = plots.flipbook(draw, [1, 2, 3], figsize=(2, 1.5))
    assert "anim-slider" in html
    assert "frames[2]" in html and "frames[3]" not in html  # one frame per value
    assert set(seen) >= {1, 2, 3}
    # read offline: no stylesheet from a CDN (matplotlib's controls use FontAwesome), plain-character icons
    assert "http" not in html and "fa fa-" not in html and "font-awesome" not in html
    assert html.count("<button") == 9 and html.count('<span aria-hidden="true">') == 9
    with pytest.raises(ValueError, match="at least one frame"):
        plots.flipbook(draw, [])


def test_channel_ranges_and_levels() -> None:
    ranges = {"dw": torch.rand(32) + 0.01, "pw": torch.rand(16) + 0.5}
    ax = plots.plot_channel_ranges(ranges)
    assert ax.get_yscale() == "log"
    assert sum(len(c.get_offsets()) for c in ax.collections) == 48
    ax2 = plots.plot_levels_per_channel({"dw": torch.randint(1, 10, (32,))}, bits=4)
    assert "15" in ax2.get_xlabel()


def test_grid_histogram_marks_unused_levels() -> None:
    values = torch.rand(1000) - 0.3
    fig = plots.plot_grid_histogram(values, {"a": torch.tensor([-1.0, 0.0, 0.5]), "b": torch.tensor([0.0])},
                                    mse={"a": 0.1, "b": 0.2})
    assert len(fig.axes) == 2
    (x0, y0), (x1, y1) = (ax.get_position().get_points()[0] for ax in fig.axes)
    assert x0 == x1 and y0 > y1  # stacked in one column, each panel as wide as the figure
    styles = [line.get_linestyle() for line in fig.axes[0].lines]
    assert styles.count(":") == 1  # the level at -1 lies below every value
    assert "MSE" in fig.axes[1].get_title(loc="left")


def test_error_heatmap_and_border_fraction() -> None:
    ax = plots.plot_error_heatmap(torch.rand(7, 7), title="e")
    assert ax.get_title() == "e"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("output column", "output row")
    colorbar = ax.figure.axes[-1]
    assert colorbar is not ax and colorbar.get_ylabel() == "mean |error|\nover channels"
    with pytest.raises(ValueError, match="2-D map"):
        plots.plot_error_heatmap(torch.rand(2, 7, 7))
    ax2 = plots.plot_border_fraction([7, 14], {3: [0.49, 0.27], 5: [0.82, 0.49]})
    assert len(ax2.lines) == 2


def test_figure_png_and_stats() -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = plots.figure_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    s = plots.tensor_stats(torch.tensor([1.0, 3.0]))
    assert s == {"min": 1.0, "max": 3.0, "mean": 2.0, "std": pytest.approx(2**0.5)}


def test_use_book_style_is_idempotent() -> None:
    with plt.rc_context():  # the style is global: restore the test session's afterwards
        plots.use_book_style()
        once = plt.rcParams.copy()
        plots.use_book_style()
        assert plt.rcParams.copy() == once  # a second call (a chapter run twice) changes nothing
        assert plt.rcParams["figure.dpi"] == 90 and plt.rcParams["axes.grid"]
