"""A whole PROFIT recipe, end to end, on synthetic data: every phase runs, freezes what it should, and resumes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from profit_edu.profit import build_loaders, build_model, expand_phases, load_recipe, run_recipe

pytestmark = pytest.mark.slow



def _run(recipe, out: Path, **kwargs):
    torch.manual_seed(recipe.seed)
    model = build_model(recipe)
    train_loader, val_loader, _ = build_loaders(recipe)
    return run_recipe(recipe, model, train_loader, val_loader, out_dir=out, **kwargs)


def _state(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_tiny_recipe_end_to_end_then_resume_inside_the_sampling_phase(tmp_path):
    recipe = load_recipe("tiny")
    seen: list[tuple[str, int]] = []
    result = _run(recipe, tmp_path / "run", callback=lambda phase, epoch, record: seen.append((phase.name, epoch)))

    phases = expand_phases(recipe)
    assert [p.phase.name for p in result.phases] == [p.name for p in phases]
    assert seen == [(p.name, e) for p in phases for e in range(p.epochs)]
    assert all(len(p.history) == p.phase.epochs for p in result.phases)

    # the AIWQ ranking: every conv, most unstable first, saved as JSON
    doc = json.loads((tmp_path / "run" / "aiwq_ranking.json").read_text())
    assert doc["layers"] == 52 and len(result.ranking) == 52
    values = [row["aiwq"] for row in doc["ranking"]]
    assert values == sorted(values, reverse=True) and values[0] > 0
    assert {row["kind"] for row in doc["ranking"]} == {"stem", "depthwise", "pointwise", "last"}
    top = [name for name, _ in result.ranking]

    frozen = {p.phase.name: p.frozen for p in result.phases}
    assert frozen["w4_ft1"] == () and frozen["w4_ft2"] == tuple(top[:17]) and frozen["w4_ft3"] == tuple(top[:34])
    assert len(frozen["w4_bn"]) == 53 and frozen["fp"] == ()  # BN phases freeze every conv and the classifier
    assert result.phases[-1].history[-1]["bits"] == {"weight": 4, "act": 4}
    assert result.ema is not None

    # a second run skips every finished phase
    again = _run(recipe, tmp_path / "run")
    assert all(p.skipped for p in again.phases) and again.ranking == result.ranking

    # a run interrupted after the first sampling epoch ends exactly where the uninterrupted one did
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "run", cut)
    sampling = next(cut.glob("*_w4_sampling"))
    shutil.rmtree(sampling / "epoch_1")
    for later in sorted(cut.glob("0[6-9]_*")):
        shutil.rmtree(later)
    (cut / "aiwq_ranking.json").unlink()
    resumed = _run(recipe, cut)
    assert [p.skipped for p in resumed.phases] == [True] * 5 + [False] * 5
    assert resumed.ranking == result.ranking
    final, final_resumed = _state(result), _state(resumed)
    assert final.keys() == final_resumed.keys()
    for key in final:
        assert torch.equal(final[key], final_resumed[key]), key


def test_reference_mode_runs_with_every_quirk(tmp_path):
    tiny = load_recipe("tiny")
    schedule = dataclasses.replace(tiny.schedule, bn_stabilize=False, sampling_epochs=1,
                                   freeze_fractions=tiny.schedule.freeze_fractions[:2])
    recipe = dataclasses.replace(tiny, name="tiny_reference", mode="reference",
                                 quirks=("init_bug", "teacher_train_mode", "relu_in_fp", "aiwq_zero_pad"),
                                 schedule=schedule)
    result = _run(recipe, tmp_path / "ref")
    assert [p.phase.name for p in result.phases] == ["fp", "a4_ft", "w4_sampling", "w4_ft1", "w4_ft2"]
    assert len(result.ranking) == 52 and result.phases[-1].frozen == tuple(n for n, _ in result.ranking[:17])
    config = json.loads((tmp_path / "ref" / "04_w4_ft2" / "checkpoint.json").read_text())["config"]
    assert config["teacher_train_mode"] is True
    styles = {q.init_style for m in result.model.modules() if hasattr(m, "quantizer") for q in [m.quantizer]}
    assert styles == {"reference"}
