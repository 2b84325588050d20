"""Run the README's quick start as written and record what each command printed and how long it took.

    python benchmarks/quickstart.py [--threads 2]

Each command of :data:`results_page.QUICKSTART` runs in the repository root, in order; the top-1 it printed last
(``test top-1 XX.XX%``) and its wall time become the ledger line ``quickstart/<slug>``. Then
``python benchmarks/results_page.py`` writes those figures beside the commands in README.md, so the page states
what its own commands produce on this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_page import QUICKSTART  # noqa: E402

from profit_edu import ledger  # noqa: E402

TOP1 = re.compile(r"top-1 (\d+\.\d+)%")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the commands (default: unset)")
    args = p.parse_args(argv)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    exe = Path(sys.executable).parent / "profit-edu"
    for step in QUICKSTART:
        words = shlex.split(step.command)
        start = time.perf_counter()
        done = subprocess.run([str(exe), *words[1:], "--no-progress"] if "train" in words[:2] else
                              [str(exe), *words[1:]], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        print(done.stdout[-2000:], done.stderr[-2000:], sep="\n", flush=True)
        if done.returncode != 0:
            print(f"quickstart.py: {step.command!r} failed with exit status {done.returncode}", file=sys.stderr)
            return 1
        if step.slug is None:
            continue
        found = TOP1.findall(done.stdout)
        ledger.append({"id": f"quickstart/{step.slug}", "hardware": ledger.hardware(), "scale": "quick",
                       "dataset": "cifar10", "metric": "top1" if found else "wall_s",
                       "value": float(found[-1]) if found else round(wall, 1), "wall_s": round(wall, 1), "seed": 0,
                       "command": step.command, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
