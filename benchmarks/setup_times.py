"""Time the README's set-up commands on a fresh clone: ``make install``, then ``make test`` (optionally ``make book``).

    python benchmarks/setup_times.py [--book] [--keep DIR]

What a new user (and CI) does: clone the repository, run ``make install`` (a virtual environment with the pinned
stack from ``requirements/constraints.txt``) and ``make test`` (ruff and the whole suite, slow tests included).
The script clones the committed ``HEAD`` of this checkout into a temporary folder (so untracked files, the
decoded-data cache and ``../shared/data`` are absent, as on a fresh machine), runs the commands there in order and
appends one ledger line each: ``setup/make-install``, ``setup/make-test``, ``setup/make-book`` (``metric:
wall_s``). Each line keeps the load average before and after and the machine's core count, because the time of a
test suite on a shared 2-core machine depends on what else runs; ``make test``'s line also keeps pytest's counts.
``python benchmarks/results_page.py`` then writes the times into README.md's "Install and test" section.

A failing command stops the script with its exit status and the tail of its output, and records nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from profit_edu import ledger  # noqa: E402

#: pytest's last line, e.g. "1273 passed, 2 skipped, 3 deselected in 581.20s (0:09:41)".
COUNTS = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def pytest_counts(output: str) -> dict[str, int]:
    """The counts of pytest's summary line (the last line that has any), e.g. ``{"passed": 1273, "skipped": 2}``.

    >>> pytest_counts("... \\n=== 1273 passed, 2 skipped in 581.20s (0:09:41) ===\\n")
    {'passed': 1273, 'skipped': 2}
    """
    for line in reversed(output.splitlines()):
        found = COUNTS.findall(line)
        if found and " in " in line:
            return {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in found}
    return {}


def timed(target: str, clone: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run ``make TARGET`` in ``clone``; return its wall time and its output (stdout and stderr together)."""
    start = time.perf_counter()
    done = subprocess.run(["make", target], cwd=clone, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"setup_times.py: make {target} failed (exit {done.returncode}) after {wall:.0f} s:\n"
                         f"{output[-3000:]}")
    return wall, output


def record(target: str, wall: float, load_before: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    """The ledger line of one timed command."""
    return {"id": f"setup/make-{target}", "hardware": f"{os.cpu_count()}-core CPU", "scale": "setup",
            "metric": "wall_s", "value": round(wall, 1), "seed": 0,
            "command": f"python benchmarks/setup_times.py  # make {target} in a fresh clone",
            "load_average_before": load_before, "load_average_after": [round(v, 2) for v in os.getloadavg()],
            **extra}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--book", action="store_true", help="also time make book (a strict build of every chapter)")
    p.add_argument("--keep", type=Path, default=None, metavar="DIR",
                   help="clone into DIR and keep it (default: a temporary folder, removed afterwards)")
    args = p.parse_args(argv)
    clone = args.keep or Path(tempfile.mkdtemp(prefix="profit-edu-setup-")) / "profit_edu"
    if clone.exists():
        p.error(f"--keep: {clone} exists; give a new folder")
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROFIT_EDU_", "VIRTUAL_ENV"))}
    lines = []
    try:
        for target in ["install", "test", *(["book"] if args.book else [])]:
            load = [round(v, 2) for v in os.getloadavg()]
            wall, output = timed(target, clone, env)
            extra = {"tests": pytest_counts(output)} if target == "test" else {}
            lines.append(record(target, wall, load, {"commit": commit, **extra}))
            print(f"make {target}: {wall:.0f} s (load average {load[0]:.1f} before)", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(clone.parent, ignore_errors=True)
    for line in lines:
        ledger.append(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
