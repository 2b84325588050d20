"""Time the strict book build (``make book``: every chapter executed in quick mode) and record it in the ledger.

    python benchmarks/book_build.py            # one build; appends the wall time as a ledger line

The goal is at most 15 minutes on 2 CPU cores for the whole book as it grows. The time covers executing every
chapter and the strict Sphinx build; the offline widget assets come from ``_build/offline-cache`` after the first
build (the first one also runs ``npm pack``). On a shared machine the time depends on what else runs: the ledger
line records the machine's load average beside it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profit_edu import ledger  # noqa: E402  (after the path set-up, as a script)


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-ledger", action="store_true", help="do not append to the ledger")
    args = p.parse_args(argv)
    start = time.perf_counter()
    done = subprocess.run(["make", "book"], cwd=ROOT, env={**os.environ, "PROFIT_EDU_QUICK": "1"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"make book failed (exit {done.returncode}) after {seconds:.0f} s; nothing recorded")
    chapters = len(list((ROOT / "book").glob("[0-9][0-9]_*.ipynb")))
    print(f"make book: {seconds:.0f} s for {chapters} chapters")
    if not args.no_ledger:
        ledger.append({"id": "book/make_book", "hardware": f"{os.cpu_count()}-core CPU (make book, quick mode)",
                       "scale": "quick", "dataset": "cifar10 subset or synthetic", "seed": 0,
                       "metric": "wall_seconds", "value": round(seconds, 1), "chapters": chapters,
                       "load_average": [round(v, 2) for v in os.getloadavg()]})
    return seconds


if __name__ == "__main__":
    main()
