"""The accuracy benchmark's numbers as the book reports them: seeds, means, paired differences with 95 % intervals,
and the AIWQ rankings' depthwise share, all computed from the ledger's lines, never typed.

``benchmarks/accuracy/run.py`` appends one ledger line per (variant, seed, copy): the trained model's top-1 and its
weight EMA's, with the recipe, the init checkpoint's sha256, the test set and a ``setup`` hash (lines with the same
setup differ only by their seed). PROFIT runs also save their AIWQ ranking beside the ledger
(``rankings/<scale>_<recipe>_<variant>_seed<k>.json``, named by the line's ``ranking_file``).
``benchmarks/accuracy/summary.py`` prints what this module computes as tables, and chapters 6 and 7 show it; both
call the same functions, so the book and the command line cannot disagree.

The matrix grows while runs finish, so nothing here assumes a number of seeds: :func:`stats` gives a standard
deviation and an interval only from two values on, and says ``None`` otherwise.

* :func:`stats` - n, mean, sample standard deviation, half-width of the 95 % t-interval of the mean;
* :func:`spearman` - rank correlation of two rankings of the same layers;
* :func:`latest_runs` - the benchmark's lines at one scale, the latest per (id, setup);
* :func:`summarise` - groups (recipe, init, test set) with a row per (variant, setup) and the paired differences;
* :func:`paired_differences` - PROFIT minus no freezing and minus random freezing, seed by seed (:data:`PAIRS`);
* :func:`ranking_summary` - depthwise convs in each ranking's top third, and the Spearman correlation of seeds;
* :func:`fmt`, :func:`fmt_interval` - the two ways the tables write a number; :func:`verdict` - what a paired
  difference shows, in words.

Glossary: a *variant* is one row of the comparison (``profit_w4a4``, ``duq_w4a4`` = no freezing, ``random_w4a4`` =
as many layers frozen at random); a *copy* is ``model`` (the trained weights) or ``ema`` (their weight EMA).

>>> lines = [{"id": f"accuracy/cifar/r/{v}/seed{s}/model", "scale": "cifar", "recipe": "r", "init_sha256": "ab",
...           "dataset": "cifar10", "test_images": 10000, "variant": v, "setup": v, "method": "duq",
...           "weight_bits": 4, "act_bits": 4, "copy": "model", "seed": s, "value": x}
...          for v, s, x in [("profit_w4a4", 0, 80.0), ("duq_w4a4", 0, 78.0), ("profit_w4a4", 1, 81.0),
...                          ("duq_w4a4", 1, 78.0)]]
>>> (group,) = summarise(latest_runs(lines, "cifar"), order=["profit_w4a4", "duq_w4a4"])
>>> [(row["variant"], row["model"]["mean"], row["model"]["n"]) for row in group["rows"]]
[('profit_w4a4', 80.5, 2), ('duq_w4a4', 78.0, 2)]
>>> fmt_interval(group["paired"][0])
'+2.50 [95 % CI -3.85, +8.85]'
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["COPIES", "ID_PREFIX", "PAIRS", "T975", "fmt", "fmt_interval", "latest_runs", "load_rankings",
           "paired_differences", "ranking_summary", "spearman", "stats", "summarise", "verdict"]

#: The benchmark's ledger ids: ``accuracy/<scale>/<recipe>/<variant>/seed<k>/<copy>``.
ID_PREFIX = "accuracy"
#: What each run is scored as: the trained model, and its weight EMA.
COPIES = ("model", "ema")
#: (a, b): the tables report a - b per seed. PROFIT against no freezing, and against freezing at random.
PAIRS = (("profit_w4a4", "duq_w4a4"), ("profit_w3a3", "duq_w3a3"), ("profit_w4a4", "random_w4a4"),
         ("profit_w3a3", "random_w3a3"))
#: Student's t quantile t(0.975, df) for a two-sided 95 % interval of a mean over n = df + 1 seeds.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def stats(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample standard deviation and the 95 % t-interval's half-width (None for one value).

    Math: half-width = t(0.975, n - 1) * s / sqrt(n), s the sample standard deviation (n - 1 in the denominator).

    >>> stats([70.0, 72.0, 74.0])
    {'n': 3, 'mean': 72.0, 'std': 2.0, 'ci95': 4.969, 'values': [70.0, 72.0, 74.0]}
    >>> stats([70.0])["ci95"] is None
    True
    """
    values = list(values)
    if not values:
        raise ValueError("stats needs at least one value")
    n = len(values)
    std = statistics.stdev(values) if n > 1 else None
    half = T975.get(n - 1, 1.96) * std / n**0.5 if std is not None else None
    return {"n": n, "mean": round(statistics.fmean(values), 3), "std": None if std is None else round(std, 3),
            "ci95": None if half is None else round(half, 3), "values": values}


