"""The accuracy benchmark (benchmarks/accuracy/) at tiny scale: every variant runs from a float init made here,
writes its ledger lines, resumes, is skipped once measured, and the summary averages over seeds."""

from __future__ import annotations

import dataclasses
import doctest
import importlib.util
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from profit_edu import ledger
from profit_edu.checkpoint import load_checkpoint
from profit_edu.cli import main as cli_main

pytestmark = pytest.mark.slow

ACCURACY = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy"
# The tiny recipe, shrunk further: 32 training images in batches of 16, no BN-stabilisation phases, one sampling
# epoch, two freezing fine-tunes (1/3, 2/3). W4A4 runs train 4 epochs, W3A3 runs 6. Stem stride 2 as the init.
SHRINK = ["--set", "model.stem_stride=2", "--set", "data.train_images=32", "--set", "data.val_images=16",
          "--set", "data.batch_size=16", "--set", "schedule.bn_stabilize=false", "--set", "schedule.sampling_epochs=1",
          "--set", 'schedule.freeze_fractions=["1/3", "2/3"]']
COMMON = ["--recipe", "tiny", "--test-images", "32", "--threads", "1", *SHRINK]
KEYS = {"id", "date", "commit", "hardware", "scale", "dataset", "model", "width_mult", "method", "weight_bits",
        "act_bits", "seed", "metric", "value", "wall_s", "command", "variant", "init_sha256", "init_commit",
        "setup", "copy"}



