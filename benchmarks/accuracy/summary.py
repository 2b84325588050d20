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
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from variants import ID_PREFIX, VARIANTS

from profit_edu import ledger
from profit_edu.book import experiments
from profit_edu.book.experiments import fmt, fmt_interval, latest_runs

RESULTS = Path(__file__).resolve().parents[1] / "results"


def ranking_summary(rankings_dir: Path, scale: str) -> list[dict[str, Any]]:
    """Per (recipe, variant): depthwise convs in the top third of each seed's AIWQ ranking, and the Spearman
    correlation of every pair of seeds' rankings (files written by ``variants.save_ranking``)."""
    return experiments.ranking_summary(experiments.load_rankings(rankings_dir, scale))


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One group per (recipe, init sha256, test set), with a row per (variant, setup) and the paired differences,
    rows in the order of :data:`variants.VARIANTS`."""
    return experiments.summarise(records, order=list(VARIANTS),
                                 descriptions={name: v.description for name, v in VARIANTS.items()})


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
    """The AIWQ rankings' depthwise share and agreement between seeds, as text.

    >>> rho = [{"seeds": [0, 1], "spearman": 0.5}]
    >>> print(format_rankings([{"recipe": "r", "variant": "v", "layers": 6, "top_third": 2,
    ...                         "depthwise_in_top_third": {0: 1, 1: 2}, "spearman": rho}]))
    AIWQ rankings:
      r v: depthwise convs in the top 2 of 6 (seed 0: 1, seed 1: 2); Spearman between seeds (0-1: 0.50)
    """
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
