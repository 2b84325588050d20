"""Summarise the accuracy benchmark from the ledger: top-1 mean +- std over seeds, per variant.

    python benchmarks/accuracy/summary.py [--scale quick] [--ledger PATH] [--json PATH]

Reads the ``accuracy/...`` lines that ``run.py`` appended (never a number typed in), keeps the latest line of
each run (same id and setup), and prints one table per (recipe, init checkpoint): each variant's seeds and its
top-1 as mean +- sample standard deviation over seeds, for the trained model and for its weight EMA; then the
paired differences that the benchmark exists for (PROFIT minus no freezing, PROFIT minus random freezing), over
the seeds both variants share, with a 95 % t-interval; then, for PROFIT runs, the number of depthwise convs in
the top third of each seed's AIWQ ranking and the rank correlation between seeds. Writes the same as JSON to
``benchmarks/results/accuracy_<scale>.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from variants import ID_PREFIX, VARIANTS

from profit_edu import ledger

RESULTS = Path(__file__).resolve().parents[1] / "results"
#: (a, b): the table reports a - b per seed. PROFIT against no freezing, and against freezing at random.
PAIRS = (("profit_w4a4", "duq_w4a4"), ("profit_w3a3", "duq_w3a3"), ("profit_w4a4", "random_w4a4"),
         ("profit_w3a3", "random_w3a3"))
COPIES = ("model", "ema")


#: Student's t quantile t(0.975, df) for a two-sided 95 % interval of a mean over n = df + 1 seeds.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def stats(values: list[float]) -> dict[str, Any]:
    """n, mean, sample standard deviation and the 95 % t-interval's half-width (None for one value).

    >>> stats([70.0, 72.0, 74.0])
    {'n': 3, 'mean': 72.0, 'std': 2.0, 'ci95': 4.969, 'values': [70.0, 72.0, 74.0]}
    """
    n = len(values)
    std = statistics.stdev(values) if n > 1 else None
    half = T975.get(n - 1, 1.96) * std / n**0.5 if std is not None else None
    return {"n": n, "mean": round(statistics.fmean(values), 3), "std": None if std is None else round(std, 3),
            "ci95": None if half is None else round(half, 3), "values": values}


def spearman(a: list[str], b: list[str]) -> float:
    """Spearman's rank correlation of two rankings (most unstable first) of the same layers.

    >>> spearman(["x", "y", "z"], ["x", "y", "z"]), spearman(["x", "y", "z"], ["z", "y", "x"])
    (1.0, -1.0)
    """
    if sorted(a) != sorted(b):
        raise ValueError("rankings of different layers cannot be compared")
    n = len(a)
    rank_b = {name: i for i, name in enumerate(b)}
    d2 = sum((i - rank_b[name]) ** 2 for i, name in enumerate(a))
    return 1 - 6 * d2 / (n * (n * n - 1))


def ranking_summary(rankings_dir: Path, scale: str) -> list[dict[str, Any]]:
    """Per (recipe, variant): depthwise convs in the top third of each seed's AIWQ ranking, and the Spearman
    correlation of every pair of seeds' rankings (files written by ``variants.save_ranking``)."""
    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for path in sorted(rankings_dir.glob(f"{scale}_*.json")):
        doc = json.loads(path.read_text())
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


def fmt(s: dict[str, Any] | None) -> str:
    """``"72.00 ± 2.00"``, or the mean alone for one seed, or ``"-"``."""
    if not s:
        return "-"
    return f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "")


def fmt_interval(s: dict[str, Any]) -> str:
    """``"+1.87 [95 % CI -0.22, +3.96]"`` (the mean alone for one seed)."""
    if s.get("ci95") is None:
        return f"{s['mean']:+.2f} (one seed, no interval)"
    return f"{s['mean']:+.2f} [95 % CI {s['mean'] - s['ci95']:+.2f}, {s['mean'] + s['ci95']:+.2f}]"


