"""Write the README's results table from the ledger, so every number there has a ledger line behind it.

    python benchmarks/readme_table.py          # rewrite the table between the markers in README.md
    python benchmarks/readme_table.py --check  # exit 1 if README.md is out of date (used by the tests)

The table shows the newest line of each ledger id (the ledger keeps every measurement, older ones included).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from profit_edu import ledger  # noqa: E402

START, END = "<!-- ledger-table:start -->", "<!-- ledger-table:end -->"


def _fmt(value: float, metric: str) -> str:
    return f"{value:.2f}%" if metric.startswith("top") else f"{value:.3g}"


def table(records: list[dict]) -> str:
    newest: dict[str, dict] = {}
    for rec in records:
        newest[rec["id"]] = rec
    lines = ["| id | metric | value | spread | scale | hardware | seed | commit | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rid, rec in sorted(newest.items()):
        spread = rec.get("spread")
        spread_txt = f"{spread[0]:.3g}-{spread[1]:.3g}" if isinstance(spread, list) and len(spread) == 2 else ""
        lines.append(f"| `{rid}` | {rec['metric']} | {_fmt(rec['value'], rec['metric'])} | {spread_txt} | "
                     f"{rec['scale']} | {rec['hardware']} | {rec['seed']} | {str(rec['commit'])[:8]} | "
                     f"`{rec['command']}` |")
    return "\n".join(lines)


def render(readme: str, records: list[dict]) -> str:
    if START not in readme or END not in readme:
        raise ValueError(f"README.md needs the markers {START} and {END}")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(records)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = p.parse_args(argv)
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old, ledger.read())
    if args.check:
        if new != old:
            print("README.md's results table is out of date: run python benchmarks/readme_table.py")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
