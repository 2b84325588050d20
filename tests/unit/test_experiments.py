"""profit_edu.book.experiments: seeds, means, paired differences and their intervals, ranking summaries."""

from __future__ import annotations

import statistics

import pytest
from scipy import stats as scipy_stats

from profit_edu.book import experiments as ex


def _line(variant: str, seed: int, value: float, *, copy: str = "model", scale: str = "cifar", setup: str = "s",
          init: str = "ab") -> dict:
    return {"id": f"accuracy/{scale}/r/{variant}/seed{seed}/{copy}", "scale": scale, "recipe": "r",
            "init_sha256": init, "dataset": "cifar10", "test_images": 100, "variant": variant,
            "setup": f"{variant}-{setup}", "method": "duq", "weight_bits": 4, "act_bits": 4, "copy": copy,
            "seed": seed, "value": value, "wall_s": 10.0}


def test_stats_interval_is_students_t() -> None:
    values = [70.0, 71.5, 74.0, 72.5]
    s = ex.stats(values)
    t = scipy_stats.t.ppf(0.975, len(values) - 1)
    assert s["std"] == pytest.approx(statistics.stdev(values), abs=1e-3)
    assert s["ci95"] == pytest.approx(t * statistics.stdev(values) / len(values) ** 0.5, abs=2e-3)
    for df, q in ex.T975.items():
        assert q == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-3)
    one = ex.stats([70.0])
    assert one["std"] is None and one["ci95"] is None and "one seed" in ex.fmt_interval(one)
    with pytest.raises(ValueError, match="at least one"):
        ex.stats([])


def test_spearman_matches_scipy() -> None:
    a = ["l0", "l1", "l2", "l3", "l4", "l5"]
    b = ["l2", "l0", "l1", "l5", "l3", "l4"]
    rank_a = [a.index(n) for n in a]
    rank_b = [b.index(n) for n in a]
    assert ex.spearman(a, b) == pytest.approx(scipy_stats.spearmanr(rank_a, rank_b).statistic)
    with pytest.raises(ValueError, match="different layers"):
        ex.spearman(a, [*b[:-1], "other"])


def test_summary_grows_with_the_ledger_and_pairs_only_shared_seeds() -> None:
    lines = [_line("profit_w4a4", 0, 82.0), _line("duq_w4a4", 0, 80.0), _line("profit_w4a4", 1, 83.0),
             _line("profit_w4a4", 0, 82.5)]  # seed 0 measured again: the newer line replaces it
    (g,) = ex.summarise(ex.latest_runs(lines, "cifar"), order=["duq_w4a4", "profit_w4a4"])
    rows = {r["variant"]: r for r in g["rows"]}
    assert [r["variant"] for r in g["rows"]] == ["duq_w4a4", "profit_w4a4"]
    assert rows["profit_w4a4"]["seeds"] == [0, 1] and rows["profit_w4a4"]["model"]["mean"] == 82.75
    assert rows["duq_w4a4"]["ema"] is None
    (p,) = g["paired"]  # one shared seed, the model copy only
    assert (p["a"], p["b"], p["copy"], p["seeds"], p["mean"], p["ci95"]) == ("profit_w4a4", "duq_w4a4", "model",
                                                                              [0], 2.5, None)
    lines.append(_line("duq_w4a4", 1, 80.5))
    (g,) = ex.summarise(ex.latest_runs(lines, "cifar"))
    (p,) = g["paired"]
    assert p["seeds"] == [0, 1] and p["values"] == [2.5, 2.5] and p["ci95"] == 0.0


def test_other_scales_inits_and_ids_are_kept_apart() -> None:
    lines = [_line("duq_w4a4", 0, 80.0), _line("duq_w4a4", 0, 70.0, scale="quick"),
             _line("duq_w4a4", 0, 75.0, init="cd", setup="t"), {"id": "ptq/x", "scale": "cifar", "value": 1.0}]
    runs = ex.latest_runs(lines, "cifar")
    assert len(runs) == 2
    groups = ex.summarise(runs)
    assert [(g["init_sha256"], g["rows"][0]["model"]["mean"]) for g in groups] == [("ab", 80.0), ("cd", 75.0)]