@pytest.fixture(scope="module")
def scripts() -> SimpleNamespace:
    """run.py and summary.py loaded as modules (they put benchmarks/accuracy on sys.path for ``variants``)."""
    loaded = {}
    for name in ("run", "summary"):
        spec = importlib.util.spec_from_file_location(f"accuracy_{name}", ACCURACY / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded[name] = module
    return SimpleNamespace(**loaded, variants=sys.modules["variants"])


@pytest.fixture(scope="module")
def fp_init(tmp_path_factory) -> Path:
    """A tiny float MobileNet-v2 (width 0.25, CIFAR stem, stem stride 2), one epoch on synthetic images."""
    out = tmp_path_factory.mktemp("init") / "fp"
    assert cli_main(["train", "--model", "mobilenet_v2", "--scale", "tiny", "--out", str(out)]) == 0
    return out


def _lines(path: Path) -> list[dict]:
    return ledger.read(path)


def test_every_variant_writes_its_ledger_lines_resumes_and_summarises(scripts, fp_init, tmp_path, monkeypatch,
                                                                       capsys):
    book = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("PROFIT_EDU_LEDGER", str(book))
    out = tmp_path / "runs"
    run = scripts.run.main
    start = time.perf_counter()
    assert run(["--init", str(fp_init), "--out", str(out), "--seeds", "0", *COMMON]) == 0
    assert run(["--init", str(fp_init), "--out", str(out), "--seeds", "0", "1", "--variants", "duq_w4a4",
                "profit_w4a4", *COMMON]) == 0
    elapsed = time.perf_counter() - start
    printed = capsys.readouterr().out
    assert "duq_w4a4 seed 0: already in the ledger" in printed  # seed 0 was measured by the first command

    lines = _lines(book)
    assert all(KEYS <= set(r) for r in lines), [sorted(KEYS - set(r)) for r in lines]
    runs = {(r["variant"], r["seed"]) for r in lines}
    variants = set(scripts.variants.VARIANTS)
    assert {v for v, _ in runs} == variants
    assert {s for v, s in runs if v in ("duq_w4a4", "profit_w4a4")} == {0, 1}
    assert {s for v, s in runs if v not in ("duq_w4a4", "profit_w4a4")} == {0}
    assert len(lines) == 2 * len(runs)  # the model and its EMA (the init has an EMA too)
    sha = json.loads((fp_init / "checkpoint.json").read_text())["tensors"]["sha256"]
    by = {(r["variant"], r["seed"], r["copy"]): r for r in lines}
    for r in lines:
        assert (r["metric"], r["scale"], r["dataset"], r["model"], r["width_mult"]) == (
            "top1", "tiny", "synthetic", "mobilenet_v2", 0.25)
        assert r["init_sha256"] == sha and 0 <= r["value"] <= 100 and r["test_images"] == 32
        assert r["id"] == f"accuracy/tiny/tiny/{r['variant']}/seed{r['seed']}/{r['copy']}"
    assert (by["fp", 0, "model"]["method"], by["fp", 0, "model"]["weight_bits"]) == ("fp", None)
    assert [by[v, 0, "model"]["method"] for v in ("duq_w4a4", "profit_w4a4", "random_w4a4", "pact_w4a4",
                                                   "lsq_w4a4")] == ["duq", "duq+profit", "duq+random_freeze",
                                                                    "pact", "lsq"]
    assert by["profit_w3a3", 0, "model"]["weight_bits"] == 3
    assert by["profit_w3a3", 0, "model"]["act_bits_schedule"] == [4, 3]
    assert (by["random_w3a3", 0, "model"]["method"], by["random_w3a3", 0, "model"]["weight_bits"]) == (
        "duq+random_freeze", 3)
    # what each policy froze, and what it left on disk
    assert by["profit_w4a4", 1, "model"]["frozen_layers"] == {"a4_ft": 0, "w4_ft1": 17, "w4_ft2": 34}
    assert by["random_w4a4", 0, "model"]["frozen_layers"] == {"a4_ft": 0, "w4_ft1": 17, "w4_ft2": 34}
    assert set(by["duq_w4a4", 0, "model"]["frozen_layers"].values()) == {0}
    assert (out / "profit_w4a4" / "seed0" / "aiwq_ranking.json").is_file()
    assert (out / "random_w4a4" / "seed0" / "random_order.json").is_file()
    assert not (out / "duq_w4a4" / "seed0" / "aiwq_ranking.json").exists()
    assert "--variants profit_w4a4 --seeds 1 " in by["profit_w4a4", 1, "model"]["command"]
    # the two policies train identically until freezing starts: same seed, same loss in the sampling phase
    done = [json.loads((out / v / "seed1" / "01_w4_sampling" / "epoch_0" / "done.json").read_text())
            for v in ("duq_w4a4", "profit_w4a4")]
    assert done[0]["history"][0]["train_loss"] == done[1]["history"][0]["train_loss"]

    # measured runs are skipped; an interrupted one resumes where it stopped and ends at the same number
    assert run(["--init", str(fp_init), "--out", str(out), "--seeds", "0", *COMMON]) == 0
    assert len(_lines(book)) == len(lines)
    capsys.readouterr()
    shutil.rmtree(out / "profit_w4a4" / "seed1" / "03_w4_ft2")
    book.write_text("".join(json.dumps(r) + "\n" for r in lines if (r["variant"], r["seed"]) != ("profit_w4a4", 1)))
    assert run(["--init", str(fp_init), "--out", str(out), "--seeds", "1", "--variants", "profit_w4a4",
                *COMMON]) == 0
    printed = capsys.readouterr().out
    assert "w4_ft2 epoch 1/1" in printed and "a4_ft epoch" not in printed
    again = {(r["variant"], r["seed"], r["copy"]): r for r in _lines(book)}
    for copy in ("model", "ema"):
        assert again["profit_w4a4", 1, copy]["value"] == by["profit_w4a4", 1, copy]["value"]

    # the summary: mean +- std over seeds, per variant, from the ledger alone
    summary_json = tmp_path / "accuracy_tiny.json"
    assert scripts.summary.main(["--scale", "tiny", "--json", str(summary_json)]) == 0
    table = capsys.readouterr().out
    for v in variants:
        assert f"\n{v} " in table
    assert "profit_w4a4 - duq_w4a4 (model)" in table and "seeds 0,1" in table
    doc = json.loads(summary_json.read_text())
    (group,) = doc["groups"]
    rows = {row["variant"]: row for row in group["rows"]}
    assert set(rows) == variants and group["init_sha256"] == sha
    values = [by["profit_w4a4", s, "model"]["value"] for s in (0, 1)]
    assert rows["profit_w4a4"]["seeds"] == [0, 1]
    assert rows["profit_w4a4"]["model"]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-3)
    assert rows["profit_w4a4"]["model"]["std"] == pytest.approx(statistics.stdev(values), abs=1e-3)
    assert rows["lsq_w4a4"]["model"]["n"] == 1 and rows["lsq_w4a4"]["model"]["std"] is None
    pairs = {(p["a"], p["b"], p["copy"]): p for p in group["paired"]}
    assert ("profit_w4a4", "duq_w4a4", "model") in pairs and ("profit_w4a4", "random_w4a4", "ema") in pairs
    diff = pairs["profit_w4a4", "duq_w4a4", "model"]  # two seeds: t(0.975, 1) = 12.706
    assert diff["ci95"] == pytest.approx(12.706 * statistics.stdev(diff["values"]) / 2**0.5, abs=2e-3)
    assert "95 % CI" in table
    # every PROFIT run's AIWQ ranking is kept beside the ledger, and the summary compares the seeds' rankings
    for s in (0, 1):
        saved = json.loads((book.parent / "rankings" / f"tiny_tiny_profit_w4a4_seed{s}.json").read_text())
        top = saved["ranking"][: saved["top_third"]]
        assert saved["depthwise_in_top_third"] == sum(r["kind"] == "depthwise" for r in top)
        assert by["profit_w4a4", s, "model"]["ranking_file"] == f"rankings/tiny_tiny_profit_w4a4_seed{s}.json"
    ranks = {r["variant"]: r for r in doc["rankings"]}["profit_w4a4"]
    assert ranks["seeds"] == [0, 1] and ranks["layers"] == len(saved["ranking"])
    assert -1 <= ranks["spearman"][0]["spearman"] <= 1
    assert "AIWQ rankings:" in table
    print(f"tiny matrix: {elapsed:.1f} s")