def spearman(a: Sequence[str], b: Sequence[str]) -> float:
    """Spearman's rank correlation of two rankings (most unstable first) of the same layers.

    Math: rho = 1 - 6 sum_i d_i^2 / (n (n^2 - 1)), d_i the difference of layer i's two ranks (no ties).

    Raises:
        ValueError: the rankings do not hold the same layers.

    >>> spearman(["x", "y", "z"], ["x", "y", "z"]), spearman(["x", "y", "z"], ["z", "y", "x"])
    (1.0, -1.0)
    """
    if sorted(a) != sorted(b):
        raise ValueError("rankings of different layers cannot be compared")
    n = len(a)
    rank_b = {name: i for i, name in enumerate(b)}
    d2 = sum((i - rank_b[name]) ** 2 for i, name in enumerate(a))
    return 1 - 6 * d2 / (n * (n * n - 1))


def fmt(s: Mapping[str, Any] | None) -> str:
    """``"72.00 ± 2.00"`` (mean ± sample std), or the mean alone for one seed, or ``"-"``.

    >>> fmt(stats([70.0, 74.0])), fmt(stats([70.0])), fmt(None)
    ('72.00 ± 2.83', '70.00', '-')
    """
    if not s:
        return "-"
    return f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "")


def fmt_interval(s: Mapping[str, Any]) -> str:
    """``"+1.87 [95 % CI -0.22, +3.96]"``, or the mean alone for one seed, saying so.

    >>> fmt_interval(stats([2.0]))
    '+2.00 (one seed, no interval)'
    """
    if s.get("ci95") is None:
        return f"{s['mean']:+.2f} (one seed, no interval)"
    return f"{s['mean']:+.2f} [95 % CI {s['mean'] - s['ci95']:+.2f}, {s['mean'] + s['ci95']:+.2f}]"


def verdict(s: Mapping[str, Any]) -> str:
    """What a paired difference a - b (:func:`stats` of the per-seed differences) shows, in words.

    One seed gives a difference but no interval; from two seeds on, the 95 % interval either lies above 0, below
    0, or contains 0 (then the seeds so far do not show a difference either way).

    >>> verdict(stats([2.0])), verdict(stats([2.0, 3.0, 2.5])), verdict(stats([-1.0, 2.0]))
    ('one seed: no interval yet', 'a higher: interval above 0', 'not shown: interval contains 0')
    """
    if s.get("ci95") is None:
        return "one seed: no interval yet"
    low, high = s["mean"] - s["ci95"], s["mean"] + s["ci95"]
    if low > 0:
        return "a higher: interval above 0"
    if high < 0:
        return "a lower: interval below 0"
    return "not shown: interval contains 0"


def latest_runs(records: Iterable[Mapping[str, Any]], scale: str) -> list[dict[str, Any]]:
    """The benchmark's lines at ``scale`` (ids under :data:`ID_PREFIX`), the latest per (id, setup), in ledger order.

    A run measured again with the same setup replaces its earlier line; a line of another setup (another init,
    recipe or test set) is kept, and :func:`summarise` puts it in its own group.
    """
    keep: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if str(r.get("id", "")).startswith(f"{ID_PREFIX}/") and r.get("scale") == scale:
            keep[(r["id"], r.get("setup", ""))] = dict(r)
    return list(keep.values())


def _row(r: Mapping[str, Any]) -> dict[str, Any]:
    return {"variant": r["variant"], "setup": r["setup"], "method": r["method"], "weight_bits": r["weight_bits"],
            "act_bits": r["act_bits"], "epochs": r.get("epochs"), "by_seed": {c: {} for c in COPIES}, "wall_s": {}}


def _finish_row(row: dict[str, Any], descriptions: Mapping[str, str]) -> None:
    """Seeds, per-copy :func:`stats`, the mean wall time and the description of a row whose lines are collected."""
    row["seeds"] = sorted(set().union(*[row["by_seed"][c] for c in COPIES]))
    for c in COPIES:
        vals = [row["by_seed"][c][s] for s in sorted(row["by_seed"][c])]
        row[c] = stats(vals) if vals else None
    walls = [w for w in row["wall_s"].values() if w is not None]
    row["wall_s_mean"] = round(statistics.fmean(walls), 1) if walls else None
    row["description"] = descriptions.get(row["variant"], "")