def test_ranking_summary_counts_depthwise_and_compares_seeds() -> None:
    def doc(seed: int, order: list[str]) -> dict:
        return {"recipe": "r", "variant": "profit_w4a4", "seed": seed, "top_third": 1,
                "depthwise_in_top_third": int(order[0].startswith("dw")),
                "ranking": [{"layer": n} for n in order]}

    (r,) = ex.ranking_summary([doc(0, ["dw1", "pw1", "pw2"]), doc(1, ["pw2", "pw1", "dw1"])])
    assert r["seeds"] == [0, 1] and r["layers"] == 3 and r["depthwise_in_top_third"] == {0: 1, 1: 0}
    assert r["spearman"] == [{"seeds": [0, 1], "spearman": -1.0}]


def test_verdict_reads_the_interval() -> None:
    assert ex.verdict(ex.stats([-2.0, -2.5, -3.0])) == "a lower: interval below 0"
    assert ex.verdict(ex.stats([1.0, 1.02])) == "a higher: interval above 0"
    assert ex.verdict(ex.stats([1.0, -1.2, 0.5])) == "not shown: interval contains 0"
    assert ex.verdict(ex.stats([5.0])) == "one seed: no interval yet"


def test_pairs_go_through_each_variants_newest_setup() -> None:
    # the recipe changed between two rounds of runs: setup "z" first (its hash sorts last), then setup "a"
    old = [_line(v, s, 70.0 + s, setup="z") for v in ("duq_w4a4", "profit_w4a4") for s in (0, 1, 2)]
    new = [_line("duq_w4a4", 0, 80.0, setup="a"), *[_line("profit_w4a4", s, 81.0, setup="a") for s in (0, 1, 2)]]
    (g,) = ex.summarise(ex.latest_runs([*old, *new], "cifar"))
    assert len(g["rows"]) == 4
    (p,) = g["paired"]  # the newest duq_w4a4 setup has seed 0 only: paired with the newest profit_w4a4 setup
    assert (p["seeds"], p["values"]) == ([0], [1.0])
    # random_w4a4 was measured in the first round only: pairing it with the second round's PROFIT would compare
    # two recipes, so that pair is left out (until random_w4a4 is measured again)
    stale = [*old[:3], *[_line("random_w4a4", s, 75.0, setup="z") for s in (0, 1, 2)], *old[3:], *new]
    (g,) = ex.summarise(ex.latest_runs(stale, "cifar"))
    assert [(p["a"], p["b"]) for p in g["paired"]] == [("profit_w4a4", "duq_w4a4")]
    again = [*stale, *[_line("random_w4a4", s, 80.5, setup="a") for s in (0, 1, 2)]]
    (g,) = ex.summarise(ex.latest_runs(again, "cifar"))
    assert {(p["a"], p["b"]): p["values"] for p in g["paired"]} == {("profit_w4a4", "duq_w4a4"): [1.0],
                                                                   ("profit_w4a4", "random_w4a4"): [0.5] * 3}


def test_the_ledgers_cifar_lines_still_summarise_when_seeds_are_added() -> None:
    """Chapters 6 and 7 compute from whatever the ledger holds: simulate the seeds still running."""
    from profit_edu.book.results import Results

    res = Results.load()
    lines = ex.latest_runs(res.all_lines, "cifar")
    assert lines, "the ledger holds cifar-protocol lines"
    grown = list(res.all_lines)
    for seed, shift in ((1, 0.4), (2, -0.3)):
        grown += [{**r, "id": r["id"].replace("/seed0/", f"/seed{seed}/"), "seed": seed, "value": r["value"] + shift}
                  for r in lines if r["seed"] == 0]
    before = ex.summarise(lines)
    after = ex.summarise(ex.latest_runs(grown, "cifar"))
    assert [g["recipe"] for g in after] == [g["recipe"] for g in before]
    for g in after:
        assert all(row["seeds"][-2:] == [1, 2] for row in g["rows"])
        assert all(p["ci95"] is not None for p in g["paired"])
