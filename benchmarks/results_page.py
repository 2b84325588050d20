"""Write the results from the ledger: the full results page and the README's short summary.

    python benchmarks/results_page.py          # rewrite benchmarks/results/README.md and README.md's summary
    python benchmarks/results_page.py --check  # exit 1 if either is out of date (the tests run this)

``benchmarks/results/README.md`` lists the newest ledger line of every id (the ledger keeps every measurement,
older ones included), grouped by what was measured, with the command that reproduces it. README.md keeps a summary
of at most ten lines between the markers, every number of it computed here from the ledger, so prose and ledger
cannot drift.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from profit_edu import ledger  # noqa: E402
from profit_edu.book.experiments import latest_runs, stats  # noqa: E402

START, END = "<!-- results-summary:start -->", "<!-- results-summary:end -->"
QS_START, QS_END = "<!-- quickstart:start -->", "<!-- quickstart:end -->"
SETUP_START, SETUP_END = "<!-- setup:start -->", "<!-- setup:end -->"
PAGE = ROOT / "benchmarks" / "results" / "README.md"
SHIPPED_ID = "pretrained/cifar10-mobilenet_v2-w0.5-s2/top1"


@dataclass(frozen=True)
class Step:
    """One command of the README's quick start; ``slug`` names its ledger line ``quickstart/<slug>`` (written by
    ``benchmarks/quickstart.py``), whose top-1 and wall time the README prints beside it."""

    command: str
    what: str
    slug: str | None = None


QUICKSTART = (
    Step("profit-edu evaluate data/pretrained/cifar10-mobilenet_v2-w0.5-s2",
         "the shipped float MobileNet-v2 on the 10,000 CIFAR-10 test images", "evaluate-shipped"),
    Step("profit-edu train --recipe quick --out runs/quick",
         "every PROFIT phase from it, 8 -> 4 bits, on 2,000 images (the last phase's top-1 on 500)", "train-quick"),
    Step("profit-edu evaluate runs/quick", "the W4A4 model on the 10,000 test images (then its EMA)",
         "evaluate-quick"),
    Step("profit-edu pack runs/quick -o runs/quick.pqm --onnx runs/quick.onnx",
         "the packed 4-bit file and its ONNX (QDQ) twin"),
    Step("profit-edu samples --out runs/samples", "ten CIFAR-10 test images as 32x32 PNG files"),
    Step("profit-edu run-packed runs/quick.pqm runs/samples/0_airplane.png",
         "top-5 classes from the integer engine"),
    Step("profit-edu plan cifar_w4a4", "the full-data protocol behind the results below"),
)


def quickstart(records: list[dict[str, Any]]) -> str:
    """The README's quick-start block: each command, what it does, and what it printed here (from the ledger)."""
    ids = newest(records)
    width = max(len(s.command) for s in QUICKSTART)
    lines = ["```bash"]
    for step in QUICKSTART:
        rec = ids.get(f"quickstart/{step.slug}") if step.slug else None
        got = ""
        if rec is not None:
            figure = f"{rec['value']:.2f} % top-1, " if rec["metric"] == "top1" else ""
            got = f": {figure}{_duration(rec['wall_s'])}"
        lines.append(f"{step.command.ljust(width)}  # {step.what}{got}")
    return "\n".join([*lines, "```"])


def setup_times(records: list[dict[str, Any]]) -> str:
    """The README's set-up times: ``make install`` and ``make test`` on a fresh clone, from ``setup/...`` lines
    (``benchmarks/setup_times.py``), with the test count and the load the machine carried meanwhile."""
    ids = newest(records)
    install, test = ids.get("setup/make-install"), ids.get("setup/make-test")
    if install is None or test is None:
        return "Install and test times are not measured yet: `python benchmarks/setup_times.py` measures them."
    counts = test.get("tests", {})
    tests = ", ".join(f"{n:,} {kind}" for kind, n in counts.items())
    load = max(test["load_average_before"][0], test["load_average_after"][0])
    return (f"Measured on a fresh clone (`python benchmarks/setup_times.py`, {test['date']}, {test['hardware']}): "
            f"`make install` {_duration(install['value'])}, `make test` {_duration(test['value'])} ({tests}; "
            f"load average up to {load:.1f} from other jobs on the machine meanwhile).")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _fmt(value: float, metric: str) -> str:
    return f"{value:.2f} %" if metric.startswith("top") else f"{value:.3g}"


def newest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest line of each id."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        out[rec["id"]] = rec
    return out