def summarise(records: Iterable[Mapping[str, Any]], *, order: Sequence[str] = (),
              descriptions: Mapping[str, str] | None = None,
              pairs: Sequence[tuple[str, str]] = PAIRS) -> list[dict[str, Any]]:
    """One group per (recipe, init sha256, dataset, test images), with a row per (variant, setup) and the paired
    differences (:func:`paired_differences`).

    Args:
        records: ledger lines of one scale, e.g. :func:`latest_runs`'s.
        order: variant names in the order the rows should take (others follow); rows of one variant by setup.
        descriptions: variant -> one line for the row's ``description``.
        pairs: the (a, b) differences to compute.

    Returns:
        Groups in order of first appearance: ``recipe``, ``init_sha256``, ``init_dir``, ``dataset``,
        ``test_images``, ``rows`` (each: ``variant``, ``setup``, ``method``, bits, ``epochs``, ``by_seed`` (copy ->
        seed -> top-1), ``seeds``, ``model`` and ``ema`` (:func:`stats` or None), ``wall_s``, ``wall_s_mean``,
        ``description``) and ``paired``.
    """
    groups: dict[tuple, dict[str, Any]] = {}
    for line_no, r in enumerate(records):
        key = (r["recipe"], r["init_sha256"], r["dataset"], r["test_images"])
        g = groups.setdefault(key, {"recipe": r["recipe"], "init_sha256": r["init_sha256"],
                                    "init_dir": r.get("init_dir"), "dataset": r["dataset"],
                                    "test_images": r["test_images"], "rows": {}})
        row = g["rows"].setdefault((r["variant"], r["setup"]), _row(r))
        row["by_seed"][r["copy"]][r["seed"]] = r["value"]
        row["wall_s"][r["seed"]] = r.get("wall_s")
        row.setdefault("first_line", line_no)  # where its lines are among ``records`` (ledger order):
        row["last_line"] = line_no  # paired_differences pairs newest setups of one round of runs only
    rank = {name: i for i, name in enumerate(order)}
    out = []
    for g in groups.values():
        rows = sorted(g["rows"].values(), key=lambda row: (rank.get(row["variant"], len(rank)), row["setup"]))
        for row in rows:
            _finish_row(row, descriptions or {})
        g["rows"] = rows
        g["paired"] = paired_differences(rows, pairs)
        out.append(g)
    return out


def paired_differences(rows: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]] = PAIRS
                       ) -> list[dict[str, Any]]:
    """a - b per shared seed, for each pair present, per copy, with :func:`stats`.

    Two variants run with the same seed see the same training subset and order up to the first frozen phase, so
    their difference seed by seed varies less than either accuracy: the interval is that of the mean difference.

    A variant measured with several setups (the recipe changed between rounds of runs) is paired through its
    newest setup, and only with a newest setup of the same round: when one of the two was measured again after
    the other's newest setup began (its older setup ends later than the other's newest begins), the pair would
    compare two recipes and is left out. Rows without ``first_line`` / ``last_line`` count in list order.
    """
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        by_variant.setdefault(row["variant"], []).append({**row, "first_line": row.get("first_line", i),
                                                          "last_line": row.get("last_line", i)})
    for versions in by_variant.values():
        versions.sort(key=lambda row: row["last_line"])
    paired = []
    for a, b in pairs:
        if a not in by_variant or b not in by_variant or not _same_round(by_variant[a], by_variant[b]):
            continue
        ra_rows, rb_rows = by_variant[a][-1]["by_seed"], by_variant[b][-1]["by_seed"]
        for c in COPIES:
            ra, rb = ra_rows[c], rb_rows[c]
            seeds = sorted(set(ra) & set(rb))
            if seeds:
                diffs = [round(ra[s] - rb[s], 2) for s in seeds]
                paired.append({"a": a, "b": b, "copy": c, "seeds": seeds, **stats(diffs)})
    return paired


def _same_round(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    """True when the newest setups of two variants (rows sorted oldest first) come from one round of runs: no
    older setup of either ends after the other's newest setup begins."""
    a_older_end = a[-2]["last_line"] if len(a) > 1 else -1
    b_older_end = b[-2]["last_line"] if len(b) > 1 else -1
    return a_older_end < b[-1]["first_line"] and b_older_end < a[-1]["first_line"]


def load_rankings(rankings_dir: Path, scale: str) -> list[dict[str, Any]]:
    """The saved AIWQ rankings of one scale (``<rankings_dir>/<scale>_*.json``), in file-name order."""
    return [json.loads(path.read_text()) for path in sorted(Path(rankings_dir).glob(f"{scale}_*.json"))]


def ranking_summary(docs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (recipe, variant): depthwise convs in the top third of each seed's AIWQ ranking, and the Spearman
    correlation of every pair of seeds' rankings.

    Args:
        docs: saved rankings (``benchmarks/accuracy/variants.save_ranking``'s files): ``recipe``, ``variant``,
            ``seed``, ``ranking`` (rows with ``layer``, most unstable first), ``top_third``,
            ``depthwise_in_top_third``.
    """
    groups: dict[tuple[str, str], dict[int, Mapping[str, Any]]] = {}
    for doc in docs:
        groups.setdefault((doc["recipe"], doc["variant"]), {})[doc["seed"]] = doc
    out = []
    for (recipe, variant), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        orders = {k: [r["layer"] for r in by_seed[k]["ranking"]] for k in seeds}
        pairs = [{"seeds": [i, j], "spearman": round(spearman(orders[i], orders[j]), 3)}
                 for n, i in enumerate(seeds) for j in seeds[n + 1:]]
        out.append({"recipe": recipe, "variant": variant, "seeds": seeds, "layers": len(orders[seeds[0]]),
                    "top_third": by_seed[seeds[0]]["top_third"],
                    "depthwise_in_top_third": {k: by_seed[k]["depthwise_in_top_third"] for k in seeds},
                    "spearman": pairs})
    return out
