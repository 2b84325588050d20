"""profit_edu.book.recipe_plots: the timeline draws the phases a recipe expands to, and nothing else."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import Rectangle

from profit_edu.book import recipe_plots
from profit_edu.recipe import load_recipe
from profit_edu.schedule import expand_phases


@pytest.mark.parametrize("name", ["tiny", "quick", "cifar_w3a3", "mobilenet_v2_w4a4_imagenet"])
def test_timeline_has_one_bar_per_phase_and_spans_the_epochs(name: str) -> None:
    phases = expand_phases(load_recipe(name))
    fig = recipe_plots.plot_timeline(phases, title=name)
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_y() == pytest.approx(-0.4)
            and p.get_facecolor()[3] > 0]  # the phase lane, hatching (no face) left out
    assert [b.get_width() for b in bars] == [p.epochs for p in phases]
    assert [b.get_x() for b in bars] == recipe_plots.phase_starts(phases)
    colors = {matplotlib.colors.to_hex(b.get_facecolor()) for b in bars}
    assert colors == {recipe_plots.KIND_COLORS[p.kind] for p in phases}
    assert ax.get_xlim() == (0, sum(p.epochs for p in phases))
    hatched = [p for p in ax.patches if p.get_hatch()]
    assert len(hatched) == sum(1 for p in phases if p.freeze_fraction)
    for h, p in zip(hatched, [p for p in phases if p.freeze_fraction]):
        assert h.get_height() == pytest.approx(0.8 * float(p.freeze_fraction))
    weight_lane = [p for p in ax.patches if p.get_y() == pytest.approx(0.6)]
    assert sum(b.get_width() for b in weight_lane) == sum(p.epochs for p in phases)  # merged spans cover it all
    plt.close(fig)


def test_timeline_refuses_what_it_cannot_draw() -> None:
    with pytest.raises(ValueError, match="at least one phase"):
        recipe_plots.plot_timeline([])
    phase = expand_phases(load_recipe("tiny"))[0]
    odd = type("P", (), {"name": "x", "kind": "warmup", "epochs": 1, "act_bits": None, "weight_bits": None,
                         "freeze_fraction": None})()
    with pytest.raises(ValueError, match=r"\['warmup'\] have no colour"):
        recipe_plots.plot_timeline([phase, odd])