def latest_runs(records: Iterable[dict[str, Any]], scale: str) -> list[dict[str, Any]]:
    """The benchmark's lines at ``scale``, the latest per (id, setup), in ledger order."""
    keep: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        if str(r.get("id", "")).startswith(f"{ID_PREFIX}/") and r.get("scale") == scale:
            keep[(r["id"], r.get("setup", ""))] = r
    return list(keep.values())


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per (recipe, init sha256, test set), with a row per (variant, setup) and the paired differences."""
    groups: dict[tuple, dict[str, Any]] = {}
    for r in records:
        key = (r["recipe"], r["init_sha256"], r["dataset"], r["test_images"])
        g = groups.setdefault(key, {"recipe": r["recipe"], "init_sha256": r["init_sha256"],
                                    "init_dir": r.get("init_dir"), "dataset": r["dataset"],
                                    "test_images": r["test_images"], "rows": {}})
        row = g["rows"].setdefault((r["variant"], r["setup"]), {
            "variant": r["variant"], "setup": r["setup"], "method": r["method"], "weight_bits": r["weight_bits"],
            "act_bits": r["act_bits"], "epochs": r.get("epochs"), "by_seed": {c: {} for c in COPIES}, "wall_s": {}})
        row["by_seed"][r["copy"]][r["seed"]] = r["value"]
        row["wall_s"][r["seed"]] = r.get("wall_s")
    order = {name: i for i, name in enumerate(VARIANTS)}
    out = []
    for g in groups.values():
        rows = sorted(g["rows"].values(), key=lambda row: (order.get(row["variant"], len(order)), row["setup"]))
        for row in rows:
            row["seeds"] = sorted(set().union(*[row["by_seed"][c] for c in COPIES]))
            for c in COPIES:
                vals = [row["by_seed"][c][s] for s in sorted(row["by_seed"][c])]
                row[c] = stats(vals) if vals else None
            walls = [w for w in row["wall_s"].values() if w is not None]
            row["wall_s_mean"] = round(statistics.fmean(walls), 1) if walls else None
            row["description"] = VARIANTS[row["variant"]].description if row["variant"] in VARIANTS else ""
        g["rows"] = rows
        g["paired"] = _paired(rows)
        out.append(g)
    return out


def _paired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """a - b per shared seed, for each pair in :data:`PAIRS` present (the latest setup of each variant)."""
    latest = {row["variant"]: row for row in rows}
    paired = []
    for a, b in PAIRS:
        if a not in latest or b not in latest:
            continue
        for c in COPIES:
            ra, rb = latest[a]["by_seed"][c], latest[b]["by_seed"][c]
            seeds = sorted(set(ra) & set(rb))
            if seeds:
                diffs = [round(ra[s] - rb[s], 2) for s in seeds]
                paired.append({"a": a, "b": b, "copy": c, "seeds": seeds, **stats(diffs)})
    return paired


def format_tables(groups: list[dict[str, Any]], scale: str) -> str:
    """The groups as text tables."""
    lines = []
    for g in groups:
        lines += ["", f"scale {scale}, recipe {g['recipe']}, init {g['init_dir']} (sha256 {g['init_sha256'][:12]}), "
                      f"top-1 % on {g['test_images']} {g['dataset']} test images, mean ± std over seeds"]
        multi = len({row["variant"] for row in g["rows"]}) < len(g["rows"])  # a variant run in two setups
        table = [("variant", "method", "W/A", "seeds", "top-1 model", "top-1 EMA", "epochs", "wall s")]
        for row in g["rows"]:
            name = row["variant"] + (f" [{row['setup']}]" if multi else "")
            bits = "fp" if row["weight_bits"] is None else f"{row['weight_bits']}/{row['act_bits']}"
            table.append((name, row["method"], bits, ",".join(map(str, row["seeds"])), fmt(row["model"]),
                          fmt(row["ema"]), str(row["epochs"]), "-" if row["wall_s_mean"] is None
                          else f"{row['wall_s_mean']:.0f}"))
        widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(t, widths)).rstrip() for t in table]
        if g["paired"]:
            lines += ["", "paired differences (a - b, same seeds):"]
            for p in g["paired"]:
                lines.append(f"  {p['a']} - {p['b']} ({p['copy']}): {fmt_interval(p)} points over seeds "
                             f"{','.join(map(str, p['seeds']))}")
    return "\n".join(lines[1:])


def format_rankings(rankings: list[dict[str, Any]]) -> str:
    """The AIWQ rankings' depthwise share and agreement between seeds, as text."""
    lines = []
    for r in rankings:
        dw = ", ".join(f"seed {k}: {v}" for k, v in r["depthwise_in_top_third"].items())
        rho = ", ".join(f"{p['seeds'][0]}-{p['seeds'][1]}: {p['spearman']:.2f}" for p in r["spearman"]) or "-"
        lines.append(f"  {r['recipe']} {r['variant']}: depthwise convs in the top {r['top_third']} of "
                     f"{r['layers']} ({dw}); Spearman between seeds ({rho})")
    return "\n".join(["AIWQ rankings:", *lines]) if lines else ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="quick", help="which scale's lines (default: quick)")
    p.add_argument("--ledger", type=Path, default=None, help="default: benchmarks/results/ledger.jsonl or "
                                                             "$PROFIT_EDU_LEDGER")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="where to write the summary (default: benchmarks/results/accuracy_<scale>.json)")
    p.add_argument("--rankings", type=Path, default=None, metavar="DIR",
                   help="the AIWQ rankings saved by run.py (default: rankings/ beside the ledger)")
    args = p.parse_args(argv)
    path = args.ledger or ledger.default_path()
    records = latest_runs(ledger.read(path), args.scale)
    if not records:
        print(f"summary.py: no {ID_PREFIX}/ lines at scale {args.scale!r} in {path}; run "
              "benchmarks/accuracy/run.py first", file=sys.stderr)
        return 1
    groups = summarise(records)
    rankings = ranking_summary(args.rankings or path.parent / "rankings", args.scale)
    print(format_tables(groups, args.scale))
    if rankings:
        print("\n" + format_rankings(rankings))
    doc = {"benchmark": "accuracy", "scale": args.scale, "ledger": str(path), "date": _dt.date.today().isoformat(),
           "lines": len(records), "groups": groups, "rankings": rankings}
    out = args.json or RESULTS / f"accuracy_{args.scale}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