def page(records: list[dict[str, Any]]) -> str:
    """The full results page: one table per id family (the id's first part), newest line of each id."""
    lines = ["# Results", "",
             "Generated by `python benchmarks/results_page.py` from `ledger.jsonl` (never edited by hand): the newest",
             "line of every id, with the command and seed that produced it. Speed figures are ratios of interleaved",
             "repetitions in one process (median; the spread is the interquartile range), on a shared 2-core CPU.",
             "Accuracy means over seeds, paired differences and AIWQ rankings: `python benchmarks/accuracy/summary.py",
             "--scale cifar` (or `quick`), written to `accuracy_<scale>.json`.", ""]
    families: dict[str, list[dict[str, Any]]] = {}
    for rid, rec in sorted(newest(records).items()):
        families.setdefault(rid.split("/")[0], []).append(rec)
    for family, recs in families.items():
        lines += [f"## {family}", "", "| id | metric | value | spread | scale | seed | hardware | commit | command |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for rec in recs:
            spread = rec.get("spread")
            spread_txt = f"{spread[0]:.3g}-{spread[1]:.3g}" if isinstance(spread, list) and len(spread) == 2 else ""
            lines.append(f"| `{rec['id']}` | {rec['metric']} | {_fmt(rec['value'], rec['metric'])} | {spread_txt} | "
                         f"{rec['scale']} | {rec['seed']} | {rec['hardware']} | {str(rec['commit'])[:8]} | "
                         f"`{rec['command']}` |")
        lines.append("")
    return "\n".join(lines)


def _accuracy(records: list[dict[str, Any]], scale: str, recipe: str, variant: str) -> dict[str, Any] | None:
    """Mean +- std over seeds of the trained model's top-1 (latest setup), or None when never measured."""
    runs = [r for r in latest_runs(records, scale)
            if r["recipe"] == recipe and r["variant"] == variant and r["copy"] == "model"]
    if not runs:
        return None
    setup = runs[-1]["setup"]
    return stats([r["value"] for r in runs if r["setup"] == setup])


def _cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return "not measured yet"
    spread = f" ± {s['std']:.2f}" if s["std"] is not None else ""
    return f"{s['mean']:.2f}{spread} % (n={s['n']})"


def summary(records: list[dict[str, Any]]) -> str:
    """README's short results table (at most ten rows), every number computed from ``records``."""
    ids = newest(records)
    rows: list[tuple[str, str]] = []

    def row(what: str, value: Callable[[], str]) -> None:
        rows.append((what, value()))

    shipped = ids.get(SHIPPED_ID)
    row("Float MobileNet-v2 w0.5 (shipped), CIFAR-10 top-1",
        lambda: _fmt(shipped["value"], "top1") if shipped else "not measured yet")
    for bits in ("w8a8", "w4a4"):
        fixed, ref = ids.get(f"ptq/cifar10/duq/fixed/{bits}"), ids.get(f"ptq/cifar10/duq/reference/{bits}")
        row(f"Post-training DuQ {bits.upper()}: MSE init / official 95th-percentile init",
            lambda f=fixed, r=ref: f"{f['value']:.2f} % / {r['value']:.2f} %" if f and r else "not measured yet")
    for bits in ("w4a4", "w3a3"):
        for variant, what in (("profit", "PROFIT (AIWQ freezing)"), ("duq", "no freezing"),
                              ("random", "random freezing")):
            row(f"cifar {bits.upper()}, {what}",
                lambda b=bits, v=variant: _cell(_accuracy(records, "cifar", f"cifar_{b}", f"{v}_{b}")))
    table = ["| what | top-1 |", "|---|---|", *[f"| {what} | {value} |" for what, value in rows]]
    return "\n".join(table)


def _replace(text: str, start: str, end: str, body: str) -> str:
    if start not in text or end not in text:
        raise ValueError(f"README.md needs the markers {start} and {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render(readme: str, records: list[dict[str, Any]]) -> str:
    """README.md with its quick start and its results summary rewritten from ``records``."""
    readme = _replace(readme, QS_START, QS_END, quickstart(records))
    readme = _replace(readme, SETUP_START, SETUP_END, setup_times(records))
    return _replace(readme, START, END, summary(records))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that both files are up to date")
    args = p.parse_args(argv)
    records = ledger.read()
    readme = ROOT / "README.md"
    wanted = {readme: render(readme.read_text(), records), PAGE: page(records) + "\n"}
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is out of date: run python benchmarks/results_page.py")
        return 1 if stale else 0
    for path in stale:
        path.write_text(wanted[path])
    return 0


if __name__ == "__main__":
    sys.exit(main())