def test_a_mismatched_init_is_rejected_before_anything_runs(scripts, fp_init, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROFIT_EDU_LEDGER", str(tmp_path / "ledger.jsonl"))
    out = tmp_path / "runs"
    base = ["--init", str(fp_init), "--out", str(out), "--recipe", "tiny"]
    assert scripts.run.main(base) == 2  # the tiny recipe's stem has stride 1, the init's 2
    err = capsys.readouterr().err
    assert "holds another model than recipe 'tiny' builds" in err
    assert "stem_stride: 2 in the checkpoint, 1 in the recipe" in err
    assert scripts.run.main([*base, "--set", "model.stem_stride=2", "--set", "model.width_mult=0.5"]) == 2
    assert "width_mult: 0.25 in the checkpoint, 0.5 in the recipe" in capsys.readouterr().err
    assert scripts.run.main([*base, "--init", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert scripts.run.main([*base, "--set", "schedule.freeze=sometimes"]) == 2
    err = capsys.readouterr().err
    assert "override schedule.freeze='sometimes'" in err and "one of ('aiwq', 'random', 'none')" in err
    assert not out.exists() and not (tmp_path / "ledger.jsonl").exists()  # nothing ran, nothing recorded

    v = scripts.variants
    init = v.load_init(fp_init)
    recipe = v.variant_recipe("tiny", "profit_w4a4", seed=0, overrides={"model.stem_stride": 2})
    v.check_init(init, recipe)  # the matching recipe passes
    args = {**init.state.meta["model_args"], "weight_bits": 4, "act_bits": 4}
    quantized = dataclasses.replace(init, state=dataclasses.replace(init.state, meta={"model_args": args}))
    with pytest.raises(v.InitError, match="is quantized"):
        v.check_init(quantized, recipe)
    with pytest.raises(v.InitError, match="was trained on synthetic, but this benchmark would train and test on "
                                          "cifar10"):
        v._check_data(init, "cifar10")
    (out / "claimed").mkdir(parents=True)
    (out / "claimed" / "init.json").write_text(json.dumps({"init_sha256": "0" * 64}))
    with pytest.raises(v.InitError, match="started from another init"):
        v._claim_run_dir(out / "claimed", init)
    with pytest.raises(ValueError, match="schedule has no field 'ft_epoch'"):
        v.apply_overrides(recipe, {"schedule.ft_epoch": 2})
    with pytest.raises(ValueError, match="unknown section 'optim'"):
        v.apply_overrides(recipe, {"optim.lr": 0.1})
    assert load_checkpoint(fp_init).meta["model_args"]["stem_stride"] == 2


def test_the_scripts_docstring_examples(scripts):
    for module in (scripts.variants, scripts.summary):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_an_ablation_named_by_set_gets_ids_of_its_own(scripts, fp_init, tmp_path, monkeypatch, capsys):
    book = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("PROFIT_EDU_LEDGER", str(book))
    base = ["--init", str(fp_init), "--variants", "duq_w4a4", "--seeds", "0", *COMMON]
    assert scripts.run.main([*base, "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "keeps its name" in capsys.readouterr().err  # the shrinking edits alone: a warning, not an error
    ablation = ["--set", "name=tiny_no_kd", "--set", "train.kd_weight=0", "--scale", "tiny"]
    assert scripts.run.main([*base, *ablation, "--out", str(tmp_path / "no_kd")]) == 0
    assert "keeps its name" not in capsys.readouterr().err
    lines = _lines(book)
    assert [r["id"] for r in lines] == ["accuracy/tiny/tiny_no_kd/duq_w4a4/seed0/model",
                                        "accuracy/tiny/tiny_no_kd/duq_w4a4/seed0/ema"]
    assert all(r["recipe"] == "tiny_no_kd" and "'train.kd_weight=0'" in r["command"] for r in lines)
